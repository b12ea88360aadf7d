"""The recsys splits (dmm, temporal, cold items) and the negative sampler on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otcl.pipelines.recsys.data import NegativeSampler, split
from otcl.pipelines.sources.movielens import load_ratings
from otcl.pipelines.sources.ratings import load_ratings_csv


def test_dmm_split(ml_dir):
    r = load_ratings("ml-100k", ml_dir)
    s = split(r, seed=3)
    key = lambda u, i: set(zip(u.tolist(), i.tolist(), strict=True))  # noqa: E731
    pos = r.rating >= 4
    seen, test = key(s.seen_user, s.seen_item), key(s.test_user, s.test_item)
    assert len(seen) == 600 - 150 and not seen & test
    assert key(s.train_user, s.train_item) <= seen
    assert seen | key(r.user[~pos], r.item[~pos]) | test == key(r.user, r.item)
    assert split(r, seed=3).test_item.tolist() == s.test_item.tolist()
    assert split(r, seed=4).test_item.tolist() != s.test_item.tolist()


def test_temporal_split_holds_out_each_users_latest_positive(ml_dir):
    r = load_ratings("ml-100k", ml_dir)
    s = split(r, "temporal")
    for u, i in zip(s.test_user, s.test_item, strict=True):
        mine = (r.user == u) & (r.rating >= 4)
        latest = r.item[mine][np.argmax(r.timestamp[mine])]
        assert i == latest and mine.sum() >= 2
    assert len(np.unique(s.test_user)) == len(s.test_user)
    assert len(s.seen_user) + len(s.test_user) == len(r.user)


def test_cold_items_are_held_out_of_training(ml_dir):
    r = load_ratings("ml-100k", ml_dir)
    s = split(r, cold_items=0.25)
    assert len(s.cold_items) == 10
    assert not np.isin(s.seen_item, s.cold_items).any()
    assert not np.isin(s.test_item, s.cold_items).any()
    assert np.isin(s.cold_item, s.cold_items).all() and len(s.cold_item) > 0
    assert s.warm_items.sum() == 30


def test_split_errors(ml_dir, tmp_path):
    r = load_ratings("ml-100k", ml_dir)
    with pytest.raises(ValueError, match="split: expected one of dmm, temporal"):
        split(r, "random")
    with pytest.raises(ValueError, match="cold_items: expected a fraction"):
        split(r, cold_items=1.0)
    p = tmp_path / "low.csv"
    p.write_text("a,x,1\nb,y,2\na,y,5\n")
    with pytest.raises(ValueError, match="the test set of low is empty"):
        split(load_ratings_csv(p), test_frac=0.3)
    with pytest.raises(ValueError, match="temporal needs timestamps"):
        split(load_ratings_csv(p), "temporal")


def test_negative_sampler_excludes_positives():
    user = np.array([0, 0, 0, 1, 1])
    item = np.array([0, 1, 2, 3, 4])
    allowed = np.ones(6, bool)
    allowed[5] = False
    ns = NegativeSampler(user, item, 6, allowed)
    neg = ns(torch.tensor([0, 1] * 50), 7, torch.Generator().manual_seed(0))
    assert neg.shape == (100, 7)
    assert set(neg[::2].flatten().tolist()) == {3, 4}
    assert set(neg[1::2].flatten().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="user 0 has a positive for every candidate item"):
        NegativeSampler(np.zeros(3, np.int64), np.arange(3), 3)


def test_duplicated_rows_never_make_a_test_pair_a_training_pair(tmp_path, capsys):
    """A pair rated twice could land in both halves of the random split: masked as seen (never
    retrievable) while counted as relevant. The reader keeps one row per pair."""
    rng = np.random.default_rng(1)
    rows = [f"u{rng.integers(40)},i{rng.integers(60)},{rng.integers(1, 6)}" for _ in range(1500)]
    p = tmp_path / "dup.csv"
    p.write_text("\n".join(rows) + "\n")
    r = load_ratings_csv(p)
    assert r.duplicates > 300  # 1500 draws of 2400 pairs
    s = split(r, "dmm", seed=0)
    seen = set(zip(s.seen_user.tolist(), s.seen_item.tolist(), strict=True))
    test = set(zip(s.test_user.tolist(), s.test_item.tolist(), strict=True))
    assert test and not seen & test
