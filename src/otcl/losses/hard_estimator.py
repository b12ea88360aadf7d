r"""The estimator shared by ``dcl``, ``hcl`` and ``ot-hard``: :class:`HardNegativeLoss`.

The equation, its log-space evaluation and the three weightings are in the docstring of
:mod:`otcl.losses.hard_negatives`, the methods' file, which re-exports this class.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_bool, check_labels, check_nonneg, check_positive, flat_negatives
from ..ot.distributed import Shard, current_shard
from ..ot.geometry import LAYOUTS, SIMILARITIES, Geometry, pair_scores
from .contrastive import ContrastiveLoss, check_batch
from .divergences import row_mean
from .params import CROSS, choice, param

__all__ = ["HardNegativeLoss"]


def _check_tau_plus(name: str, tau_plus: float) -> float:
    v = check_nonneg(name, tau_plus)
    if v >= 1:
        raise ValueError(f"{name}: expected a class prior in [0, 1), got {tau_plus!r}")
    return v


def _row_normalise(log_w: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Log of row-normalised weights on the negatives (``-inf`` elsewhere, finite dummy rows)."""
    has = neg.any(-1, keepdim=True)
    lw = torch.where(neg, log_w, float("-inf"))
    lw = torch.where(has, lw, torch.zeros_like(lw))
    lw = torch.log_softmax(lw, dim=-1)  # one fused kernel each way (logsumexp + sub is five)
    return torch.where(neg, lw, torch.full_like(lw, float("-inf")))


class HardNegativeLoss(ContrastiveLoss):
    r"""Shared estimator of DCL / HCL / HCL-OT (see the module docstring for the equation).

    Subclasses define :meth:`log_weights`, the (n, m) log of the row-normalised weights of the
    negatives (``-inf`` off the negatives), as a function of the batch's geometry only (no state
    is kept between calls). With uniform weights this class is DCL.

    Args:
        temperature: t > 0; scores are similarity / t (0.5).
        tau_plus: positive-class prior :math:`\tau^+ \in [0, 1)` (debiasing; 0 = off).
        layout: ``"simclr"`` (all 2N views as anchors, negatives are the 2N - 2 other views) or
            ``"cross"`` (view-1 anchors against view-2 candidates, N - 1 negatives).
        similarity: ``"cosine"`` (default, as the official code) or ``"dot"``.
        symmetric: in the ``"cross"`` layout average both directions (as ``infonce``; True).
        check_inputs: refuse NaN/Inf embeddings and, for cosine similarity, zero rows (one
            host sync per call; True).
        gather_distributed: under ``torch.distributed``, the negatives (and ``ot-hard``'s
            coupling) of the global batch, each rank keeping its own anchors
            (:mod:`otcl.ot.distributed`); False: each rank's local batch.

    Call:
        ``loss(z1, z2, labels=None, target=None, *, negatives=None) -> scalar`` with ``z1``,
        ``z2`` (N, d). ``labels`` (N,) integer classes remove same-class samples from the
        negatives (the "unbiased" oracle of Chuang et al. 2020); the positive stays the other
        view, and ``tau_plus`` must then be 0. ``negatives`` (K, d) are extra candidates, always
        negatives. Custom ``target`` plans are not supported (ValueError).
    """

    temperature: float = param(default=0.5, check=check_positive, kw_only=False)
    tau_plus: float = param(default=0.0, check=_check_tau_plus)
    layout: str = param(default="simclr", check=choice(LAYOUTS))
    similarity: str = param(default="cosine", check=choice(SIMILARITIES))
    symmetric: bool = param(default=True, check=check_bool, applies=CROSS)
    check_inputs: bool = param(default=True, check=check_bool)
    gather_distributed: bool = param(default=False, check=check_bool)

    # -- parts -----------------------------------------------------------------------------
    def pair_geometry(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        negatives: torch.Tensor | None = None,
        shard: Shard | None = None,
    ) -> Geometry:
        """Similarities of the batch (float32 under autocast / half inputs), layout and masks."""
        geo = pair_scores(
            z1,
            z2,
            temperature=self.temperature,
            layout=self.layout,
            similarity_kind=self.similarity,
            negatives=negatives,
            shard=shard,
        )
        if geo.sim.dtype in (torch.float16, torch.bfloat16):
            sim = geo.sim.float()  # the estimator runs in float32
            geo = geo.replace(sim=sim, scores=sim / self.temperature)
        return geo

    def log_weights(self, geom: Geometry, neg: torch.Tensor) -> torch.Tensor:
        """(n, m) log of the row-normalised negative weights; uniform here (DCL)."""
        count = neg.sum(-1, keepdim=True).clamp_min(1).to(geom.sim.dtype)
        return torch.where(neg, -count.log(), torch.full_like(geom.sim, float("-inf")))

    def log_weight_pair(
        self,
        geom: Geometry,
        neg: torch.Tensor,
        rev: tuple[Geometry, torch.Tensor] | None,
        labels_given: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-weights of the first direction and, in the symmetric cross layout, of the
        second (``rev``: its geometry and negatives; rows = view-2 anchors, the square block),
        from one computation where possible."""
        log_w = self.log_weights(geom, neg)
        return log_w, (None if rev is None else self.log_weights(*rev))

    def _row_losses(
        self, logits: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, log_w: torch.Tensor
    ) -> torch.Tensor:
        """Per-anchor loss (n,) from the scores :math:`\\ell = s/t` (the geometry's: only
        negatives and positives are read, so its masked self-pairs do not matter), positives,
        negative mask and log-weights."""
        log_pos = logits.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
        count = neg.sum(-1).to(logits.dtype)
        has_neg = count > 0
        # log sum_j w_ij e^{l_ij}; rows without negatives get a finite dummy (masked below), so
        # that logsumexp over an all -inf row never produces NaN gradients.
        terms = torch.where(neg, log_w + logits, torch.full_like(logits, float("-inf")))
        terms = torch.where(has_neg.unsqueeze(-1), terms, torch.zeros_like(terms))
        log_count = torch.where(has_neg, count.clamp_min(1).log(), torch.zeros_like(count))
        log_ng0 = log_count + torch.logsumexp(terms, dim=-1)
        return self._row_tail(log_pos, log_count, has_neg, log_ng0)

    def _row_tail(
        self,
        log_pos: torch.Tensor,
        log_count: torch.Tensor,
        has_neg: torch.Tensor,
        log_ng0: torch.Tensor,
    ) -> torch.Tensor:
        r"""Per-anchor loss (n,) from the positive's score, log M (0 without negatives), which
        rows have negatives, and :math:`\log(M \sum_j w_{ij} e^{\ell_{ij}})`: debiasing, clamp."""
        t = self.temperature
        if self.tau_plus > 0:
            # log((e^{log_ng0} - tau M e^{log_pos}) / (1 - tau))
            #   = log_ng0 + log(1 - r) - log(1 - tau), r = tau M e^{log_pos} / e^{log_ng0} < 1;
            # elsewhere the clamp decides. The margin 1e-12 keeps the gradient of log(1 - r)
            # finite (no 0 * inf in the masked entries).
            log_r = math.log(self.tau_plus) + log_count + log_pos - log_ng0
            ok = log_r < -1e-12
            safe = torch.where(ok, log_r, torch.full_like(log_r, -1.0))
            log_deb = log_ng0 - math.log1p(-self.tau_plus) + torch.log(-torch.expm1(safe))
            log_ng = torch.where(ok, log_deb, torch.full_like(log_deb, float("-inf")))
        else:
            log_ng = log_ng0
        # the clamp N_g >= M e^{-1/t} (official code, always on)
        log_ng = torch.maximum(log_ng, log_count - 1.0 / t)
        log_ng = torch.where(has_neg, log_ng, torch.full_like(log_ng, float("-inf")))
        return torch.logaddexp(log_pos, log_ng) - log_pos

    def _check_call(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None,
        target: torch.Tensor | None,
        negatives: torch.Tensor | None,
        shard: Shard | None = None,
    ) -> None:
        check_batch(z1, z2, negatives, self.similarity, self.check_inputs, shard)
        if target is not None:
            raise ValueError(
                f"target: custom target plans are not supported by {type(self).__name__}; "
                "pass labels= to remove same-class negatives, got a target tensor"
            )
        if labels is not None:
            check_labels(labels, z1.shape[0])
            if self.tau_plus > 0:
                raise ValueError(
                    f"tau_plus: expected 0 when labels are given (labels remove the false "
                    f"negatives exactly; debiasing would correct twice), got {self.tau_plus}"
                )

    def _prepare(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None,
        negatives: torch.Tensor | None,
        reverse: bool = False,
    ) -> tuple[Geometry, torch.Tensor, tuple[Geometry, torch.Tensor] | None, torch.Tensor | None]:
        """The checked batch: its geometry and negatives, those of the reverse direction (the
        symmetric cross layout, when ``reverse``) and the (global) labels."""
        shard = current_shard() if self.gather_distributed else None
        self._check_call(z1, z2, labels, None, negatives, shard)
        negatives = flat_negatives(negatives)
        if shard is not None and labels is not None:
            labels = shard.gather_constant(labels)
        geo = self.pair_geometry(z1, z2, negatives, shard)
        rev = None
        if reverse and self.layout == "cross" and self.symmetric:
            g_rev = geo.transposed() if shard is None else self.pair_geometry(z2, z1, None, shard)
            rev = (g_rev, g_rev.negatives(labels))
        return geo, geo.negatives(labels), rev, labels

    # -- public ----------------------------------------------------------------------------
    def negative_weights(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-normalised weights of the negatives, for diagnostics.

        Returns:
            ``(weights, neg_mask)``: (n, m) weights (zero off the negatives, rows sum to 1) of
            the first direction, and the (n, m) bool mask of the negatives.
        """
        geo, neg, _, _ = self._prepare(z1, z2, labels, negatives)
        return self.log_weight_pair(geo, neg, None)[0].exp(), neg

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        *,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if target is not None:
            self._check_call(z1, z2, labels, target, negatives)  # the one-line error for target
        geo, neg, rev, _ = self._prepare(z1, z2, labels, negatives, reverse=True)
        log_w, log_w_t = self.log_weight_pair(geo, neg, rev, labels is not None)
        rows_total = None if geo.shard is None else geo.n_rows  # a rank's share of the mean
        loss = row_mean(self._row_losses(geo.scores, geo.pos, neg, log_w), rows_total)
        if rev is not None:
            g_rev, neg_t = rev
            assert log_w_t is not None  # log_weight_pair gives the second direction's with rev
            rows = self._row_losses(g_rev.scores, g_rev.pos, neg_t, log_w_t)
            loss = 0.5 * (loss + row_mean(rows, rows_total and g_rev.n_rows))
        return loss if geo.shard is None else geo.shard.total(loss)

    def extra_repr(self) -> str:
        keys = ["temperature", "tau_plus", "layout", "similarity"]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
