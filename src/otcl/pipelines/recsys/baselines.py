"""Baselines without a training loop of their own: popularity and the ``implicit`` library.

* :class:`Popularity`: every user gets the items with the most positive training pairs.
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

from .data import Split

__all__ = ["Popularity", "fit_implicit", "implicit_available", "IMPLICIT_MODELS"]

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
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

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
