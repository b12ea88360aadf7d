"""Ranking metrics against a brute-force per-user reference (and scikit-learn's nDCG)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from otcl.pipelines.recsys.metrics import metric_names, rank_metrics


def _problem(seed=0, n_users=25, n_items=30):
    rng = np.random.default_rng(seed)
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items)))
    seen = rng.random((n_users, n_items)) < 0.3
    rel = (rng.random((n_users, n_items)) < 0.15) & ~seen
    rel[:3] = False  # users without a relevant item
    eu, ei = np.nonzero(seen)
    ru, ri = np.nonzero(rel)
    return scores, (ru, ri), (eu, ei), rel, seen


def _reference(scores, rel, seen, ks, users="positive", eval_users=None, candidates=None):
    """One user at a time: sort the candidates, walk the ranking."""
    n_users, n_items = rel.shape
    cand = np.ones(n_items, bool) if candidates is None else candidates
    out = {name: [] for name in metric_names(ks)}
    pos_users = [u for u in range(n_users) if rel[u].any()]
    for u in pos_users:
        items = [i for i in range(n_items) if cand[i] and not seen[u, i]]
        ranked = sorted(items, key=lambda i: -float(scores[u, i]))
        h = [bool(rel[u, i]) for i in ranked]
        r = int(rel[u].sum())
        for k in ks:
            top = h[:k]
            out[f"recall@{k}"].append(sum(top) / r)
            dcg = sum(x / math.log2(j + 2) for j, x in enumerate(top))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(k, r)))
            out[f"ndcg@{k}"].append(dcg / idcg)
            out[f"hr@{k}"].append(float(any(top)))
            ap = sum(sum(top[: j + 1]) / (j + 1) for j, x in enumerate(top) if x)
            out[f"map@{k}"].append(ap / min(k, r))
    n = len(pos_users)
    if users == "all":
        n = len(set(pos_users) | set(int(x) for x in eval_users))
    return {k: sum(v) / n for k, v in out.items()}


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_metrics_match_brute_force(block):
    scores, relevant, exclude, rel, seen = _problem()
    ks = (1, 3, 5, 10)
    got = rank_metrics(lambda u: scores[u], relevant, exclude, *rel.shape, ks=ks, block=block)
    ref = _reference(scores, rel, seen, ks)
    assert got["users"] == sum(rel.any(1))
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_all_users_convention_counts_users_without_positives_as_zero():
    scores, relevant, exclude, rel, seen = _problem(seed=1)
    eval_users = np.arange(rel.shape[0])  # every user had a test rating
    got = rank_metrics(
        lambda u: scores[u],
        relevant,
        exclude,
        *rel.shape,
        ks=(5,),
        users="all",
        eval_users=eval_users,
    )
    pos = rank_metrics(lambda u: scores[u], relevant, exclude, *rel.shape, ks=(5,))
    ref = _reference(scores, rel, seen, (5,), users="all", eval_users=eval_users)
    assert got["users"] == rel.shape[0]
    assert got["ndcg@5"] == pytest.approx(ref["ndcg@5"], abs=1e-12)
    assert got["recall@5"] == pytest.approx(pos["recall@5"] * pos["users"] / rel.shape[0])


def test_candidate_mask_restricts_the_ranking():
    scores, relevant, exclude, rel, seen = _problem(seed=2)
    cand = np.zeros(rel.shape[1], bool)
    cand[::2] = True
    rel = rel & cand
    ru, ri = np.nonzero(rel)
    got = rank_metrics(
        lambda u: scores[u], (ru, ri), exclude, *rel.shape, ks=(1, 5), candidates=cand
    )
    ref = _reference(scores, rel, seen, (1, 5), candidates=cand)
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_ndcg_equals_sklearn_over_the_candidates():
    scores, relevant, exclude, rel, seen = _problem(seed=3, n_users=1)
    rel[0, :5] = ~seen[0, :5]
    ru, ri = np.nonzero(rel)
    got = rank_metrics(lambda u: scores[u], (ru, ri), exclude, *rel.shape, ks=(10,))
    items = ~seen[0]
    ref = ndcg_score(rel[0][items][None].astype(float), scores[0].numpy()[items][None], k=10)
    assert got["ndcg@10"] == pytest.approx(ref, abs=1e-12)


def test_perfect_scores_give_one():
    _, relevant, exclude, rel, seen = _problem(seed=4)
    perfect = torch.from_numpy(rel.astype(np.float64))
    got = rank_metrics(lambda u: perfect[u], relevant, exclude, *rel.shape, ks=(20,))
    assert got["ndcg@20"] == pytest.approx(1.0)
    assert got["hr@20"] == pytest.approx(1.0)


def test_bad_inputs():
    scores, relevant, exclude, rel, seen = _problem()
    fn = lambda u: scores[u]  # noqa: E731
    with pytest.raises(ValueError, match="k: 31 is larger than the number of candidate items"):
        rank_metrics(fn, relevant, exclude, *rel.shape, ks=(31,))
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="relevant: the test set is empty"):
        rank_metrics(fn, empty, exclude, *rel.shape)
    with pytest.raises(ValueError, match="relevant: item id 30 out of range"):
        rank_metrics(fn, (np.array([0]), np.array([30])), exclude, *rel.shape, ks=(1,))
    with pytest.raises(ValueError, match="users: expected one of"):
        rank_metrics(fn, relevant, exclude, *rel.shape, users="some")
    with pytest.raises(ValueError, match="score_fn: expected scores of shape"):
        rank_metrics(lambda u: scores[u][:, :5], relevant, exclude, *rel.shape, ks=(1,))
