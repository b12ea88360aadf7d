r"""The recommendation models' own losses: CML's min-triplet hinge and MF's BPR.

The two-tower trains with any otcl loss (:mod:`otcl.losses`); CML and MF train with these
(:mod:`.objective` picks the loss of a model kind). :class:`CMLTripletLoss` is an otcl loss
module, so that DMM can wrap it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...losses.contrastive import ContrastiveLoss
from ...losses.pair_losses import min_triplet
from ...ot.distributed import current_shard

__all__ = ["CMLTripletLoss", "bpr_loss"]


class CMLTripletLoss(ContrastiveLoss):
    r"""CML's min-triplet hinge with K sampled negatives per positive (PyTorchCML ``MinTripletLoss``).

    .. math::

        L = \frac1B \sum_i \big[m + d(u_i, v^+_i) - \min_k d(u_i, v^-_{i,k})\big]_+ ,

    with :math:`d` the plain (not squared) Euclidean distance: the library's
    :func:`otcl.losses.pair_losses.min_triplet` (DMM's triplet pair loss) on per-user sampled
    negatives, as a loss module that DMM can wrap.

    Args:
        margin: m >= 0 (official: 1.5).
        gather_distributed: under ``torch.distributed`` with several ranks, return the mean over
            the global batch (each pair's hinge is its own: nothing is gathered) and
            back-propagate this rank's share, as every otcl loss with this flag; DMM wrapping it
            then mixes over the global batch too.

    Call:
        ``loss(z1, z2, negatives=neg)`` with users ``z1`` (B, d), their positives ``z2`` (B, d)
        and ``negatives`` sampled for each user (excluding its training positives): (B, K, d)
        (:class:`otcl.losses.DMM` hands them to its base loss as given).
    """

    defaults: ClassVar[Mapping[str, Any]] = {"margin": 1.5, "gather_distributed": False}

    def __init__(self, margin: float = 1.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin: expected a number >= 0, got {margin!r}")
        self.margin: float = float(margin)
        self.gather_distributed: bool = bool(gather_distributed)

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        *,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if labels is not None or target is not None:
            raise ValueError("labels/target: CMLTripletLoss takes neither (users vs items)")
        if negatives is None:
            raise ValueError("negatives: CMLTripletLoss needs (B, K, d) sampled negatives")
        if z1.shape != z2.shape or z1.dim() != 2:
            raise ValueError(
                f"z1, z2: expected two (B, d) tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}"
            )
        b, d = z1.shape
        if negatives.dim() != 3 or negatives.shape[0] != b or negatives.shape[2] != d:
            raise ValueError(
                f"negatives: expected shape ({b}, K, {d}), got {tuple(negatives.shape)}"
            )
        shard = current_shard() if self.gather_distributed else None
        share = min_triplet(z1, z2, self.margin, negatives, shard)
        return share if shard is None else shard.total(share)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    r"""BPR: :math:`\mathrm{mean}\ \mathrm{softplus}(s^- - s^+)` (scores (B,) or (B, K))."""
    if neg.dim() == pos.dim() + 1:
        pos = pos.unsqueeze(-1)
    return F.softplus(neg - pos).mean()
