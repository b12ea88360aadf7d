"""Retrieval metrics against brute force; GMC's sentiment metrics against sklearn / scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otcl.pipelines.multimodal.metrics import (
    accuracy,
    cross_modal_retrieval,
    retrieval_metrics,
    retrieval_ranks,
    sentiment_metrics,
)


def _brute_ranks(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """For each query: sort the gallery by cosine, descending, and find the true item."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    ranks = []
    for i in range(q.shape[0]):
        order = sorted(range(g.shape[0]), key=lambda j: -float(q[i] @ g[j]))
        ranks.append(order.index(i) + 1)
    return np.array(ranks)


@pytest.mark.parametrize("chunk", [7, 1024])
def test_retrieval_matches_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    gal = torch.randn(60, 5, generator=g, dtype=torch.float64)
    qry = gal + 0.8 * torch.randn(60, 5, generator=g, dtype=torch.float64)  # informative queries
    ranks = retrieval_ranks(qry, gal, chunk=chunk)
    ref = _brute_ranks(qry.numpy(), gal.numpy())
    np.testing.assert_array_equal(ranks.numpy(), ref)
    m = retrieval_metrics(qry, gal, chunk=chunk)
    for k in (1, 5, 10):
        assert m[f"R@{k}"] == pytest.approx(np.mean(ref <= k))
    assert m["medR"] == pytest.approx(np.median(ref)) and m["meanR"] == pytest.approx(ref.mean())
    assert 0 < m["R@1"] < m["R@10"] < 1  # the test data exercises both outcomes


def test_retrieval_ties_count_against_the_query():
    same = torch.ones(5, 3)
    assert retrieval_ranks(same, same).tolist() == [5] * 5  # collapse = last, never first
    perfect = torch.eye(4)
    m = retrieval_metrics(perfect, perfect)
    assert m["R@1"] == 1.0 and m["medR"] == 1.0 and m["meanR"] == 1.0


def test_cross_modal_retrieval_both_directions_every_pair():
    g = torch.Generator().manual_seed(1)
    z = {k: torch.randn(20, 4, generator=g) for k in ("a", "b", "c")}
    out = cross_modal_retrieval(z)
    assert sorted(out) == ["a->b", "a->c", "b->a", "b->c", "c->a", "c->b"]
    ref = _brute_ranks(z["c"].numpy(), z["a"].numpy())
    assert out["c->a"]["meanR"] == pytest.approx(ref.mean(), rel=1e-6)
    with pytest.raises(ValueError, match="expected the same shape"):
        retrieval_ranks(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2 modalities"):
        cross_modal_retrieval({"a": z["a"]})


def test_sentiment_metrics_match_sklearn_and_scipy():
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    y = np.round(rng.uniform(-3, 3, 200) * 3) / 3  # MOSEI-like labels on a 1/3 grid ...
    y[:25] = 0.0  # ... with exact zeros, excluded from acc2 / F1
    p = y + rng.normal(0, 1.2, 200)
    m = sentiment_metrics(torch.tensor(p), torch.tensor(y))
    nz = y != 0
    assert m["mae"] == pytest.approx(np.abs(p - y).mean())
    assert m["corr"] == pytest.approx(stats.pearsonr(p, y)[0])
    assert m["acc2"] == pytest.approx(sk.accuracy_score(y[nz] > 0, p[nz] > 0))
    assert m["f1"] == pytest.approx(sk.f1_score(y[nz] > 0, p[nz] > 0, average="weighted"))
    assert m["acc2"] != pytest.approx(sk.accuracy_score(y > 0, p > 0))  # zeros really excluded
    # one predicted class only: sklearn's zero-division F1 for the other class is 0
    const = sentiment_metrics(torch.ones(200), torch.tensor(y))
    assert const["f1"] == pytest.approx(
        sk.f1_score(y[nz] > 0, np.ones(nz.sum(), bool), average="weighted", zero_division=0)
    )
    assert np.isnan(const["corr"])
    assert np.isnan(sentiment_metrics(torch.ones(3), torch.zeros(3))["acc2"])


def test_accuracy_checks_shapes():
    assert accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same shape"):
        accuracy(torch.zeros(3), torch.zeros(4))
