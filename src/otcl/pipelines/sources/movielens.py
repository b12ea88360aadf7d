r"""MovieLens as every pipeline reads it: GroupLens's 100K / 1M folders, the download, by name.

Sources (:func:`load_ratings`):

* ``ml-100k`` / ``ml-1m`` from a local directory as GroupLens ships it (``u.data``, ``u.item``,
  ``u.user`` or ``ratings.dat``, ``movies.dat``, ``users.dat``), or downloaded from GroupLens into a
  cache (:func:`download_movielens`, MD5-checked, never bundled: the MovieLens terms forbid
  redistribution);
* a CSV file ``user_id,item_id,rating[,timestamp]`` (:func:`otcl.pipelines.sources.ratings.
  load_ratings_csv`), without side features.

Both give :class:`~otcl.pipelines.sources.ratings.Ratings`, with MovieLens's side features:
users (age bucket, gender, occupation), items (genres multi-hot, release year, title).

**Release year** (:func:`title_year`, the one rule for every pipeline): the last ``(YYYY)`` of
the title that is followed by nothing but parenthesised notes. ``"Se7en (1995)"`` -> 1995;
``"City of Lost Children, The (Cité des enfants perdus, La) (1995)"`` -> 1995; ML-100K's
``"Land Before Time III: ... (1995) (V)"`` -> 1995, title ``"Land Before Time III: ... (V)"``;
a title without it (``"unknown"``), or with the year inside (``"Summer of (1969) Love"``), has
year 0 (unknown) and is kept whole. ML-100K's *release date* column is not used: it is often a
re-release (``Taxi Driver (1976)``: 16-Feb-1996), and ML-1M has none.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .common import DataError, cache_root
from .ratings import ItemFeatures, Ratings, UserFeatures, load_ratings_csv, make_ratings

__all__ = [
    "MOVIELENS",
    "AGE_BUCKETS",
    "ML_GENRES",
    "ML_SCALE",
    "title_year",
    "load_ratings",
    "load_movielens_dir",
    "download_movielens",
]

#: GroupLens archives: url and the MD5 that GroupLens publishes next to each archive
MOVIELENS = {
    "ml-100k": (
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
    ),
    "ml-1m": (
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
    ),
}

#: the rating scale of MovieLens 100K and 1M (whole stars)
ML_SCALE = (1.0, 5.0)

#: MovieLens-1M age buckets (lower bounds); ML-100K's exact ages are bucketed the same way
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)

ML_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def _read_table(
    path: Path, sep: str, ncols: int | tuple[int, ...]
) -> tuple[list[list[str]], np.ndarray]:
    """Rows of a GroupLens file (latin-1; a UTF-8 byte-order mark is skipped), each checked for
    its number of fields, and the line number of each row."""
    want = (ncols,) if isinstance(ncols, int) else ncols
    rows = []
    lines = []
    try:
        text = path.read_bytes().decode("latin-1")
    except OSError as e:
        raise DataError(f"data: cannot read {str(path)!r}: {e}") from None
    text = text.removeprefix("\xef\xbb\xbf")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) not in want:
            raise DataError(
                f"data: {str(path)!r} line {lineno} is malformed: expected "
                f"{' or '.join(map(str, want))} fields separated by {sep!r}, got {len(parts)}"
            )
        rows.append(parts)
        lines.append(lineno)
    if not rows:
        raise DataError(f"data: {str(path)!r} is empty")
    return rows, np.asarray(lines)


def _ints(rows: list[list[str]], col: int, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray([int(r[col]) for r in rows], dtype=np.int64)
    except ValueError:
        bad = next(r for r in rows if not r[col].strip().lstrip("-").isdigit())
        raise DataError(f"data: {str(path)!r}: {what} is not an integer in row {bad!r}") from None


def _age_bucket(age: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(AGE_BUCKETS), age, side="right").astype(np.int64)


#: "(YYYY)" followed only by parenthesised notes such as "(V)" up to the end of the title
_YEAR = re.compile(r"\s*\((\d{4})\)(?=(?:\s*\([^()]*\))*\s*$)")


def title_year(title: str) -> tuple[str, int]:
    """(title without its release year, the year or 0): see the module docstring."""
    found = list(_YEAR.finditer(title))
    if not found:
        return title.strip(), 0
    m = found[-1]
    return (title[: m.start()] + title[m.end() :]).strip(), int(m.group(1))


def _index_of(ids: np.ndarray, known: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Positions of ``ids`` in the sorted ``known`` ids; unknown ids are an error."""
    pos = np.searchsorted(known, ids)
    pos_c = np.minimum(pos, len(known) - 1)
    bad = known[pos_c] != ids
    if bad.any():
        raise DataError(
            f"data: {str(path)!r}: {what} id {int(ids[bad][0])} out of range "
            f"({int(bad.sum())} rating(s) refer to {what}s absent from the {what} file; "
            f"valid ids {int(known.min())}..{int(known.max())})"
        )
    return pos_c.astype(np.int64)


def load_movielens_dir(path: str | os.PathLike[str], *, users: bool = True) -> Ratings:
    """Read MovieLens 100K (``u.data``) or 1M (``ratings.dat``) from a GroupLens directory.

    Args:
        path: the unzipped GroupLens folder.
        users: read the user file (``u.user`` / ``users.dat``) for the users and their features;
            ``False``: the users are those of the ratings (sorted by id), without features, and
            the user file is not needed.
    """
    d = Path(path)
    if (d / "u.data").is_file():
        return _load_ml100k(d, users)
    if (d / "ratings.dat").is_file():
        return _load_ml1m(d, users)
    if d.is_dir():
        raise DataError(
            f"data: {str(d)!r} holds neither u.data (MovieLens 100K) nor ratings.dat "
            "(MovieLens 1M); pass the unzipped GroupLens folder or a CSV file"
        )
    raise DataError(f"data: {str(d)!r} not found")


def _need(d: Path, name: str) -> Path:
    p = d / name
    if not p.is_file():
        raise DataError(f"data: {str(p)!r} not found (the GroupLens folder is incomplete)")
    return p


def _assemble(
    name: str,
    rows_r: list[list[str]],
    lines_r: np.ndarray,
    p_r: Path,
    users: _UserFile | None,
    item_rows: list[list[str]],
    p_i: Path,
    genres: np.ndarray,
    genre_names: tuple[str, ...],
    titles: list[str],
) -> Ratings:
    raw_u = _ints(rows_r, 0, p_r, "user id")
    p_u = None if users is None else users.path
    uid = np.unique(raw_u) if users is None else _ints(users.rows, 0, users.path, "user id")
    iid = _ints(item_rows, 0, p_i, "item id")
    uo, io = np.argsort(uid, kind="stable"), np.argsort(iid, kind="stable")
    if len(np.unique(uid)) != len(uid):
        raise DataError(f"data: duplicate user ids in {str(p_u)!r}")
    if len(np.unique(iid)) != len(iid):
        raise DataError(f"data: duplicate item ids in {str(p_i)!r}")
    ru = _index_of(raw_u, uid[uo], p_r, "user")
    ri = _index_of(_ints(rows_r, 1, p_r, "item id"), iid[io], p_r, "item")
    try:
        rating = np.asarray([float(r[2]) for r in rows_r], dtype=np.float32)
    except ValueError:
        raise DataError(f"data: {str(p_r)!r}: a rating is not a number") from None
    stamps = _ints(rows_r, 3, p_r, "timestamp")
    split_titles = [title_year(titles[k]) for k in io]
    feats_u = None
    if users is not None:
        f = users.features
        feats_u = UserFeatures(
            age=f.age[uo], gender=f.gender[uo], occupation=f.occupation[uo], vocab=f.vocab
        )
    feats_i = ItemFeatures(
        genres=genres[io],
        genre_names=genre_names,
        year=np.asarray([y for _, y in split_titles], dtype=np.int64),
        titles=tuple(t for t, _ in split_titles),
    )
    return make_ratings(
        name,
        p_r,
        lines_r,
        ru,
        ri,
        rating,
        stamps,
        user_ids=tuple(str(x) for x in uid[uo]),
        item_ids=tuple(str(x) for x in iid[io]),
        scale=ML_SCALE,
        scale_name=" of MovieLens",
        user_features=feats_u,
        item_features=feats_i,
    )


def _codes(values: list[str]) -> tuple[np.ndarray, int]:
    keys, idx = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    return idx.astype(np.int64) + 1, len(keys) + 1


class _UserFile(NamedTuple):
    """A GroupLens user file: its path, its rows and the users' features (in file order)."""

    path: Path
    rows: list[list[str]]
    features: UserFeatures


def _read_users(
    d: Path,
    name: str,
    sep: str,
    cols: tuple[int, int],
    occupation: Callable[[list[list[str]], Path], tuple[np.ndarray, int]],
) -> _UserFile:
    """The user file ``name`` of ``d``: rows of 5 fields, the age and the gender in the columns
    ``cols``; ``occupation``: ``(rows, path) -> (codes from 1, vocabulary size)``."""
    path = _need(d, name)
    rows, _ = _read_table(path, sep, 5)
    age_col, gender_col = cols
    age = _age_bucket(_ints(rows, age_col, path, "age"))
    gender = np.asarray([{"F": 1, "M": 2}.get(r[gender_col].strip(), 0) for r in rows], np.int64)
    occ, n_occ = occupation(rows, path)
    vocab = {"age": len(AGE_BUCKETS) + 1, "gender": 3, "occupation": n_occ}
    return _UserFile(path, rows, UserFeatures(age, gender, occ, vocab))


def _load_ml100k(d: Path, with_users: bool) -> Ratings:
    p_r, p_i = _need(d, "u.data"), _need(d, "u.item")
    rows_r, lines_r = _read_table(p_r, "\t", 4)
    item_rows, _ = _read_table(p_i, "|", 24)
    users = None
    if with_users:  # occupations by name
        users = _read_users(
            d, "u.user", "|", (1, 2), lambda rows, _: _codes([r[3].strip() for r in rows])
        )
    try:
        genres = np.asarray([[float(v) for v in r[5:24]] for r in item_rows], dtype=np.float32)
    except ValueError:
        raise DataError(f"data: {str(p_i)!r}: a genre flag is not 0/1") from None
    titles = [r[1] for r in item_rows]
    return _assemble(
        "ml-100k", rows_r, lines_r, p_r, users, item_rows, p_i, genres, ML_GENRES, titles
    )


def _load_ml1m(d: Path, with_users: bool) -> Ratings:
    p_r, p_i = _need(d, "ratings.dat"), _need(d, "movies.dat")
    rows_r, lines_r = _read_table(p_r, "::", 4)
    item_rows, _ = _read_table(p_i, "::", 3)
    users = None
    if with_users:  # occupations coded 0..20
        users = _read_users(
            d, "users.dat", "::", (2, 1), lambda rows, p: (_ints(rows, 3, p, "occupation") + 1, 22)
        )
    names = ML_GENRES[1:]
    col = {g: k for k, g in enumerate(names)}
    genres = np.zeros((len(item_rows), len(names)), dtype=np.float32)
    for n, r in enumerate(item_rows):
        for g in r[2].strip().split("|"):
            if g in col:
                genres[n, col[g]] = 1.0
    titles = [r[1] for r in item_rows]
    return _assemble("ml-1m", rows_r, lines_r, p_r, users, item_rows, p_i, genres, names, titles)


# -- download ------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where downloads go: ``cache_root() / "movielens"``."""
    return cache_root() / "movielens"


def download_movielens(
    name: str, cache_dir: str | os.PathLike[str] | None = None, *, url: str | None = None
) -> Path:
    """Download and unzip a GroupLens MovieLens archive (once); returns its folder.

    The archive is checked against GroupLens's published MD5 before anything is unpacked, and
    unpacked into a temporary folder renamed into place, so a failed or interrupted download
    leaves nothing half-written in the cache.
    """
    if name not in MOVIELENS:
        raise ValueError(f"dataset: expected one of {', '.join(MOVIELENS)}, got {name!r}")
    src, md5 = MOVIELENS[name]
    src = url or src
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / name
    if (target / ("u.data" if name == "ml-100k" else "ratings.dat")).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        archive = tmp / f"{name}.zip"
        try:
            with urllib.request.urlopen(src, timeout=60) as resp, open(archive, "wb") as fh:
                shutil.copyfileobj(resp, fh)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(
                f"data: cannot download {name} from {src} ({reason}); without internet, "
                f"download {name}.zip elsewhere, unzip it and pass --data-dir to the folder"
            ) from None
        got = hashlib.md5(archive.read_bytes()).hexdigest()
        if got != md5:
            raise DataError(
                f"data: checksum mismatch for {src}: MD5 {got}, expected {md5} (corrupt or "
                "changed download; nothing was kept)"
            )
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp / "unzipped")
        inner = tmp / "unzipped" / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(inner, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_ratings(
    dataset: str = "ml-100k",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    scale: tuple[float, float] | None = None,
) -> Ratings:
    """Load a data set: a MovieLens folder or CSV file at ``data_dir``, else a cached download.

    Args:
        dataset: ``ml-100k``, ``ml-1m`` or ``csv`` (``data_dir`` is then the CSV file).
        data_dir: a GroupLens folder (``u.data`` / ``ratings.dat`` inside) or a CSV file.
        download: download ``ml-100k`` / ``ml-1m`` into ``cache_dir`` if ``data_dir`` is None.
        scale: (lowest, highest) valid rating of a CSV file (MovieLens: always
            :data:`ML_SCALE`).
    """
    if data_dir is not None:
        p = Path(data_dir)
        if p.is_file():
            return load_ratings_csv(p, scale=scale)
        if dataset == "csv":
            raise DataError(f"data: expected a CSV file for dataset csv, got {str(p)!r}")
        return load_movielens_dir(p)
    if dataset == "csv":
        raise ValueError("data_dir: dataset csv needs the path of the CSV file (--data-dir FILE)")
    if dataset not in MOVIELENS:
        raise ValueError(f"dataset: expected ml-100k, ml-1m or csv, got {dataset!r}")
    if not download:
        raise ValueError(f"data_dir: no local copy of {dataset} given and download is off")
    return load_movielens_dir(download_movielens(dataset, cache_dir))
