"""EASE and ItemKNN against straightforward numpy references on a small generated matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otcl.pipelines.recsys.baselines import (
    ease_weights,
    fit_ease,
    fit_itemknn,
    interaction_matrix,
    itemknn_weights,
)


def _matrix(seed: int = 0, n_users: int = 30, n_items: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < 0.3).astype(np.float64)
    x[:, -1] = 0.0  # an item nobody interacted with
    return x


@pytest.mark.parametrize("lam", [0.5, 10.0, 300.0])
def test_ease_equals_per_item_ridge_regression(lam):
    # EASE's objective ||X - XB||^2 + lam ||B||^2 with diag(B) = 0 splits into one ridge
    # regression per item: column j regressed on the other columns
    x = _matrix()
    b = ease_weights(x, lam)
    n = x.shape[1]
    ref = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        xo = x[:, others]
        ref[others, j] = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
    np.testing.assert_allclose(b, ref, atol=1e-10)
    assert np.all(np.diag(b) == 0)


def test_ease_scores_and_bad_lambda():
    x = _matrix(1)
    users, items = np.nonzero(x)
    model = fit_ease(users, items, *x.shape, lam=5.0)
    got = model.scorer()(torch.tensor([0, 3, 7]))
    ref = x[[0, 3, 7]] @ ease_weights(x, 5.0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ease: expected lambda > 0"):
        ease_weights(x, 0.0)


@pytest.mark.parametrize("k", [1, 3, 11, 50])
def test_itemknn_equals_loop_reference(k):
    x = _matrix(2)
    w = itemknn_weights(x, k)
    n = x.shape[1]
    ref = np.zeros((n, n))
    for j in range(n):
        sims = []
        for i in range(n):
            if i == j:
                continue
            ni, nj = np.sqrt(x[:, i] @ x[:, i]), np.sqrt(x[:, j] @ x[:, j])
            s = 0.0 if ni == 0 or nj == 0 else float(x[:, i] @ x[:, j]) / (ni * nj)
            sims.append((-s, i, s))
        for _, i, s in sorted(sims)[:k]:  # most similar first, ties by item index
            ref[i, j] = s
    np.testing.assert_allclose(w, ref, atol=1e-12)
    assert (np.count_nonzero(w, axis=0) <= k).all()


def test_itemknn_scores_sum_neighbour_similarities():
    x = _matrix(3)
    users, items = np.nonzero(x)
    model = fit_itemknn(users, items, *x.shape, k=4)
    w = itemknn_weights(x, 4)
    got = model.scorer()(torch.arange(x.shape[0])).numpy()
    for u in (0, 5, 9):
        for j in range(x.shape[1]):
            ref = sum(w[i, j] for i in np.flatnonzero(x[u]))
            assert got[u, j] == pytest.approx(ref, abs=1e-5)
    with pytest.raises(ValueError, match="itemknn: expected k >= 1"):
        itemknn_weights(x, 0)


def test_interaction_matrix_is_binary():
    x = interaction_matrix(np.array([0, 0, 1]), np.array([2, 2, 0]), 2, 3)
    np.testing.assert_array_equal(x, [[0, 0, 1], [1, 0, 0]])


@pytest.mark.parametrize("name, grid", [("ease", (0.5, 5.0, 50.0)), ("itemknn", (1, 3, 10))])
def test_tuning_picks_the_best_validation_value(ml_dir, name, grid):
    from otcl.pipelines.recsys.baselines import ITEM_ITEM, tune_item_item
    from otcl.pipelines.recsys.data import split
    from otcl.pipelines.recsys.metrics import rank_metrics
    from otcl.pipelines.sources.movielens import load_ratings

    s = split(load_ratings("ml-100k", ml_dir), seed=3, val_frac=0.3)
    model, value, scores = tune_item_item(name, s, grid=grid, metric="ndcg@5")
    v = s.validation()
    ref = {}
    for h in grid:  # each value fitted on the training pairs, ranked on the validation pairs
        m = ITEM_ITEM[name](s.train_user, s.train_item, s.n_users, s.n_items, h)
        ref[str(h)] = rank_metrics(
            m.scorer(),
            (v.test_user, v.test_item),
            (v.seen_user, v.seen_item),
            s.n_users,
            s.n_items,
            ks=(5,),
        )["ndcg@5"]
    assert scores == pytest.approx(ref)
    assert scores[str(value)] == max(scores.values())
    assert str(value) == next(h for h in scores if scores[h] == max(scores.values()))
    again = ITEM_ITEM[name](s.train_user, s.train_item, s.n_users, s.n_items, value)
    assert torch.equal(model.w, again.w)
    with pytest.raises(ValueError, match="baseline: expected one of ease, itemknn"):
        tune_item_item("knn", s)
