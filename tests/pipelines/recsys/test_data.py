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


def _keys(u, i):
    return set(zip(np.asarray(u).tolist(), np.asarray(i).tolist(), strict=True))


@pytest.mark.parametrize("protocol", ["dmm", "temporal"])
def test_validation_is_carved_from_training_positives_only(ml_dir, protocol):
    r = load_ratings("ml-100k", ml_dir)
    s = split(r, protocol, seed=3, val_frac=0.25, cold_items=0.1)
    ref = split(r, protocol, seed=3, val_frac=0.5, cold_items=0.1)
    # the test pairs and the cold items do not depend on the validation split
    assert _keys(s.test_user, s.test_item) == _keys(ref.test_user, ref.test_item)
    assert s.cold_items.tolist() == ref.cold_items.tolist()
    train, val = _keys(s.train_user, s.train_item), _keys(s.val_user, s.val_item)
    assert val and not val & train and not val & _keys(s.test_user, s.test_item)
    assert val <= _keys(s.seen_user, s.seen_item)  # still excluded from the test ranking
    assert not np.isin(s.val_item, s.cold_items).any()
    pos = r.rating >= 4
    assert all(r.rating[(r.user == u) & (r.item == i)][0] >= 4 for u, i in val)
    # every positive training pair of the split without validation is train or validation
    whole = _keys(r.user[pos], r.item[pos]) - _keys(s.test_user, s.test_item)
    whole -= _keys(s.cold_user, s.cold_item)
    assert train | val == whole
    # every user keeps a training positive
    assert set(s.val_user.tolist()) <= set(s.train_user.tolist())


def test_dmm_validation_takes_the_fraction_of_each_user(ml_dir):
    r = load_ratings("ml-100k", ml_dir)
    s = split(r, seed=3, val_frac=0.3)
    for u in np.unique(np.r_[s.train_user, s.val_user]):
        n_val, n_train = (s.val_user == u).sum(), (s.train_user == u).sum()
        n = n_val + n_train
        assert n_val == min(round(0.3 * n), n - 1)
    assert split(r, seed=3, val_frac=0.3).val_item.tolist() == s.val_item.tolist()
    assert split(r, seed=4, val_frac=0.3).val_item.tolist() != s.val_item.tolist()


def test_temporal_validation_is_the_second_to_last_positive(ml_dir):
    r = load_ratings("ml-100k", ml_dir)
    s = split(r, "temporal")
    assert len(s.val_user) > 0 and len(np.unique(s.val_user)) == len(s.val_user)
    for u, i in zip(s.val_user, s.val_item, strict=True):
        mine = np.flatnonzero((r.user == u) & (r.rating >= 4))
        order = mine[np.lexsort((mine, r.timestamp[mine]))]
        assert len(order) >= 3 and r.item[order[-2]] == i


def test_validation_problem_and_bad_fractions(ml_dir):
    r = load_ratings("ml-100k", ml_dir)
    s = split(r, seed=3)
    v = s.validation()
    assert _keys(v.test_user, v.test_item) == _keys(s.val_user, s.val_item)
    assert _keys(v.seen_user, v.seen_item) == _keys(s.seen_user, s.seen_item) - _keys(
        s.val_user, s.val_item
    )
    assert v.train_user.tolist() == s.train_user.tolist()
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"val_frac: expected a fraction in \(0, 1\)"):
            split(r, val_frac=bad)


def test_tail_items_are_the_warm_items_outside_the_most_popular(ml_dir):
    from otcl.pipelines.recsys.data import tail_items

    r = load_ratings("ml-100k", ml_dir)
    s = split(r, cold_items=0.25)
    tail = tail_items(s, head=0.2)
    warm = np.flatnonzero(s.warm_items)
    counts = np.bincount(s.train_item, minlength=s.n_items)
    assert not tail[s.cold_items].any() and tail.sum() == len(warm) - round(0.2 * len(warm))
    head = np.setdiff1d(warm, np.flatnonzero(tail))
    assert counts[head].min() >= counts[tail].max()
    with pytest.raises(ValueError, match="head: expected a fraction"):
        tail_items(s, head=1.0)
