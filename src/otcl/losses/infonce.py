r"""InfoNCE / NT-Xent (Oord et al., 2018; Chen et al., SimCLR, 2020).

In the OT view (Shi et al., ICML 2023; Chen et al., NeurIPS 2024) InfoNCE is the coupling
with the **row constraint only**: its plan is the closed-form row softmax
:math:`P_{ij} = a_i\,\mathrm{softmax}_j(s_{ij}/\varepsilon)`, and the loss is
:math:`\mathrm{KL}(I \,\|\, P)`:

.. math::

    \mathcal L = -\frac1n \sum_i \log
        \frac{\exp(s_{i,p(i)}/\varepsilon)}{\sum_{j \ne i} \exp(s_{ij}/\varepsilon)} ,

with :math:`p(i) = i \pm N` in the ``simclr`` layout (self-pair excluded: NT-Xent) and
:math:`p(i) = i` in the ``cross`` layout (averaged over both directions: CLIP).
"""

from __future__ import annotations

import torch

from ..ot.geometry import Geometry
from . import divergences
from .base import OTContrastiveLoss
from .registry import register

__all__ = ["InfoNCE"]


@register("infonce")
class InfoNCE(OTContrastiveLoss):
    r"""InfoNCE / NT-Xent (Oord et al., 2018; Chen et al., SimCLR, ICML 2020).

    The row-constrained (semi-relaxed) coupling :math:`P_{ij} = a_i\,\mathrm{softmax}_j
    (s_{ij}/\varepsilon)` with the KL divergence to the identity target:

    .. math::

        \mathcal L = -\frac1n \sum_i \log
            \frac{e^{s_{i,p(i)}/\varepsilon}}{\sum_{j \ne i} e^{s_{ij}/\varepsilon}}

    (NT-Xent in the ``simclr`` layout; the ``cross`` layout averages both directions, as CLIP).

    Defaults: ``temperature=0.5`` (SimCLR on CIFAR, lightly's default), ``layout="simclr"``;
    the other parameters are :class:`~otcl.losses.OTContrastiveLoss`'s.
    The identity-target path is a single fused cross-entropy on the scores; it equals the
    generic coupling path (tested).
    """

    def direction_loss(
        self,
        geom: Geometry,
        target: torch.Tensor | None,
        pos: torch.Tensor | None,
        weights: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        # row-constrained, marginal weights only scale each row's mass: the scores (which hold
        # their logarithms) are all the row softmax needs
        if (
            self.constraint == "rows"
            and self.divergence == "ce"
            and type(self).extra_terms is OTContrastiveLoss.extra_terms
        ):
            scores = geom.scores
            logits = scores if scores.dtype == torch.float64 else scores.float()
            rows_total = None if geom.shard is None else geom.n_rows  # a rank's share
            return divergences.cross_entropy(logits, target, pos, rows_total)
        return super().direction_loss(geom, target, pos, weights)
