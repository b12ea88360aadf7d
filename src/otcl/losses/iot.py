r"""IOT-CL: contrastive learning as inverse optimal transport.

Shi, Zhang, Zhen, Fan, Yan, "Understanding and Generalizing Contrastive Learning from the
Inverse Optimal Transport Perspective", ICML 2023.

The loss is the outer problem of a bilevel (min-min) inverse-OT problem:

.. math::

    \min_\theta \mathrm{KL}(\tilde P \,\|\, P^\theta),\qquad
    P^\theta = \arg\min_{P \in U} \langle C^\theta, P\rangle - \varepsilon H(P),
    \qquad C_{ij} = 1 - \cos(z_i, z_j),

with :math:`\tilde P` the identity matching. The constraint set :math:`U` gives the family:
``relax="none"`` -> :math:`U(a,b)` (balanced Sinkhorn, ``iot``); ``relax="row"`` ->
:math:`U(a)` (exactly InfoNCE); ``relax="both"`` -> total mass only (one batch partition
function). ``iot-uni`` adds the uniformity penalty from soft matching:

.. math::

    \mathcal L_{uni} = \mathrm{KL}(\bar Q \,\|\, P) = \sum_{(i,j)\in\mathcal N} m\,(\log m - \log P_{ij}),
    \qquad m = \mathrm{mean}_{(i,j)\in\mathcal N} P_{ij},

over the negatives :math:`\mathcal N` (not self, not positive) of the plan normalised to total
mass 1; :math:`\mathcal L = \mathcal L_{IOT} + \lambda_p \mathcal L_{uni}` (``lam_uni=0.2``).

Differences from the public port (nerdslab/gca ``iot``/``iot_uni``), all deliberate:
positives come from the layout (the port reads ``diag(+-N)`` on interleaved CIFAR batches:
wrong positives); the uniformity mean excludes positives (the CIFAR port includes them);
self-pairs are masked (the port sets them to the max cost: ``self_pair="max_cost"`` restores it);
KL reduction is per row ("batchmean"; the CIFAR port uses "mean" over all entries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .._validation import check_choice, check_nonneg
from ..ot.sinkhorn import SinkhornOutput
from .base import OTContrastiveLoss
from .divergences import RowView
from .registry import register

__all__ = ["IOT", "IOTUniformity", "uniformity_penalty"]

_RELAX = {"none": "balanced", "row": "rows", "both": "mass"}


class _Uniformity(torch.autograd.Function):
    r""":func:`uniformity_penalty` in one exp pass, with a closed-form backward.

    With :math:`L = \mathrm{LSE}(\log P)`, :math:`L_- = \mathrm{LSE}_{\mathcal N}(\log P)`,
    :math:`\Sigma = \sum_{\mathcal N} \log P` and :math:`c = |\mathcal N|`:
    :math:`\log m = L_- - L - \log c` and the penalty is
    :math:`e^{\log m}\,(c\log m - \Sigma + cL)`. Autograd through the formula keeps several
    n x m temporaries and takes three exp passes; here one :math:`E = e^{\log P - \max}`
    gives :math:`L`, :math:`L_-` and the gradient
    :math:`E\,(k_1 1_{\mathcal N} + k_2) + k_3 1_{\mathcal N}`.
    """

    @staticmethod
    def forward(ctx, log_plan, negatives, detach_mean):
        lp = log_plan.detach()
        # float 0/1 weights: masked sums by multiplication (bool-float ops convert per pass)
        w = negatives.to(lp.dtype)
        count = torch.count_nonzero(negatives).to(lp.dtype)
        top = lp.amax()
        shifted = lp - top
        E = shifted.exp()
        total = E.sum()
        # sum of log P over the negatives, centred at the max (smaller rounding error);
        # -inf entries (never negatives) -> 0 so that 0 * entry stays 0
        neg_sum = shifted.nan_to_num_(neginf=0.0).mul_(w).sum()
        neg_mass = torch.mul(E, w, out=shifted).sum()  # reuses the buffer
        del shifted
        log_m = neg_mass.log() - total.log() - count.log()
        mean = log_m.exp()
        bracket = count * log_m - neg_sum + count * total.log()
        ctx.save_for_backward(E, w, total, neg_mass, count, mean, bracket)
        ctx.detach_mean = detach_mean
        return mean * bracket

    @staticmethod
    def backward(ctx, grad):
        E, w, total, neg_mass, count, mean, bracket = ctx.saved_tensors
        # d/dlogP of log L: E / total; of L_-: 1_N E / neg_mass; of Sigma: 1_N
        k2 = mean * count / total
        k1 = torch.zeros_like(k2)
        if not ctx.detach_mean:  # d log_m = dL_- - dL, times d pen / d log_m = mean (B + c)
            c = mean * (bracket + count)
            k1 = c / neg_mass
            k2 = k2 - c / total
        k1, k2, k3 = grad * k1, grad * k2, -grad * mean
        out = torch.addcmul(k2, w, k1).mul_(E)  # E (k1 1_N + k2)
        return out.addcmul_(w, k3), None, None  # + k3 1_N


def uniformity_penalty(
    log_plan: torch.Tensor, negatives: torch.Tensor, *, detach_mean: bool = False
) -> torch.Tensor:
    r"""IOT's uniformity term :math:`\mathrm{KL}(\bar Q\|P)` over the ``negatives`` mask.

    Args:
        log_plan: (n, m) log P; normalised to total mass 1 inside.
        negatives: (n, m) bool, True on negative pairs (finite entries of ``log_plan``).
        detach_mean: treat the mean negative mass m as a constant.
    Returns:
        scalar >= 0, zero iff every negative entry is equal.
    """
    return _Uniformity.apply(log_plan, negatives, bool(detach_mean))


def _uniformity_reference(
    log_plan: torch.Tensor, negatives: torch.Tensor, *, detach_mean: bool = False
) -> torch.Tensor:
    """:func:`uniformity_penalty` by autograd through the formula (the reference, for tests)."""
    log_p = log_plan - torch.logsumexp(log_plan.flatten(), dim=0)
    count = negatives.sum().to(log_p.dtype)
    log_neg = torch.where(negatives, log_p, torch.zeros_like(log_p))
    log_m = torch.logsumexp(log_p.masked_fill(~negatives, float("-inf")).flatten(), 0) - count.log()
    if detach_mean:
        log_m = log_m.detach()
    return log_m.exp() * (count * log_m - log_neg.sum())


def _uniformity_from_potentials(
    out: SinkhornOutput, pos: torch.Tensor, rows: RowView, simclr: bool, detach_mean: bool
) -> torch.Tensor:
    r""":func:`uniformity_penalty` of the plan :math:`\log P = f + S + g` with the identity target,
    from the potentials and :math:`\mathrm{row\_lse}_i = \mathrm{LSE}_j(S_{ij}+g_j)`, without
    forming the plan.

    The negatives are the finite entries minus the O(n) excluded ones X (positives, and the
    diagonal in the simclr layout), so with :math:`L = \mathrm{LSE}_i(f_i + \mathrm{row\_lse}_i)`
    (log total mass), the relative negative mass is :math:`1 - \sum_X e^{\log P - L}` and
    :math:`\sum_{\mathcal N}\log P = \sum_i d_i f_i + \sum_j d'_j g_j + \sum_{\mathcal N} S`
    (:math:`d, d'` the negatives per row / column): one masked sum over S (and its constant
    gradient) instead of the plan, its exp and their gradients. Scalars in float64.
    """
    S, f, g, lse = out.scores, out.f, out.g, rows.lse
    n, m = S.shape
    dev, wide = S.device, torch.float64
    finite = S.detach() > float("-inf")
    deg_r = finite.sum(-1, dtype=torch.int32).to(wide)  # finite entries per row / column,
    deg_c = finite.sum(-2, dtype=torch.int32).to(wide)  # minus the excluded ones below
    f64, g64 = f.to(wide), g.to(wide)
    # excluded entries X: (row, col, S + g at the entry); positives share the divergence's gather
    log_pos = rows.log_pos  # S_ip + g_p, shared with the divergence
    ex = [(torch.arange(n, device=dev), pos, log_pos.to(wide), log_pos - g[pos])]
    if simclr:  # self-pairs are never negatives; only finite (unmasked) ones carry mass
        diag = torch.arange(min(n, m), device=dev)
        if bool(finite[diag, diag].any()):
            s_d = S.diagonal()
            ex.append((diag, diag, s_d.to(wide) + g64[diag], s_d))
    ex_share = S.new_zeros((), dtype=wide)
    s_ex_sum = S.new_zeros((), dtype=wide)
    for r, c, lkv, s_val in ex:
        keep = finite[r, c]
        keep_w = keep.to(wide)
        deg_r.index_add_(0, r, -keep_w)
        deg_c.index_add_(0, c, -keep_w)
        lp = torch.where(keep, f64[r] + lkv, torch.zeros_like(lkv))
        ex_share = ex_share + (lp.exp() * keep_w).sum()
        s_ex_sum = s_ex_sum + torch.where(keep, s_val, torch.zeros_like(s_val)).to(wide).sum()
    count = deg_r.sum()
    log_total = torch.logsumexp(f64 + lse.to(wide), dim=0)
    ex_share = ex_share * (-log_total).exp()  # excluded share of the total mass
    neg_s = _MaskedSum.apply(S, finite).to(wide) - s_ex_sum
    neg_lp = (deg_r * f64).sum() + (deg_c * g64).sum() + neg_s  # sum of log P over negatives
    log_m = torch.log1p(-ex_share) - count.log()
    if detach_mean:
        log_m = log_m.detach()
    return (log_m.exp() * (count * log_m - neg_lp + count * log_total)).to(S.dtype)


class _MaskedSum(torch.autograd.Function):
    """Sum of ``x`` over ``mask`` (entries outside may be -inf); gradient ``mask * grad``."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return torch.where(mask, x, 0.0).sum()

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, 0.0), None


@register("iot")
class IOT(OTContrastiveLoss):
    r"""IOT-CL loss (Shi, Zhang, Zhen, Fan, Yan, ICML 2023): KL(identity || balanced plan).

    .. math::

        \mathcal L = \mathrm{KL}(\tilde P \,\|\, P^\theta)
            = -\frac1n \sum_i \log \hat P^\theta_{i,p(i)},\qquad
        P^\theta = \arg\min_{P \in U(a, b)} \langle C, P\rangle - \varepsilon H(P),

    :math:`C = 1 - \cos`, :math:`\hat P` the row-normalised plan (``iters`` unrolled Sinkhorn
    iterations).

    Defaults from the public port: ``temperature=0.5``, ``iters=10``, cost 1 - cos.
    ``relax`` picks the constraint set: ``"none"`` (balanced, default), ``"row"`` (= InfoNCE),
    ``"both"`` (total mass); ``constraint`` itself is therefore not a parameter of ``iot``.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        **OTContrastiveLoss.defaults,
        "constraint": "balanced",
        "relax": "none",
    }

    def __init__(
        self, temperature: float | None = None, *, relax: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(temperature, relax=relax, **kwargs)

    @classmethod
    def derive(cls, settings: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        relax = check_choice("relax", settings["relax"], tuple(_RELAX))
        return {**settings, "constraint": _RELAX[relax]}

    @classmethod
    def inapplicable(cls, name: str, settings: Mapping[str, Any]) -> str | None:
        if name == "constraint":
            return (
                f"{cls.loss_name()} picks its constraint with relax='none' (balanced), 'row' "
                "(rows) or 'both' (mass)"
            )
        return super().inapplicable(name, settings)

    def configure(self, settings: Mapping[str, Any]) -> None:
        self.relax = settings["relax"]


@register("iot-uni")
class IOTUniformity(IOT):
    r"""IOT-CL with the uniformity penalty (Shi et al., ICML 2023).

    .. math::

        \mathcal L = \mathcal L_{IOT} + \lambda_p \sum_{(i,j) \in \mathcal N}
            m\,(\log m - \log P_{ij}),\qquad m = \mathrm{mean}_{\mathcal N} P_{ij},

    over the negatives :math:`\mathcal N` (not self, not positive) of the plan of total mass 1
    (``lam_uni`` :math:`= \lambda_p = 0.2`, ``detach_mean=False``).
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        **IOT.defaults,
        "lam_uni": 0.2,
        "detach_mean": False,
    }
    applies_when: ClassVar[Mapping[str, str]] = {
        **IOT.applies_when,
        "detach_mean": "lam_uni > 0",
    }

    def __init__(
        self,
        temperature: float | None = None,
        *,
        lam_uni: float | None = None,
        detach_mean: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(temperature, lam_uni=lam_uni, detach_mean=detach_mean, **kwargs)

    @classmethod
    def inapplicable(cls, name: str, settings: Mapping[str, Any]) -> str | None:
        if name == "detach_mean" and float(settings["lam_uni"]) == 0:
            return "applies only to lam_uni > 0; the uniformity term is off (lam_uni=0)"
        return super().inapplicable(name, settings)

    def configure(self, settings: Mapping[str, Any]) -> None:
        super().configure(settings)
        self.lam_uni = check_nonneg("lam_uni", settings["lam_uni"])
        self.detach_mean = bool(settings["detach_mean"])

    def extra_terms(
        self,
        out: SinkhornOutput,
        target: torch.Tensor | None,
        pos: torch.Tensor | None,
        rows: RowView | None,
        simclr: bool,
    ) -> torch.Tensor | None:
        if self.lam_uni == 0:
            return None
        if rows is not None:
            pen = _uniformity_from_potentials(out, pos, rows, simclr, self.detach_mean)
            return self.lam_uni * pen
        lp = out.log_plan
        n = lp.shape[-2]
        # negatives: finite entries (log P > -inf: not masked) minus positives and self-pairs
        negatives = lp.detach() > float("-inf")
        if target is None:
            negatives[torch.arange(n, device=lp.device), pos] = False
        else:
            negatives &= target <= 0
        if simclr:  # self-pairs are never negatives, even when not masked
            negatives.fill_diagonal_(False)
        return self.lam_uni * uniformity_penalty(lp, negatives, detach_mean=self.detach_mean)
