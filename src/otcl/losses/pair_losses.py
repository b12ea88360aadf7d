r"""Margin losses on pairs of embeddings: the hinge terms DMM adds on its mixed anchors.

Both take anchors :math:`a` (B, d), their positives :math:`b` (B, d) (row i is the positive of
anchor i), a margin :math:`m \ge 0` and, optionally, sampled negatives: (K, d) shared by every
anchor or (B, K, d) one set per anchor.

* :func:`vse_hinge` -- the VSE-style hinge summed over all negatives, on cosines (COOT, GMC);
* :func:`min_triplet` -- CML's min-triplet hinge on Euclidean distances (PyTorchCML's
  ``MinTripletLoss``, DMM's recommender).

:data:`PAIR_LOSSES` maps the names DMM accepts (``pair_loss=``) to them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ot.distributed import Shard
from ..ot.geometry import unit_rows
from .divergences import row_mean

__all__ = ["PAIR_LOSSES", "min_triplet", "vse_hinge"]


def _own(anchors: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """The global index of each anchor (this rank's share when sharded)."""
    own = torch.arange(anchors.shape[0], device=anchors.device)
    return own if shard is None else own + shard.rank * anchors.shape[0]


def _negatives_of(
    anchors: torch.Tensor, negatives: torch.Tensor | None, name: str = "negatives"
) -> torch.Tensor | None:
    """``negatives`` as (B, K, d) (a shared (K, d) set is broadcast), checked against anchors."""
    if negatives is None:
        return None
    b, d = anchors.shape
    if negatives.dim() == 2 and negatives.shape[1] == d:
        return negatives.unsqueeze(0).expand(b, -1, -1)
    if negatives.dim() == 3 and negatives.shape[0] == b and negatives.shape[2] == d:
        return negatives
    raise ValueError(
        f"{name}: expected shape (K, {d}) (shared) or ({b}, K, {d}) (per anchor), "
        f"got {tuple(negatives.shape)}"
    )


def vse_hinge(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    margin: float,
    negatives: torch.Tensor | None = None,
    shard: Shard | None = None,
) -> torch.Tensor:
    r"""VSE-style hinge summed over all negatives (COOT / GMC ``ContrastiveLoss``).

    With :math:`S_{ij} = \cos(a_i, b_j)` and, for sampled negatives, :math:`S^-_{ik} =
    \cos(a_i, n_{ik})`:

    .. math::

        L = \frac{1}{B(B+K)}\Big(\sum_{i \ne j} [m + S_{ij} - S_{ii}]_+ + [m + S_{ij} - S_{jj}]_+
            + \sum_{i,k} [m + S^-_{ik} - S_{ii}]_+\Big),

    i.e. :math:`\frac{1}{B^2}\sum_{i\ne j}(\dots)` without sampled negatives (K = 0).

    Args:
        anchors: (B, d). positives: (B, d), row i is the positive of anchor i.
        margin: m >= 0.
        negatives: optional (K, d) or (B, K, d) sampled negatives of the anchors.
        shard: this rank's share of a global batch (``gather_distributed``): the anchors and
            positives are this rank's, the sums run over the global batch, and the result is
            this rank's share of the global value (:mod:`otcl.ot.distributed`).
    Returns:
        scalar.
    """
    if shard is not None and negatives is not None and negatives.dim() == 2:
        negatives = shard.gather(negatives)  # shared negatives: every rank's
    neg = _negatives_of(anchors, negatives)
    own = _own(anchors, shard)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    a = unit_rows(anchors)
    b = unit_rows(positives if shard is None else shard.gather(positives))
    s = a @ b.transpose(0, 1)  # (own anchors, all positives)
    diag = s[rows, own]
    diag_all = diag if shard is None else shard.gather(diag)
    off = torch.ones_like(s, dtype=torch.bool)
    off[rows, own] = False
    cost_s = torch.relu(margin + s - diag.unsqueeze(1)) * off
    cost_im = torch.relu(margin + s - diag_all.unsqueeze(0)) * off
    total = cost_s.sum() + cost_im.sum()
    k = 0
    if neg is not None:
        k = neg.shape[1]
        s_neg = torch.einsum("bd,bkd->bk", a, unit_rows(neg.to(a.dtype)))
        total = total + torch.relu(margin + s_neg - diag.unsqueeze(1)).sum()
    return total / (s.shape[1] * (s.shape[1] + k))


def min_triplet(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    margin: float,
    negatives: torch.Tensor | None = None,
    shard: Shard | None = None,
) -> torch.Tensor:
    r"""CML's min-triplet hinge on plain (not squared) Euclidean distances.

    .. math::

        L = \frac1B\sum_i \big[m + d(a_i, b_i) - \min_{k} d(a_i, n_{ik})\big]_+ ,

    with the anchor's sampled negatives :math:`n_{ik}` (``negatives``: (B, K, d) per anchor, as
    PyTorchCML's ``MinTripletLoss`` with K = 10, or (K, d) shared), or, without them, the other
    positives of the batch :math:`n_{i\cdot} = \{b_j\}_{j \ne i}` (in-batch negatives).

    Args:
        anchors: (B, d). positives: (B, d).
        margin: m >= 0.
        negatives: optional (K, d) or (B, K, d).
        shard: this rank's share of a global batch (see :func:`vse_hinge`).
    Returns:
        scalar.
    """
    if shard is not None and negatives is not None and negatives.dim() == 2:
        negatives = shard.gather(negatives)
    d_pos = (anchors - positives).norm(dim=-1)
    neg = _negatives_of(anchors, negatives)
    if neg is None:
        d = torch.cdist(anchors, positives if shard is None else shard.gather(positives))
        cols = torch.arange(d.shape[1], device=d.device)
        own = cols.unsqueeze(0) == _own(anchors, shard).unsqueeze(1)  # the anchor's positive
        hardest = d.masked_fill(own, float("inf")).min(dim=-1).values
    else:
        hardest = (anchors.unsqueeze(1) - neg.to(anchors.dtype)).norm(dim=-1).min(dim=-1).values
    total = None if shard is None else anchors.shape[0] * shard.world
    return row_mean(torch.relu(margin + d_pos - hardest), total)


#: ``pair_loss=`` name -> ``(anchors, positives, margin, negatives=None, shard=None) -> scalar``
PAIR_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "hinge": vse_hinge,
    "triplet": min_triplet,
}
