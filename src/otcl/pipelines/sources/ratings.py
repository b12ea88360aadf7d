r"""Ratings as every pipeline reads them: contiguous ids, side features, and the CSV reader.

:class:`Ratings` holds all ratings of a data set with ids re-indexed to ``0..n-1``
(``user_ids`` / ``item_ids`` keep the original ones) and, for MovieLens, the side features of
users (:class:`UserFeatures`: age bucket, gender, occupation) and items (:class:`ItemFeatures`:
genres multi-hot, release year, title). :func:`load_ratings_csv` reads a CSV file
``user_id,item_id,rating[,timestamp]`` (Amazon-review style, header optional, ids any strings,
UTF-8 with or without a byte-order mark), without side features; :mod:`.movielens` reads
GroupLens's folders.

Every reader ends in :func:`make_ratings`, which checks the ratings the same way for every file:

* a rating that is not finite, or outside the declared ``scale`` (MovieLens: 1..5), is refused in
  one line naming the file, the line and the scale;
* **duplicate (user, item) rows are dropped before anything else sees them**: each pair keeps its
  latest rating (largest timestamp; on a tie, or without timestamps, the later row in the file),
  and one line on stderr says how many rows were dropped (``Ratings.duplicates``). A pair rated
  twice would otherwise be both a training and a test pair of a random split: masked as seen, so
  never retrievable, while counted as relevant.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import DataError

__all__ = ["Ratings", "UserFeatures", "ItemFeatures", "load_ratings_csv", "make_ratings"]


@dataclass(frozen=True)
class UserFeatures:
    """Categorical user features, one code per user (0 = unknown).

    Attributes:
        age: (n_users,) age bucket in ``1..len(AGE_BUCKETS)``.
        gender: (n_users,) 1 = F, 2 = M.
        occupation: (n_users,) occupation code in ``1..n_occupations``.
        vocab: number of codes of each field (including the 0 = unknown code).
    """

    age: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray
    vocab: dict[str, int]

    def codes(self) -> dict[str, np.ndarray]:
        return {"age": self.age, "gender": self.gender, "occupation": self.occupation}


@dataclass(frozen=True)
class ItemFeatures:
    """Item side information.

    Attributes:
        genres: (n_items, G) float32 multi-hot.
        genre_names: the G genre names.
        year: (n_items,) release year (0 = unknown).
        titles: the n_items titles (without the trailing ``(year)``).
    """

    genres: np.ndarray
    genre_names: tuple[str, ...]
    year: np.ndarray
    titles: tuple[str, ...]


@dataclass(frozen=True)
class Ratings:
    """All ratings of a data set, with contiguous ids.

    Attributes:
        name: ``ml-100k``, ``ml-1m`` or the CSV file name.
        user, item: (R,) int64 indices in ``[0, n_users)`` / ``[0, n_items)``.
        rating: (R,) float32.
        timestamp: (R,) int64 or None (CSV without a timestamp column).
        user_ids, item_ids: original id of each index (strings).
        user_features, item_features: side information (MovieLens) or None.
        duplicates: rows of the file dropped because their (user, item) pair came again.
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray | None
    n_users: int
    n_items: int
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    user_features: UserFeatures | None = None
    item_features: ItemFeatures | None = None
    duplicates: int = 0

    def __repr__(self) -> str:
        return (
            f"Ratings({self.name}: {len(self.user):,} ratings, {self.n_users:,} users, "
            f"{self.n_items:,} items)"
        )


def _reindex(raw: list[str], name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    keys, idx = np.unique(np.asarray(raw, dtype=object).astype(str), return_inverse=True)
    return idx.astype(np.int64), tuple(keys.tolist())


def check_ratings(
    rating: np.ndarray,
    path: Path,
    lines: np.ndarray,
    scale: tuple[float, float] | None = None,
    what: str = "",
) -> None:
    """Refuse non-finite ratings and ratings outside ``scale`` (inclusive), naming the line of
    the first one (``lines[k]`` is the line of rating ``k`` in ``path``)."""
    bad = ~np.isfinite(rating)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(
            f"data: {str(path)!r} line {int(lines[k])}: rating {rating[k]} is not a finite number "
            f"({int(bad.sum())} such row(s))"
        )
    if scale is None:
        return
    lo, hi = scale
    bad = (rating < lo) | (rating > hi)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(
            f"data: {str(path)!r} line {int(lines[k])}: rating {rating[k]:g} is outside the "
            f"scale {lo:g}..{hi:g}{what} ({int(bad.sum())} such row(s))"
        )


def latest_per_pair(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray | None) -> np.ndarray:
    """Sorted positions of the rows to keep: one per (user, item) pair, its latest rating
    (largest timestamp, then the later row). Without duplicates: every position, in order."""
    n = len(user)
    pos = np.arange(n)
    stamp = np.zeros(n, dtype=np.int64) if timestamp is None else timestamp
    order = np.lexsort((pos, stamp, item, user))  # by user, item, time, row
    u, i = user[order], item[order]
    last = np.r_[(u[1:] != u[:-1]) | (i[1:] != i[:-1]), True]
    return np.sort(order[last])


def make_ratings(
    name: str,
    path: Path,
    lines: np.ndarray,
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray | None,
    *,
    user_ids: tuple[str, ...],
    item_ids: tuple[str, ...],
    scale: tuple[float, float] | None = None,
    scale_name: str = "",
    user_features: UserFeatures | None = None,
    item_features: ItemFeatures | None = None,
) -> Ratings:
    """:class:`Ratings` from the rows of ``path`` after the checks of every reader (see the
    module docstring): finite ratings within ``scale``, one row per (user, item) pair."""
    check_ratings(rating, path, lines, scale, scale_name)
    keep = latest_per_pair(user, item, timestamp)
    dropped = len(user) - len(keep)
    if dropped:
        print(
            f"otcl: note: {str(path)!r}: dropped {dropped:,} duplicate (user, item) row(s), "
            "keeping each pair's latest rating",
            file=sys.stderr,
        )
        user, item, rating = user[keep], item[keep], rating[keep]
        timestamp = None if timestamp is None else timestamp[keep]
    return Ratings(
        name=name,
        user=user,
        item=item,
        rating=rating,
        timestamp=timestamp,
        n_users=len(user_ids),
        n_items=len(item_ids),
        user_ids=user_ids,
        item_ids=item_ids,
        user_features=user_features,
        item_features=item_features,
        duplicates=dropped,
    )


def load_ratings_csv(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    scale: tuple[float, float] | None = None,
) -> Ratings:
    """Read ``user_id,item_id,rating[,timestamp]`` rows (a header line is detected and skipped).

    Args:
        path: the CSV file (UTF-8; a leading byte-order mark is not part of the first id).
        name: the data set's name (default: the file's stem).
        scale: (lowest, highest) valid rating; any finite rating when None.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data: ratings file {str(p)!r} not found")
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    lines: list[int] = []
    with open(p, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        for lineno, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) not in (3, 4):
                raise DataError(
                    f"data: {str(p)!r} line {lineno}: expected user_id,item_id,rating"
                    f"[,timestamp], got {len(row)} field(s)"
                )
            try:
                r = float(row[2])
                t = int(float(row[3])) if len(row) == 4 else None
            except ValueError:
                if lineno == 1 and not users:  # header
                    continue
                raise DataError(
                    f"data: {str(p)!r} line {lineno}: rating/timestamp is not a number: {row!r}"
                ) from None
            if (t is None) != (not stamps) and users:
                raise DataError(
                    f"data: {str(p)!r} line {lineno}: some rows have a timestamp and some not"
                )
            users.append(row[0].strip())
            items.append(row[1].strip())
            ratings.append(r)
            lines.append(lineno)
            if t is not None:
                stamps.append(t)
    if not users:
        raise DataError(f"data: {str(p)!r} holds no ratings")
    u, uids = _reindex(users, "user")
    i, iids = _reindex(items, "item")
    return make_ratings(
        name or p.stem,
        p,
        np.asarray(lines),
        u,
        i,
        np.asarray(ratings, dtype=np.float32),
        np.asarray(stamps, dtype=np.int64) if stamps else None,
        user_ids=uids,
        item_ids=iids,
        scale=scale,
    )
