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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "rince"]


def _log_positive(log_p: torch.Tensor, target: torch.Tensor | None, pos: torch.Tensor | None):
    """log of the target-weighted positive mass per row: log sum_j T_ij exp(log_p_ij)."""
    if target is None:
        return log_p.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
    logt = torch.where(target > 0, target.log(), float("-inf"))
    return torch.logsumexp(log_p + logt, dim=-1)


def cross_entropy(
    log_plan: torch.Tensor, target: torch.Tensor | None = None, pos: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft-target cross-entropy of the row-normalised plan.

    Args:
        log_plan: (n, m) log P (``-inf`` allowed on excluded pairs).
        target: (n, m) row-normalised target, or None with ``pos``.
        pos: (n,) positive column per row (identity target).
    Returns:
        scalar.
    """
    if target is None:  # fused log-softmax + NLL: the same value, ~3x faster fwd+bwd on CPU
        return F.cross_entropy(log_plan.reshape(-1, log_plan.shape[-1]), pos.reshape(-1))
    log_p = log_plan - torch.logsumexp(log_plan, dim=-1, keepdim=True)
    safe = torch.where(target > 0, log_p, torch.zeros_like(log_p))
    return -(target * safe).sum(-1).mean()


def rince(
    log_kv: torch.Tensor,
    target: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    *,
    q: float = 0.6,
    lam: float = 0.01,
) -> torch.Tensor:
    """RINCE on log (K v): see the module docstring. ``q`` in (0, 1], ``lam`` > 0.

    Args:
        log_kv: (n, m) :math:`\\log K_{ij} + \\log v_j` (= log P_ij - f_i).
    Returns:
        scalar.
    """
    log_pos = _log_positive(log_kv, target, pos)
    log_all = torch.logsumexp(log_kv, dim=-1) + math.log(lam)
    return (-(q * log_pos).exp() / q + (q * log_all).exp() / q).mean()
