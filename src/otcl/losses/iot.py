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
from typing import Any

import torch

from .._validation import check_bool, check_choice, check_nonneg
from ..ot.distributed import Shard
from ..ot.geometry import Geometry
from ..ot.sinkhorn import SinkhornOutput
from .base import OTContrastiveLoss
from .divergences import RowView
from .params import Rule, param
from .registry import register

__all__ = ["IOT", "IOTUniformity", "uniformity_penalty"]

_RELAX = {"none": "balanced", "row": "rows", "both": "mass"}
#: iot-uni's detach_mean: it applies when the uniformity term is on
UNIFORMITY_ON = Rule(
    "lam_uni > 0",
    lambda s, _: float(s["lam_uni"]) != 0,
    because="the uniformity term is off (lam_uni=0)",
)


class _Uniformity(torch.autograd.Function):
    r""":func:`uniformity_penalty` in log space, with a closed-form backward.

    With :math:`L = \mathrm{LSE}(\log P)`, :math:`L_- = \mathrm{LSE}_{\mathcal N}(\log P)`,
    :math:`\Sigma = \sum_{\mathcal N} \log P` and :math:`c = |\mathcal N|`:
    :math:`\log m = L_- - L - \log c` and the penalty is
    :math:`e^{\log m}\,(c\log m - \Sigma + cL)`. Both log-sum-exps are taken directly, so a plan
    whose negative mass underflows (tiny temperatures: a near-permutation) gives the tiny true
    value, not ``0 * inf``. With :math:`\hat P = e^{\log P - L}` and
    :math:`\hat P_- = 1_{\mathcal N} e^{\log P - L_-}` the gradient is
    :math:`\gamma \hat P_- + (mc - \gamma)\hat P - m 1_{\mathcal N}`,
    :math:`\gamma = \partial\,\mathrm{pen}/\partial \log m = m(c\log m - \Sigma + cL + c)`
    (0 with ``detach_mean``): no n x m temporaries kept but the log-plan itself.
    """

    @staticmethod
    def forward(ctx, log_plan, negatives, detach_mean, shard):
        lp = log_plan.detach()
        count = torch.count_nonzero(negatives).to(lp.dtype)
        neg = lp.masked_fill(~negatives, float("-inf"))
        if shard is None:
            total = torch.logsumexp(lp.flatten(), 0)
            neg_total = torch.logsumexp(neg.flatten(), 0)
        else:  # one rank's rows: the sums over rows are completed over the ranks
            count = shard.sum(count)
            total, neg_total = shard.logsumexp_all(lp), shard.logsumexp_all(neg)
        neg_sum = neg.masked_fill_(~negatives, 0.0).sum()  # -inf entries are never negatives
        if shard is not None:
            neg_sum = shard.sum(neg_sum)
        del neg
        # no negatives at all (a target that covers every pair): the penalty is 0
        has = count > 0
        neg_total = torch.where(has, neg_total, torch.zeros_like(neg_total))
        log_m = torch.where(has, neg_total - total - count.clamp_min(1).log(), 0.0)
        mean = torch.where(has, log_m.exp(), 0.0)
        bracket = torch.where(has, count * log_m - neg_sum + count * total, 0.0)
        ctx.save_for_backward(lp, negatives, total, neg_total, count, mean, bracket)
        ctx.detach_mean, ctx.shard = detach_mean, shard
        return mean * bracket

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        lp, negatives, total, neg_total, count, mean, bracket = ctx.saved_tensors
        if ctx.shard is not None:  # the (shared) penalty's gradient reaches every rank's rows
            grad = ctx.shard.sum(grad)
        gamma = torch.zeros_like(mean) if ctx.detach_mean else mean * (bracket + count)
        out = (lp - total).exp_().mul_(grad * (mean * count - gamma))  # (mc - gamma) P-hat
        neg_part = (lp - neg_total).exp_().mul_(grad * gamma).sub_(grad * mean)
        out.add_(neg_part.masked_fill_(~negatives, 0.0))  # + 1_N (gamma P-hat_- - m)
        return out, None, None, None


def uniformity_penalty(
    log_plan: torch.Tensor,
    negatives: torch.Tensor,
    *,
    detach_mean: bool = False,
    shard: Shard | None = None,
) -> torch.Tensor:
    r"""IOT's uniformity term :math:`\mathrm{KL}(\bar Q\|P)` over the ``negatives`` mask.

    Args:
        log_plan: (n, m) log P; normalised to total mass 1 inside.
        negatives: (n, m) bool, True on negative pairs (finite entries of ``log_plan``).
        detach_mean: treat the mean negative mass m as a constant.
        shard: when ``log_plan`` holds one rank's rows of the global plan: the penalty of the
            global plan, as this rank's share (:meth:`~otcl.ot.distributed.Shard.share`).
    Returns:
        scalar >= 0, zero iff every negative entry is equal.
    """
    pen = _Uniformity.apply(log_plan, negatives, bool(detach_mean), shard)
    return pen if shard is None else shard.share(pen)


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
    out: SinkhornOutput,
    pos: torch.Tensor,
    rows: RowView,
    self_cols: torch.Tensor | None,
    detach_mean: bool,
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

    ``self_cols``: the column of each row's self-pair when the self-pairs carry mass (simclr
    layout with ``self_pair="max_cost"``; never negatives), else None (masked: no mass). When the output is one rank's rows (``out.shard``), every sum over rows is completed
    over the ranks and the result is this rank's share of the global penalty.
    """
    S, f, g, lse = out.scores, out.f, out.g, rows.lse
    shard = out.shard

    def all_rows(x: torch.Tensor) -> torch.Tensor:  # a sum over the rows of every rank
        return x if shard is None else shard.sum(x)

    n, m = S.shape
    dev, wide = S.device, torch.float64
    finite = S.detach() > float("-inf")
    deg_r = finite.sum(-1, dtype=torch.int32).to(wide)  # finite entries per row / column,
    deg_c = finite.sum(-2, dtype=torch.int32).to(wide)  # minus the excluded ones below
    f64, g64 = f.to(wide), g.to(wide)
    # excluded entries X: (row, col, S + g at the entry); positives share the divergence's gather
    log_pos = rows.log_pos  # S_ip + g_p, shared with the divergence
    ex = [(torch.arange(n, device=dev), pos, log_pos.to(wide), log_pos - g[pos])]
    if self_cols is not None:  # unmasked self-pairs (max_cost) are never negatives
        own = torch.arange(n, device=dev)
        s_d = S[own, self_cols]
        ex.append((own, self_cols, s_d.to(wide) + g64[self_cols], s_d))
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
    count = all_rows(deg_r.sum())
    deg_c = all_rows(deg_c)
    row_mass = f64 + lse.to(wide)
    if shard is None:
        log_total = torch.logsumexp(row_mass, dim=0)
    else:
        log_total = shard.logsumexp_all(row_mass.unsqueeze(-1))
    ex_share = all_rows(ex_share) * (-log_total).exp()  # excluded share of the total mass
    neg_s = all_rows(_MaskedSum.apply(S, finite).to(wide) - s_ex_sum)
    # sum of log P over the negatives (g is shared: its term is counted once)
    neg_lp = all_rows((deg_r * f64).sum()) + (deg_c * g64).sum() + neg_s
    # the negatives' share 1 - ex_share; clamped where it is below float64's resolution
    # (a near-permutation plan): the penalty is then ~0 and stays finite
    neg_share = (1.0 - ex_share).clamp_min(torch.finfo(wide).tiny)
    has = count > 0  # no negatives at all: the penalty is 0
    log_m = torch.where(has, neg_share.log() - count.clamp_min(1).log(), 0.0)
    if detach_mean:
        log_m = log_m.detach()
    pen = torch.where(has, log_m.exp() * (count * log_m - neg_lp + count * log_total), 0.0)
    pen = pen.to(S.dtype)
    return pen if shard is None else shard.share(pen)


class _MaskedSum(torch.autograd.Function):
    """Sum of ``x`` over ``mask`` (entries outside may be -inf); gradient ``mask * grad``."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return torch.where(mask, x, 0.0).sum()

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
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
    ``"both"`` (total mass); ``constraint`` (the shared parameter) may name any set instead, but
    not together with ``relax``.
    """

    constraint: str = "balanced"
    relax: str = param(default="none")  # checked by derive, which reads it first

    @classmethod
    def derive(cls, settings: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        relax = check_choice("relax", settings["relax"], tuple(_RELAX))
        if "constraint" in given:  # the shared parameter, instead of relax
            if "relax" in given:
                raise ValueError(
                    f"constraint, relax: {cls.loss_name()} takes one of them (relax='none' | "
                    f"'row' | 'both' names a constraint set), got both"
                )
            named = {v: k for k, v in _RELAX.items()}
            return {**settings, "relax": named.get(settings["constraint"], "custom")}
        return {**settings, "constraint": _RELAX[relax]}


@register("iot-uni")
class IOTUniformity(IOT):
    r"""IOT-CL with the uniformity penalty (Shi et al., ICML 2023).

    .. math::

        \mathcal L = \mathcal L_{IOT} + \lambda_p \sum_{(i,j) \in \mathcal N}
            m\,(\log m - \log P_{ij}),\qquad m = \mathrm{mean}_{\mathcal N} P_{ij},

    over the negatives :math:`\mathcal N` (not self, not positive) of the plan of total mass 1
    (``lam_uni`` :math:`= \lambda_p = 0.2`, ``detach_mean=False``).
    """

    lam_uni: float = param(default=0.2, check=check_nonneg)
    detach_mean: bool = param(default=False, check=check_bool, applies=UNIFORMITY_ON)

    def streaming_terms(self) -> dict[str, float] | None:
        if not self._terms_from(IOTUniformity):
            return None
        terms = {self.divergence: 1.0}
        if self.lam_uni:
            terms["uniformity"] = self.lam_uni
        return terms

    def extra_terms(
        self,
        out: SinkhornOutput,
        target: torch.Tensor | None,
        pos: torch.Tensor | None,
        rows: RowView | None,
        geom: Geometry,
    ) -> torch.Tensor | None:
        if self.lam_uni == 0:
            return None
        lp_rows = out.scores.shape[-2]
        self_cols = None
        if geom.layout == "simclr" and geom.mask is None:  # unmasked self-pairs (max_cost)
            own = torch.arange(lp_rows, device=out.scores.device)
            self_cols = own if geom.rows is None else geom.rows
        if rows is not None:
            assert pos is not None  # the vector-only path: identity target
            pen = _uniformity_from_potentials(out, pos, rows, self_cols, self.detach_mean)
            return self.lam_uni * pen
        lp = out.log_plan
        # negatives: finite entries (log P > -inf: not masked) minus positives and self-pairs
        negatives = lp.detach() > float("-inf")
        own = torch.arange(lp_rows, device=lp.device)
        if target is None:
            negatives[own, pos] = False
        else:
            negatives &= target <= 0
        if self_cols is not None:  # self-pairs are never negatives (masked ones: -inf above)
            negatives[own, self_cols] = False
        pen = uniformity_penalty(lp, negatives, detach_mean=self.detach_mean, shard=out.shard)
        return self.lam_uni * pen
