r"""Divergences between a target plan and a model plan (the outer loss :math:`d_M`).

Both act row by row on a log-plan :math:`\log P` of shape (n, m) and return the mean over rows.

* :func:`cross_entropy` -- :math:`-\frac1n\sum_i\sum_j T_{ij}\log \hat P_{ij}` with
  :math:`\hat P` the row-normalised plan: KL(T || P-hat) up to the entropy of T.
* :func:`rince` -- the robust RINCE form (Chuang et al., CVPR 2022) on the kernel re-weighted by
  the column scaling, :math:`(Kv)_{ij} = P_{ij}/u_i`:

  .. math::

      \ell_i = -\frac{1}{q}\Big(\sum_j T_{ij}(Kv)_{ij}\Big)^q
               + \frac{1}{q}\Big(\lambda \sum_j (Kv)_{ij}\Big)^q .

  With :math:`v = 1` (row constraint only) this is exactly RINCE; with Sinkhorn's :math:`v`
  it is GCA-RINCE (Chen et al., 2024).

:func:`plan_cross_entropy` and :func:`plan_rince` take a solver output instead of a log-plan.
With the identity target and a solver that returns :math:`\mathrm{LSE}_j(S_{ij} + g_j)`
(``SinkhornOutput.row_lse``, the exp-domain solves), both are functions of n-vectors
only (:class:`RowView`), since :math:`\log \hat P_{ij} = S_{ij} + g_j - \mathrm{LSE}_j(S_{ij}+g_j)` and
:math:`\log (Kv)_{ij} = S_{ij} + g_j`: no n x m plan, softmax or gradient buffer is formed
(the same values; tested against the log-plan formulas).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..ot.distributed import Shard
from ..ot.sinkhorn import SinkhornOutput

__all__ = [
    "RINCE_MAX_EXPONENT",
    "RowView",
    "cross_entropy",
    "plan_cross_entropy",
    "plan_rince",
    "rince",
    "rince_rows",
    "row_mean",
    "row_view",
]


def _log_positive(log_p: torch.Tensor, target: torch.Tensor | None, pos: torch.Tensor | None):
    """log of the target-weighted positive mass per row: log sum_j T_ij exp(log_p_ij)."""
    if target is None:
        assert pos is not None  # the identity target: its positives
        return log_p.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
    logt = torch.where(target > 0, target.log(), float("-inf"))
    return torch.logsumexp(log_p + logt, dim=-1)


def row_mean(values: torch.Tensor, rows_total: int | None = None) -> torch.Tensor:
    """The mean over rows; with ``rows_total`` (a rank's share of the global rows), the sum of
    these rows divided by the global count: this rank's share of the global mean."""
    return values.mean() if rows_total is None else values.sum() / rows_total


def cross_entropy(
    log_plan: torch.Tensor,
    target: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    rows_total: int | None = None,
) -> torch.Tensor:
    """Soft-target cross-entropy of the row-normalised plan.

    Args:
        log_plan: (n, m) log P (``-inf`` allowed on excluded pairs).
        target: (n, m) row-normalised target, or None with ``pos``.
        pos: (n,) positive column per row (identity target).
        rows_total: the global row count when these are one rank's rows (see :func:`row_mean`).
    Returns:
        scalar.
    """
    if target is None:  # fused log-softmax + NLL: the same value, ~3x faster fwd+bwd on CPU
        assert pos is not None  # the identity target: its positives
        logits, labels = log_plan.reshape(-1, log_plan.shape[-1]), pos.reshape(-1)
        if rows_total is None:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits, labels, reduction="sum") / rows_total
    log_p = log_plan - torch.logsumexp(log_plan, dim=-1, keepdim=True)
    safe = torch.where(target > 0, log_p, torch.zeros_like(log_p))
    return row_mean(-(target * safe).sum(-1), rows_total)


def rince(
    log_kv: torch.Tensor,
    target: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    *,
    q: float = 0.6,
    lam: float = 0.01,
    rows_total: int | None = None,
    shard: Shard | None = None,
) -> torch.Tensor:
    """RINCE on log (K v): see the module docstring. ``q`` in (0, 1], ``lam`` > 0.

    Args:
        log_kv: (n, m) :math:`\\log K_{ij} + \\log v_j` (= log P_ij - f_i).
        rows_total, shard: for one rank's rows of a global batch (see :func:`rince_rows`).
    Returns:
        scalar.
    """
    log_pos = _log_positive(log_kv, target, pos)
    lse = torch.logsumexp(log_kv, dim=-1)
    return rince_rows(log_pos, lse, q, lam, rows_total=rows_total, shard=shard)


#: largest exponent a RINCE term may reach unscaled, per dtype (e^60 ~ 1e26 in float32/bf16;
#: e^600 in float64): beyond it the terms are scaled, see :func:`rince_rows`
RINCE_MAX_EXPONENT = {torch.float64: 600.0}
_RINCE_MAX_EXPONENT_DEFAULT = 60.0


def rince_rows(
    log_pos: torch.Tensor,
    lse: torch.Tensor,
    q: float,
    lam: float,
    *,
    rows_total: int | None = None,
    shard: Shard | None = None,
) -> torch.Tensor:
    r"""Mean over rows of :math:`-e^{q\,\mathrm{lp}_i}/q + (\lambda e^{\mathrm{lse}_i})^q/q`,
    computed from its logarithms.

    The two terms are :math:`e^{a_i}/q` and :math:`e^{b_i}/q` with :math:`a = q\,\mathrm{lp}`,
    :math:`b = q(\mathrm{lse} + \log\lambda)`. With scores :math:`s/\varepsilon` these exponents
    reach :math:`q/\varepsilon` (600 at :math:`\varepsilon = 10^{-3}`, q = 0.6): RINCE's value
    and gradient then exceed every floating-point range and a direct evaluation gives
    ``inf - inf = NaN``. Where the largest exponent :math:`c^* = \max_i \max(a_i, b_i)` exceeds
    :data:`RINCE_MAX_EXPONENT` (60 for float32, the usual case only below
    :math:`\varepsilon \approx 0.01`), the batch's terms are multiplied by the constant
    :math:`e^{-(c^* - 60)}` (not differentiated): a finite value and the same descent direction
    (RINCE's relative weighting of the rows is kept; only the step size of that batch shrinks).
    Below the threshold, the value is exactly RINCE's.

    With ``rows_total`` and ``shard`` these rows are one rank's share of a global batch: the
    constant is taken over the global batch and the result is this rank's share of the mean
    (:func:`row_mean`).
    """
    a = q * log_pos
    b = q * (lse + math.log(lam))
    limit = RINCE_MAX_EXPONENT.get(a.dtype, _RINCE_MAX_EXPONENT_DEFAULT)
    top = torch.maximum(a.detach().amax(), b.detach().amax())
    if shard is not None:
        top = shard.max(top)
    shift = (top - limit).clamp_min(0.0)  # 0 in the usual regime: exactly RINCE
    return row_mean((b - shift).exp() - (a - shift).exp(), rows_total) / q


class RowView(NamedTuple):
    r"""The two n-vectors the identity-target divergences need, from one solve.

    Attributes:
        lse: (n,) :math:`\\mathrm{LSE}_j(S_{ij} + g_j) = \\log (Kv)_i`.
        log_pos: (n,) :math:`S_{i,p(i)} + g_{p(i)} = \\log (Kv)_{i,p(i)}`.

    With them, :math:`-\\log \\hat P_{i,p(i)} = \\mathrm{lse}_i - \\mathrm{log\\_pos}_i` and
    RINCE is a function of both: no n x m plan is formed. A loss computes the view once per solve
    (:func:`row_view`) and hands it to every term (GCA-UOT's CE and RINCE, IOT's uniformity), so
    the terms share one gather and one dense gradient for it.
    """

    lse: torch.Tensor
    log_pos: torch.Tensor


def row_view(
    out: SinkhornOutput, target: torch.Tensor | None, pos: torch.Tensor | None
) -> RowView | None:
    """The :class:`RowView` of a 2-D solver output when the vector-only path applies, else None.

    It applies with the identity target (``target is None``) when the solver returned
    ``row_lse`` (exp-domain solves).
    """
    if target is not None or pos is None or out.row_lse is None or out.scores.dim() != 2:
        return None
    log_pos = out.scores.gather(-1, pos.unsqueeze(-1)).squeeze(-1) + out.g[pos]
    return RowView(out.row_lse, log_pos)


def plan_cross_entropy(
    out: SinkhornOutput,
    target: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    rows: RowView | None = None,
) -> torch.Tensor:
    """:func:`cross_entropy` of a solver output's plan (``out.log_plan``), vector-only if possible.

    Args:
        out: a :class:`~otcl.ot.SinkhornOutput`.
        target, pos: as in :func:`cross_entropy`.
        rows: its :class:`RowView` (computed here if None and applicable).
    """
    rows = row_view(out, target, pos) if rows is None else rows
    if rows is None:
        return cross_entropy(out.log_plan, target, pos, out.rows_total)
    # -log P-hat_{i,p(i)} = LSE_j(S_ij + g_j) - (S_ip + g_p)
    return row_mean(rows.lse - rows.log_pos, out.rows_total)


def plan_rince(
    out: SinkhornOutput,
    target: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    rows: RowView | None = None,
    *,
    q: float = 0.6,
    lam: float = 0.01,
) -> torch.Tensor:
    """:func:`rince` on :math:`\\log(Kv) = \\log P - f` of a solver output, vector-only if possible."""
    rows = row_view(out, target, pos) if rows is None else rows
    dist = {"rows_total": out.rows_total, "shard": out.shard}
    if rows is None:
        return rince(out.log_plan - out.f.unsqueeze(-1), target, pos, q=q, lam=lam, **dist)
    return rince_rows(rows.log_pos, rows.lse, q, lam, **dist)
