r"""Evaluation metrics: cross-modal retrieval (vectorised) and GMC's sentiment metrics.

**Retrieval.** Queries :math:`q_i` and gallery items :math:`g_j` (N each, row i of both is the
same sample) are compared by cosine similarity :math:`s_{ij}`. The rank of the true item is

.. math::

    r_i = \#\{j : s_{ij} \ge s_{ii}\} \quad (1 = \text{retrieved first}),

counting ties against the query (a collapsed representation ranks every item last, never first).
Reported: R@k = mean(:math:`r_i \le k`) for k = 1, 5, 10, the median rank (numpy's median, the
mean of the two middle ranks for even N) and the mean rank. Computed in row chunks of the N x N
similarity matrix, no Python loop over queries.

**Sentiment (CMU-MOSI/MOSEI, as GMC/MulT report):** MAE and Pearson correlation over every test
sample; binary accuracy and weighted F1 of ``pred > 0`` vs ``label > 0`` over the samples with a
non-zero label. (GMC's code calls ``f1_score(preds, truths)`` with the arguments swapped, which
weights the F1 by the predicted rather than the true class counts; otcl uses the true ones, as
scikit-learn intends.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "retrieval_ranks",
    "retrieval_metrics",
    "cross_modal_retrieval",
    "sentiment_metrics",
    "accuracy",
    "RETRIEVAL_KEYS",
]

RETRIEVAL_KS = (1, 5, 10)
RETRIEVAL_KEYS = ("R@1", "R@5", "R@10", "medR", "meanR")


def _check_pair(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    for name, t in (("queries", queries), ("gallery", gallery)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a float tensor (N, d), got {got}")
    if queries.shape != gallery.shape:
        raise ValueError(
            f"queries, gallery: expected the same shape (N, d) (row i of both is sample i), got "
            f"{tuple(queries.shape)} and {tuple(gallery.shape)}"
        )
    if queries.shape[0] < 1:
        raise ValueError("queries: expected at least one sample, got N=0")


@torch.no_grad()
def retrieval_ranks(
    queries: torch.Tensor, gallery: torch.Tensor, *, chunk: int = 1024
) -> torch.Tensor:
    """1-based rank (N,) of ``gallery[i]`` among all gallery items for query ``i`` (cosine).

    Args:
        queries: (N, d); gallery: (N, d), row i is the match of query i.
        chunk: queries per block of the similarity matrix (memory ``chunk x N``).
    Returns:
        int64 ranks in [1, N]; ties count against the query (see the module docstring).
    """
    _check_pair(queries, gallery)
    q = F.normalize(queries.float(), dim=1)
    g = F.normalize(gallery.float(), dim=1)
    ranks = []
    for s in range(0, q.shape[0], chunk):
        sim = q[s : s + chunk] @ g.T  # (c, N)
        rows = torch.arange(sim.shape[0], device=sim.device)
        pos = sim[rows, rows + s].unsqueeze(1)  # read from the same product: counted once
        ranks.append((sim >= pos).sum(1))
    return torch.cat(ranks)


def retrieval_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
    *,
    chunk: int = 1024,
) -> dict[str, float]:
    """``{"R@1", "R@5", "R@10" (fractions in [0, 1]), "medR", "meanR"}`` of query -> gallery."""
    r = retrieval_ranks(queries, gallery, chunk=chunk).double()
    out = {f"R@{k}": float((r <= k).double().mean()) for k in ks}
    out["medR"] = float(torch.quantile(r, 0.5))
    out["meanR"] = float(r.mean())
    return out


def cross_modal_retrieval(
    latents: Mapping[str, torch.Tensor], ks: Sequence[int] = RETRIEVAL_KS
) -> dict[str, dict[str, float]]:
    """Retrieval in both directions for every pair: ``{"a->b": metrics, "b->a": ...}``."""
    names = list(latents)
    if len(names) < 2:
        raise ValueError(f"latents: expected at least 2 modalities, got {names}")
    return {
        f"{a}->{b}": retrieval_metrics(latents[a], latents[b], ks)
        for a in names
        for b in names
        if a != b
    }


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``predictions == labels`` (both (N,) class ids)."""
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions, labels: expected the same shape, got {tuple(predictions.shape)} and "
            f"{tuple(labels.shape)}"
        )
    return float((predictions == labels).double().mean())


def _binary_weighted_f1(truth: torch.Tensor, pred: torch.Tensor) -> float:
    total, n = 0.0, truth.numel()
    for c in (False, True):
        tp = float(((pred == c) & (truth == c)).sum())
        fp = float(((pred == c) & (truth != c)).sum())
        fn = float(((pred != c) & (truth == c)).sum())
        support = tp + fn
        f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        total += f1 * support / n
    return total


def sentiment_metrics(predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """GMC's CMU-MOSEI metrics of real-valued sentiment predictions (see the module docstring).

    Args:
        predictions, labels: (N,) real values (labels in [-3, 3] for MOSI/MOSEI).
    Returns:
        ``{"mae", "corr", "acc2", "f1"}``; ``corr`` is NaN when either side is constant,
        ``acc2``/``f1`` are NaN when every label is 0.
    """
    p = predictions.detach().double().flatten()
    y = labels.detach().double().flatten()
    if p.shape != y.shape:
        raise ValueError(
            f"predictions, labels: expected the same number of values, got {p.numel()} and "
            f"{y.numel()}"
        )
    mae = float((p - y).abs().mean())
    pc, yc = p - p.mean(), y - y.mean()
    den = float(pc.norm() * yc.norm())
    corr = float((pc * yc).sum()) / den if den > 0 else float("nan")
    nz = y != 0
    if not bool(nz.any()):
        return {"mae": mae, "corr": corr, "acc2": float("nan"), "f1": float("nan")}
    bt, bp = y[nz] > 0, p[nz] > 0
    return {
        "mae": mae,
        "corr": corr,
        "acc2": float((bt == bp).double().mean()),
        "f1": _binary_weighted_f1(bt, bp),
    }
