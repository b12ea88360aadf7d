"""The ratings reader: MovieLens folders, CSV, download, and their bad-input errors."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from otcl.pipelines.sources import movielens as D
from otcl.pipelines.sources.movielens import load_ratings, title_year


def test_ml100k_folder(ml_dir):
    r = load_ratings("ml-100k", ml_dir)
    raw = np.loadtxt(ml_dir / "u.data", dtype=np.int64)
    assert (len(r.user), r.n_users, r.n_items) == (600, 30, 40)
    # contiguous ids follow the sorted original ids; ratings stay with their pair
    assert [r.user_ids[u] for u in r.user[:5]] == [str(x) for x in raw[:5, 0]]
    assert [r.item_ids[i] for i in r.item[:5]] == [str(x) for x in raw[:5, 1]]
    np.testing.assert_array_equal(r.rating, raw[:, 2])
    np.testing.assert_array_equal(r.timestamp, raw[:, 3])
    f = r.item_features
    assert f.genres.shape == (40, 19) and f.titles[0] == "Movie 1 story" and f.year[0] == 1951
    assert r.user_features.gender[0] == 1 and r.user_features.age.min() >= 1


def test_ml1m_folder(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text(
        "1::10::5::978300760\n2::20::3::978302109\n1::20::4::978301968\n"
    )
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (d / "movies.dat").write_bytes(
        "10::GoldenEye (1995)::Action|Adventure|Thriller\n20::Café (2000)::Drama\n".encode(
            "latin-1"
        )
    )
    r = load_ratings("ml-1m", d)
    assert (r.n_users, r.n_items, len(r.user)) == (2, 2, 3)
    f = r.item_features
    assert f.titles == ("GoldenEye", "Café") and list(f.year) == [1995, 2000]
    assert f.genres[0].sum() == 3 and f.genres[1, f.genre_names.index("Drama")] == 1
    assert list(r.user_features.age) == [1, 7] and list(r.user_features.occupation) == [11, 17]


def test_bad_movielens_folders(tmp_path, ml_dir, make_ml):
    with pytest.raises(ValueError, match="not found"):
        load_ratings("ml-100k", tmp_path / "missing")
    with pytest.raises(ValueError, match="holds neither u.data"):
        load_ratings("ml-100k", tmp_path)
    bad = make_ml("bad")
    (bad / "u.data").write_text("1\t2\t3\n")
    with pytest.raises(ValueError, match=r"u.data' line 1 is malformed: expected 4 fields"):
        load_ratings("ml-100k", bad)
    (bad / "u.data").write_text("1\t99\t3\t5\n")
    with pytest.raises(ValueError, match="item id 99 out of range"):
        load_ratings("ml-100k", bad)
    (bad / "u.data").write_text("1\tx\t3\t5\n")
    with pytest.raises(ValueError, match="item id is not an integer"):
        load_ratings("ml-100k", bad)
    (ml_dir / "u.item").unlink()
    with pytest.raises(ValueError, match="u.item' not found"):
        load_ratings("ml-100k", ml_dir)


def _zip_of(folder: Path, name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"{name}/{f.name}")
    return buf.getvalue()


def test_download_checks_md5_and_caches(tmp_path, ml_dir, monkeypatch):
    blob = _zip_of(ml_dir, "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    archive.write_bytes(blob)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch"):
        D.download_movielens("ml-100k", cache, url=archive.as_uri())
    assert [p.name for p in cache.iterdir()] == []  # nothing half-written
    monkeypatch.setitem(D.MOVIELENS, "ml-100k", (archive.as_uri(), hashlib.md5(blob).hexdigest()))
    r = load_ratings("ml-100k", cache_dir=cache)
    assert len(r.user) == 600
    archive.unlink()  # cached: no second download
    assert len(load_ratings("ml-100k", cache_dir=cache).user) == 600


def test_download_offline_error(tmp_path):
    with pytest.raises(ValueError, match="cannot download ml-1m .* pass --data-dir"):
        D.download_movielens("ml-1m", tmp_path, url=(tmp_path / "nowhere.zip").as_uri())
    assert not (tmp_path / "ml-1m").exists()


@pytest.mark.parametrize(
    "raw, title, year",
    [
        ("Se7en (1995)", "Se7en", 1995),
        ("Toy Story (1995) ", "Toy Story", 1995),
        (
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            "City of Lost Children, The (Cité des enfants perdus, La)",
            1995,
        ),
        # ML-100K's item 1358: a note after the year
        (
            "Land Before Time III: The Time of the Great Giving (1995) (V)",
            "Land Before Time III: The Time of the Great Giving (V)",
            1995,
        ),
        ("Summer of (1969) (1995)", "Summer of (1969)", 1995),  # the last year wins
        ("unknown", "unknown", 0),  # ML-100K's item 267
        ("Summer of (1969) Love", "Summer of (1969) Love", 0),  # a year inside the title
        ("1984 (1984)", "1984", 1984),
        ("2001: A Space Odyssey", "2001: A Space Odyssey", 0),
        ("Film (95)", "Film (95)", 0),
    ],
)
def test_title_year(raw, title, year):
    assert title_year(raw) == (title, year)


def test_item_years_and_titles_come_from_the_titles(make_ml):
    """The release-date column of u.item is not read: the title's year is the film's."""
    root = make_ml("years", n_users=4, n_items=3, n_ratings=6)
    rows = (root / "u.item").read_text(encoding="latin-1").splitlines()
    titles = ["Taxi Driver (1976)", "unknown", "Land Before Time III (1995) (V)"]
    rows = [
        "|".join([r.split("|")[0], t, "16-Feb-1996", *r.split("|")[3:]])
        for r, t in zip(rows, titles, strict=True)
    ]
    (root / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1")
    itf = load_ratings("ml-100k", root).item_features
    assert itf.year.tolist() == [1976, 0, 1995]
    assert itf.titles == ("Taxi Driver", "unknown", "Land Before Time III (V)")


def test_users_from_the_ratings_need_no_user_file(ml_dir):
    full = load_ratings("ml-100k", ml_dir)
    (ml_dir / "u.user").unlink()
    with pytest.raises(ValueError, match="u.user' not found"):
        load_ratings("ml-100k", ml_dir)
    r = D.load_movielens_dir(ml_dir, users=False)
    assert r.user_features is None and r.item_features is not None
    rated = sorted({int(full.user_ids[u]) for u in full.user})
    assert [int(x) for x in r.user_ids] == rated  # numeric order, only users with a rating
    np.testing.assert_array_equal(
        np.asarray(r.user_ids)[r.user], np.asarray(full.user_ids)[full.user]
    )
    np.testing.assert_array_equal(r.item, full.item)


def test_movielens_ratings_outside_one_to_five_are_refused(ml_dir):
    rows = (ml_dir / "u.data").read_text().splitlines()
    for bad in ("7", "-3", "0"):
        u, i, _, t = rows[4].split("\t")
        lines = [*rows[:4], "\t".join([u, i, bad, t]), *rows[5:]]
        (ml_dir / "u.data").write_text("\n".join(lines) + "\n")
        with pytest.raises(
            ValueError,
            match=rf"u.data' line 5: rating {bad} is outside the scale 1..5 of MovieLens",
        ):
            load_ratings("ml-100k", ml_dir)


def test_duplicated_u_data_rows_are_dropped(ml_dir, capsys):
    clean = load_ratings("ml-100k", ml_dir)
    rows = (ml_dir / "u.data").read_text().splitlines()
    rng = np.random.default_rng(0)
    extra = [rows[k] for k in rng.choice(len(rows), size=50, replace=False)]
    # the copies come later in the file with an earlier timestamp: the originals are kept
    extra = ["\t".join([*r.split("\t")[:2], "1", "1"]) for r in extra]
    (ml_dir / "u.data").write_text("\n".join(rows + extra) + "\n")
    r = load_ratings("ml-100k", ml_dir)
    assert r.duplicates == 50 and "dropped 50 duplicate" in capsys.readouterr().err
    for a in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(r, a), getattr(clean, a))


def test_a_byte_order_mark_before_u_data_is_skipped(ml_dir):
    clean = load_ratings("ml-100k", ml_dir)
    p = ml_dir / "u.data"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    np.testing.assert_array_equal(load_ratings("ml-100k", ml_dir).user, clean.user)
