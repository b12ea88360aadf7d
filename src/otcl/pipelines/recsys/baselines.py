"""Baselines without a training loop of their own: popularity, EASE, ItemKNN and ``implicit``.

* :class:`Popularity`: every user gets the items with the most positive training pairs.
* :func:`fit_ease`: EASE (Steck, WWW 2019), the closed-form item-item model; :func:`fit_itemknn`:
  cosine item-item neighbours (Sarwar et al. 2001). Both need numpy alone; their one
  hyperparameter (EASE's L2 strength lambda, ItemKNN's k) is chosen on the validation pairs of
  the split (:func:`tune_baseline`).
* :func:`fit_implicit`: ``implicit``'s ALS (Hu, Koren, Volinsky 2008) or BPR (Rendle et al.
  2009), the reference most users reach for first (optional extra: ``pip install
  'otcl[recsys]'``). Absent, :func:`implicit_available` is False and the comparison table says so.

Matrix factorisation with BPR written in torch (``mf-bpr``) is a model of
:mod:`otcl.pipelines.recsys.models` trained by the recsys trainer, like CML.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import torch

from .config import RecsysConfig
from .data import Split, tail_items
from .metrics import rank_metrics

__all__ = [
    "Popularity",
    "fit_implicit",
    "implicit_available",
    "IMPLICIT_MODELS",
    "fit_ease",
    "fit_itemknn",
    "ease_weights",
    "itemknn_weights",
    "interaction_matrix",
    "ItemItem",
    "GRIDS",
    "ITEM_ITEM",
    "tune_item_item",
    "score_metrics",
]

IMPLICIT_MODELS = ("als", "bpr")


class Popularity:
    """Scores = number of positive training pairs of each item (the same for every user)."""

    def __init__(self, split: Split) -> None:
        self.counts: torch.Tensor = torch.from_numpy(
            np.bincount(split.train_item, minlength=split.n_items).astype(np.float32)
        )

    def scorer(self, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        c = self.counts.to(device)
        return lambda users: c.unsqueeze(0).expand(users.shape[0], -1)


def interaction_matrix(
    user: np.ndarray, item: np.ndarray, n_users: int, n_items: int
) -> np.ndarray:
    """(n_users, n_items) float64 binary matrix X with X[u, i] = 1 for every pair (u, i)."""
    x = np.zeros((n_users, n_items), dtype=np.float64)
    x[np.asarray(user, dtype=np.int64), np.asarray(item, dtype=np.int64)] = 1.0
    return x


def ease_weights(x: np.ndarray, lam: float) -> np.ndarray:
    r"""EASE's item-item weights (Steck, WWW 2019), (n_items, n_items), float64.

    .. math::

        P = (X^\top X + \lambda I)^{-1},\qquad B = I - P\,\mathrm{diag}(1/\mathrm{diag}(P)),

    i.e. :math:`B_{ij} = -P_{ij}/P_{jj}` off the diagonal and :math:`B_{jj} = 0`: the ridge
    regression of every item's column on the others, with the constraint diag(B) = 0. Scores
    are :math:`X B`.

    Args:
        x: (n_users, n_items) binary interactions (the positive training pairs).
        lam: L2 strength lambda > 0.
    """
    if not lam > 0:
        raise ValueError(f"ease: expected lambda > 0, got {lam!r}")
    g = x.T @ x
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


def itemknn_weights(x: np.ndarray, k: int) -> np.ndarray:
    r"""Cosine item-item neighbours, (n_items, n_items), float64.

    :math:`S_{ij} = x_i^\top x_j / (\|x_i\| \|x_j\|)` over the item columns of X (0 for an
    item without interactions), :math:`S_{jj} = 0`; column j keeps only its ``k`` largest
    entries (the k nearest neighbours of item j; ties: the smaller item index first), the rest
    are 0. Scores are :math:`X W`: :math:`\mathrm{score}(u, j) = \sum_{i \in I_u} W_{ij}`.

    Args:
        x: (n_users, n_items) binary interactions.
        k: neighbours kept per item, >= 1.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"itemknn: expected k >= 1, got {k!r}")
    g = x.T @ x
    norm = np.sqrt(np.diag(g))
    safe = np.where(norm > 0, norm, 1.0)
    s = g / safe[:, None] / safe[None, :]
    s[np.diag_indices_from(s)] = 0.0
    n = s.shape[0]
    k = min(int(k), n - 1)
    order = np.argsort(-s, axis=0, kind="stable")  # per column: most similar first
    w = np.zeros_like(s)
    rows = order[:k]
    cols = np.broadcast_to(np.arange(n), rows.shape)
    w[rows, cols] = s[rows, cols]
    return w


class ItemItem:
    """An item-item model: scores = X[users] @ W (float32 on the scoring device).

    Args:
        x: (n_users, n_items) interactions; w: (n_items, n_items) weights.
    """

    def __init__(self, x: np.ndarray, w: np.ndarray) -> None:
        self.x: torch.Tensor = torch.from_numpy(x.astype(np.float32))
        self.w: torch.Tensor = torch.from_numpy(w.astype(np.float32))

    def scorer(self, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        x, w = self.x.to(device), self.w.to(device)
        return lambda users: x[users] @ w


#: the validation grids of the item-item baselines: EASE's lambda, ItemKNN's k
GRIDS: dict[str, tuple[float, ...]] = {
    "ease": (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0),
    "itemknn": (10, 20, 50, 100, 200, 400, 800),
}


def fit_ease(
    user: np.ndarray, item: np.ndarray, n_users: int, n_items: int, lam: float
) -> ItemItem:
    """EASE fitted on the pairs ``(user, item)`` (:func:`ease_weights`)."""
    x = interaction_matrix(user, item, n_users, n_items)
    return ItemItem(x, ease_weights(x, lam))


def fit_itemknn(user: np.ndarray, item: np.ndarray, n_users: int, n_items: int, k: int) -> ItemItem:
    """Cosine ItemKNN fitted on the pairs ``(user, item)`` (:func:`itemknn_weights`)."""
    x = interaction_matrix(user, item, n_users, n_items)
    return ItemItem(x, itemknn_weights(x, int(k)))


#: the item-item baselines: name -> fit function
ITEM_ITEM: dict[str, Callable[..., ItemItem]] = {"ease": fit_ease, "itemknn": fit_itemknn}


def tune_item_item(
    name: str,
    s: Split,
    *,
    metric: str = "ndcg@10",
    grid: tuple[float, ...] | None = None,
    users: str = "positive",
    block: int = 1024,
) -> tuple[ItemItem, float, dict[str, float]]:
    """Fit ``ease`` or ``itemknn`` on the training pairs of ``s`` for every value of the grid
    (:data:`GRIDS`), rank the validation pairs (:meth:`Split.validation`) and keep the value of
    the best ``metric`` (the first on a tie).

    Returns:
        ``(model, value, {str(value): validation metric})``: the model of the chosen value,
        fitted on the training pairs (the validation pairs are not added back, as for the
        trained models).
    """
    if name not in ITEM_ITEM:
        raise ValueError(f"baseline: expected one of {', '.join(ITEM_ITEM)}, got {name!r}")
    fit = ITEM_ITEM[name]
    v = s.validation()
    k = int(metric.partition("@")[2])
    best: tuple[ItemItem, float, float] | None = None
    scores: dict[str, float] = {}
    for h in grid or GRIDS[name]:
        model = fit(s.train_user, s.train_item, s.n_users, s.n_items, h)
        res = rank_metrics(
            model.scorer(),
            (v.test_user, v.test_item),
            (v.seen_user, v.seen_item),
            v.n_users,
            v.n_items,
            ks=(k,),
            users=users,
            eval_users=v.test_users,
            candidates=v.warm_items,
            block=block,
        )
        scores[str(h)] = res[metric]
        if best is None or res[metric] > best[2]:
            best = (model, h, res[metric])
    assert best is not None
    return best[0], best[1], scores


def implicit_available() -> bool:
    """Whether the optional ``implicit`` package is installed."""
    return importlib.util.find_spec("implicit") is not None


def fit_implicit(
    kind: str,
    split: Split,
    *,
    factors: int = 64,
    iterations: int | None = None,
    seed: int = 0,
    threads: int = 0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit ``implicit``'s ALS or BPR on the positive training pairs; returns a scorer.

    Args:
        kind: ``als`` or ``bpr``.
        factors: latent dimension.
        iterations: ALS sweeps (default 15) or BPR epochs (default 100), ``implicit``'s defaults.
        seed: ``random_state``.
        threads: ``num_threads`` (0 = all cores).
    Returns:
        ``score_fn(users) -> (b, n_items)`` dot-product scores.
    """
    if kind not in IMPLICIT_MODELS:
        raise ValueError(f"implicit: expected one of {', '.join(IMPLICIT_MODELS)}, got {kind!r}")
    if not implicit_available():
        raise ValueError(
            "implicit: the optional package is not installed (pip install 'otcl[recsys]')"
        )
    import scipy.sparse as sp

    # the optional extra otcl[recsys]; not installed where the types are checked
    from implicit.cpu.als import AlternatingLeastSquares  # pyright: ignore[reportMissingImports]
    from implicit.cpu.bpr import BayesianPersonalizedRanking  # pyright: ignore[reportMissingImports]

    ui = sp.csr_matrix(
        (np.ones(len(split.train_user), dtype=np.float32), (split.train_user, split.train_item)),
        shape=(split.n_users, split.n_items),
    )
    ui.sum_duplicates()
    ui.data[:] = 1.0
    from threadpoolctl import threadpool_limits

    # implicit runs its own threads; a second BLAS pool would oversubscribe the cores
    with threadpool_limits(1, "blas"):
        if kind == "als":
            model = AlternatingLeastSquares(
                factors=factors, iterations=iterations or 15, random_state=seed, num_threads=threads
            )
        else:
            model = BayesianPersonalizedRanking(
                factors=factors,
                iterations=iterations or 100,
                random_state=seed,
                num_threads=threads,
            )
        model.fit(ui, show_progress=False)
    u = torch.from_numpy(np.ascontiguousarray(model.user_factors, dtype=np.float32))
    v = torch.from_numpy(np.ascontiguousarray(model.item_factors, dtype=np.float32))

    def score(users: torch.Tensor) -> torch.Tensor:
        return u.to(users.device)[users] @ v.to(users.device).transpose(0, 1)

    return score


def score_metrics(
    score: Callable[[torch.Tensor], torch.Tensor],
    s: Split,
    cfg: RecsysConfig,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The ``warm/...`` and ``tail/...`` test metrics of a scorer without a model (baselines)."""
    e = cfg.eval
    common = {
        "ks": tuple(int(k) for k in e.ks),
        "block": e.block,
        "device": device,
        "candidates": s.warm_items,
    }
    exclude = (s.seen_user, s.seen_item)
    out = {
        f"warm/{k}": v
        for k, v in rank_metrics(
            score,
            (s.test_user, s.test_item),
            exclude,
            s.n_users,
            s.n_items,
            users=e.users,
            eval_users=s.test_users,
            **common,
        ).items()
    }
    is_tail = tail_items(s)[s.test_item]
    if is_tail.any():
        rel = (s.test_user[is_tail], s.test_item[is_tail])
        res = rank_metrics(score, rel, exclude, s.n_users, s.n_items, **common)
        out.update({f"tail/{k}": v for k, v in res.items()})
    return out
