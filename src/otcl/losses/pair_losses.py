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
import torch.nn.functional as F

__all__ = ["PAIR_LOSSES", "min_triplet", "vse_hinge"]


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
    Returns:
        scalar.
    """
    a, b = F.normalize(anchors, dim=-1), F.normalize(positives, dim=-1)
    s = a @ b.transpose(0, 1)
    diag = s.diagonal()
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    cost_s = torch.relu(margin + s - diag.unsqueeze(1)) * off
    cost_im = torch.relu(margin + s - diag.unsqueeze(0)) * off
    total = cost_s.sum() + cost_im.sum()
    neg = _negatives_of(anchors, negatives)
    k = 0
    if neg is not None:
        k = neg.shape[1]
        s_neg = torch.einsum("bd,bkd->bk", a, F.normalize(neg.to(a.dtype), dim=-1))
        total = total + torch.relu(margin + s_neg - diag.unsqueeze(1)).sum()
    return total / (s.shape[0] * (s.shape[1] + k))


def min_triplet(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    margin: float,
    negatives: torch.Tensor | None = None,
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
    Returns:
        scalar.
    """
    d_pos = (anchors - positives).norm(dim=-1)
    neg = _negatives_of(anchors, negatives)
    if neg is None:
        d = torch.cdist(anchors, positives)
        eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
        hardest = d.masked_fill(eye, float("inf")).min(dim=-1).values
    else:
        hardest = (anchors.unsqueeze(1) - neg.to(anchors.dtype)).norm(dim=-1).min(dim=-1).values
    return torch.relu(margin + d_pos - hardest).mean()


#: ``pair_loss=`` name -> function ``(anchors, positives, margin, negatives=None) -> scalar``
PAIR_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "hinge": vse_hinge,
    "triplet": min_triplet,
}
