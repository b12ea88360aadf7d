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
