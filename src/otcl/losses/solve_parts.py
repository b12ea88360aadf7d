r"""The parts of an OT loss's solve that the dense and the streamed paths share.

* :func:`warm_start`: the starting potentials of a problem (``v = b`` for an unbalanced one);
* :func:`weighted_problem`: a problem whose marginals carry row / column weights;
* :func:`symmetric_gauge`: balanced potentials in the gauge :math:`\sum_i f_i = \sum_j g_j`;
* :func:`column_weights`: the weights of columns drawn with known probabilities (the
  ``col_prior=`` of :meth:`otcl.losses.OTContrastiveLoss.prior_weights`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TypeVar

import torch

from ..ot.distributed import Shard
from ..ot.geometry import Geometry
from ..ot.problem import Problem
from ..ot.sinkhorn import SinkhornOutput
from ..ot.streaming_sinkhorn import StreamingOutput

__all__ = ["column_weights", "symmetric_gauge", "warm_start", "weighted_problem"]

Output = TypeVar("Output", SinkhornOutput, StreamingOutput)


def warm_start(
    problem: Problem, n: int, m: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The starting potentials ``(f, g)`` of an (n, m) ``problem``: for an unbalanced one
    ``u = 1, v = b`` (as the official GCA-UOT code, u = v = marginal), else None (for
    balanced problems the starting scale of v cancels after the first row update)."""
    if problem.constraint != "unbalanced":
        return None
    log_b = torch.full((m,), -math.log(m), device=device)
    if problem.b is not None:
        log_b = problem.b.log()
    return torch.zeros(n, device=device), log_b


def weighted_problem(
    problem: Problem,
    n: int,
    m: int,
    w_rows: torch.Tensor | None,
    w_cols: torch.Tensor | None,
    *,
    unit: bool,
) -> Problem:
    """``problem`` of an (n, m) plan with its row / column marginals multiplied by weights of
    mean 1 (the total masses, hence the balance of a balanced problem, are unchanged);
    ``unit``: the loss's marginals are ``"unit"`` (else uniform)."""
    a, b = problem.a, problem.b
    if w_rows is not None:
        a = w_rows * (1.0 if unit else 1.0 / n)
    if w_cols is not None:
        b = w_cols * (n / m if unit else 1.0 / m)
    return dataclasses.replace(problem, a=a, b=b)


def symmetric_gauge(out: Output) -> Output:
    r"""Balanced potentials moved to the gauge :math:`\sum_i f_i = \sum_j g_j` (see
    :meth:`otcl.losses.OTContrastiveLoss.symmetric_gauge`), a dense or a streamed solve's."""
    n, m = out.f.shape[-1], out.g.shape[-1]
    k = (out.g.sum(-1, keepdim=True) - out.f.sum(-1, keepdim=True)) / (n + m)
    row_lse = None if out.row_lse is None else out.row_lse - k  # LSE_j(S_ij + g_j)
    return out.replace(f=out.f + k, g=out.g - k, row_lse=row_lse)


def column_weights(
    col_prior: torch.Tensor,
    geo: Geometry,
    shard: Shard | None,
    constraint: str,
    loss_name: str,
) -> torch.Tensor:
    r"""Column weights :math:`w_j \propto 1/q_j` (mean 1) of a column prior ``q`` (m,) on the
    scores of ``geo``, in their device and float32 (float64 for float64 scores).

    ``col_prior`` is the probability with which each column (candidate) was drawn, e.g. an
    item's share of the positive pairs when the negatives are the batch's other positives.
    The coupling's columns are then an importance-weighted sample of the uniform catalogue:
    the kernel becomes :math:`K_{ij} = w_j e^{S_{ij}}` (reference measure
    :math:`a \otimes w`) and a constrained column side has marginal :math:`b_j \propto
    w_j`. Row-constrained (InfoNCE), the direction's loss is exactly the logQ-corrected
    softmax of Yi et al. (RecSys 2019): :math:`-\log \mathrm{softmax}_j(S_{ij} - \log
    q_j)` at the positive.

    ``constraint`` and ``loss_name`` are the loss's (a ``"mass"`` constraint has no column
    marginal to set); ``shard`` must be None (one process). Raises ``ValueError`` on a prior
    of the wrong shape or with a non-positive or non-finite probability.
    """
    m = geo.scores.shape[-1]
    if constraint == "mass":
        raise ValueError(
            f"col_prior: {loss_name} (constraint='mass') has no column marginal to set"
        )
    if shard is not None:
        raise ValueError("col_prior: not supported with gather_distributed across ranks")
    if col_prior.shape != (m,):
        raise ValueError(
            f"col_prior: expected shape ({m},) (one probability per column), "
            f"got {tuple(col_prior.shape)}"
        )
    q = col_prior.detach().to(torch.float64)
    if not bool(((q > 0) & torch.isfinite(q)).all()):
        raise ValueError("col_prior: expected positive finite probabilities")
    w = 1.0 / q
    dtype = torch.float64 if geo.scores.dtype == torch.float64 else torch.float32
    return (w / w.mean()).to(device=geo.scores.device, dtype=dtype)
