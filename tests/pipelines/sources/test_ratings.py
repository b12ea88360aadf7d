"""Ratings files every pipeline reads: the CSV reader and its bad-input errors."""

from __future__ import annotations

import pytest

from otcl.pipelines.sources.movielens import load_ratings
from otcl.pipelines.sources.ratings import load_ratings_csv


def test_csv_with_and_without_header(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user_id,item_id,rating\nA,x,5\nB,x,3\nA,y,4\n")
    r = load_ratings_csv(p)
    assert (r.n_users, r.n_items, r.timestamp) == (2, 2, None)
    assert r.user_ids == ("A", "B") and list(r.user) == [0, 1, 0]
    q = tmp_path / "q.csv"
    q.write_text("A,x,5,10\nB,x,3,11\n")
    assert list(load_ratings("csv", q).timestamp) == [10, 11]


@pytest.mark.parametrize(
    "text, match",
    [
        ("A,x,5\nB,x\n", "line 2: expected user_id,item_id,rating"),
        ("A,x,5\nB,x,good\n", "line 2: rating/timestamp is not a number"),
        ("user,item,rating\n", "holds no ratings"),
        ("A,x,5,1\nB,x,4\n", "some rows have a timestamp and some not"),
    ],
)
def test_malformed_csv(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_ratings_csv(p)


# -- checks of every reader ----------------------------------------------------------------
def test_duplicate_pairs_keep_the_latest_rating_and_are_reported(tmp_path, capsys):
    p = tmp_path / "r.csv"
    # (A, x) three times: the latest timestamp (20, the middle row) wins; (B, x) twice, a tie
    # in time: the later row wins
    p.write_text("A,x,1,10\nA,x,5,20\nB,x,2,7\nA,x,3,15\nB,y,4,1\nB,x,4,7\n")
    r = load_ratings_csv(p)
    assert r.duplicates == 3 and len(r.user) == 3
    got = {(r.user_ids[u], r.item_ids[i]): (float(v), int(t)) for u, i, v, t in
           zip(r.user, r.item, r.rating, r.timestamp, strict=True)}  # fmt: skip
    assert got == {("A", "x"): (5.0, 20), ("B", "x"): (4.0, 7), ("B", "y"): (4.0, 1)}
    assert list(r.timestamp) == [20, 1, 7]  # the kept rows stay in file order
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "r.csv': dropped 3 duplicate (user, item) row(s)" in err[0]
    # without timestamps: the later row of the file wins
    q = tmp_path / "q.csv"
    q.write_text("A,x,1\nA,y,2\nA,x,5\n")
    r = load_ratings_csv(q)
    assert (r.duplicates, list(r.rating)) == (1, [2.0, 5.0])


def test_no_duplicates_changes_nothing_and_says_nothing(tmp_path, capsys):
    p = tmp_path / "r.csv"
    p.write_text("B,y,4,3\nA,x,1,9\nA,y,2,1\n")
    r = load_ratings_csv(p)
    assert r.duplicates == 0 and list(r.timestamp) == [3, 9, 1] and list(r.rating) == [4, 1, 2]
    assert capsys.readouterr().err == ""


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("196,242,3\n186,302,3\n196,302,4\n".encode("utf-8-sig"))
    r = load_ratings_csv(p)
    assert r.user_ids == ("186", "196") and r.n_users == 2 and list(r.user) == [1, 0, 1]
    q = tmp_path / "bom-header.csv"
    q.write_bytes("user_id,item_id,rating\n196,242,3\n".encode("utf-8-sig"))
    assert load_ratings_csv(q).user_ids == ("196",)


def test_ratings_outside_the_scale_are_refused_with_file_line_and_scale(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user_id,item_id,rating\nA,x,5\nB,x,7\nA,y,-3\n")
    assert len(load_ratings_csv(p).user) == 3  # no scale declared: any finite rating
    with pytest.raises(
        ValueError, match=r"r.csv' line 3: rating 7 is outside the scale 1..5 \(2 such"
    ):
        load_ratings_csv(p, scale=(1, 5))
    with pytest.raises(ValueError, match=r"r.csv' line 3: rating 7 is outside the scale 1..5"):
        load_ratings("csv", p, scale=(1, 5))
    p.write_text("A,x,5\nB,x,nan\n")
    with pytest.raises(ValueError, match=r"r.csv' line 2: rating nan is not a finite number"):
        load_ratings_csv(p)
