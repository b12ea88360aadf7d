r"""``ot-hard`` on a streaming geometry: the hard-negative weights from streamed potentials.

The weights of ``ot-hard`` are the rows of the entropic coupling of the batch's negatives,
:math:`w_{ij} = P_{ij}/\sum_{k\in\mathcal N_i} P_{ik}` with
:math:`\log P_{ij} = f_i + S^c_{ij} + g_j` and :math:`S^c = -C/\varepsilon_c` on the negatives
:math:`\mathcal N` (``-inf`` elsewhere). The estimator needs only, per anchor,

.. math::

    \log \sum_{j} w_{ij} e^{\ell_{ij}} = \mathrm{LSE}_{j\in\mathcal N_i}(S^c_{ij} + g_j + \ell_{ij})
        - \mathrm{LSE}_{j\in\mathcal N_i}(S^c_{ij} + g_j),\qquad \ell = s/t,

two streamed row log-sum-exps with the coupling's column potential (:math:`f` cancels). In the
symmetric ``cross`` layout the view-2 anchors' weights are the plan's columns: the same two
reductions on the transposed geometry with :math:`f` in the role of :math:`g`.
``coupling_grad="none"`` (the default) keeps the coupling constant: its part of the scores is
detached per tile, and the potentials come from a solve without gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from .._validation import flat_negatives
from ..ot.distributed import Shard, current_shard
from ..ot.problem import Problem
from ..ot.streaming import StreamingGeometry, TileSpec, streaming_pair_scores
from ..ot.streaming_sinkhorn import row_reduce, streaming_solve
from .divergences import row_mean

__all__ = ["HardCouplingLoss", "hard_streaming_forward"]

_MODES = {"none": "detach", "unrolled": "unrolled", "detach": "detach", "implicit": "implicit"}


class HardCouplingLoss(Protocol):
    """What the streaming path reads of an :class:`~otcl.losses.OTHard`: its options, the
    coupling's cost bound, the shared estimator's tail and its call checks (typing only)."""

    temperature: float
    layout: str
    similarity: str
    symmetric: bool
    gather_distributed: bool
    eps: float
    cost: str
    kappa: float
    iters: int
    tol: float
    coupling_grad: str

    def _bound(self) -> float | None: ...

    def _row_tail(
        self,
        log_pos: torch.Tensor,
        log_count: torch.Tensor,
        has_neg: torch.Tensor,
        log_ng0: torch.Tensor,
    ) -> torch.Tensor: ...

    def _check_call(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None,
        target: torch.Tensor | None,
        negatives: torch.Tensor | None,
        shard: Shard | None = None,
    ) -> None: ...


def _negatives(geom: StreamingGeometry, labels: torch.Tensor | None) -> Callable:
    """(r0, r1) -> bool tile of the negatives (:meth:`otcl.ot.Geometry.negatives`)."""
    m = geom.shape[1]
    device = geom.x.device
    rows = torch.arange(geom.shape[0], device=device) if geom.rows is None else geom.rows
    pos = geom.pos
    y = None
    if labels is not None:
        y = torch.cat([labels, labels]) if geom.layout == "simclr" else labels
        y = y.to(device)

    def keep(r0: int, r1: int) -> torch.Tensor:
        cols = torch.arange(m, device=device).unsqueeze(0)
        k = cols != pos[r0:r1].unsqueeze(1)
        if geom.layout == "simclr":
            k &= cols != rows[r0:r1].unsqueeze(1)
        if y is not None:
            k[:, : y.numel()] &= y[rows[r0:r1]].unsqueeze(1) != y.unsqueeze(0)
        return k

    return keep


def _cost_map(loss: HardCouplingLoss, geom: StreamingGeometry) -> Callable:
    """``(sim, r0, r1) -> -C / eps`` of the coupling (``OTHard.cost_matrix`` per tile)."""
    x_sq = geom.x.detach().pow(2).sum(-1)
    y_sq = geom.y.detach().pow(2).sum(-1)

    def cost(sim: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        if loss.similarity == "cosine":
            d2 = (2.0 - 2.0 * sim).clamp_min(0.0)
        else:
            d2 = (x_sq[r0:r1].unsqueeze(-1) + y_sq - 2.0 * sim).clamp_min(0.0)
        c = d2 if loss.cost == "sqeuclidean" else torch.exp(d2 - loss.kappa)
        return -c / loss.eps

    return cost


def _specs(loss: HardCouplingLoss, geom: StreamingGeometry, labels: torch.Tensor | None):
    """The coupling's tile spec and the spec of coupling + loss scores (:math:`S^c + \\ell`)."""
    keep = _negatives(geom, labels)
    cost = _cost_map(loss, geom)
    t = loss.temperature
    frozen = loss.coupling_grad == "none"

    def combined(sim: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        return cost(sim.detach() if frozen else sim, r0, r1) + sim / t

    base: dict[str, Any] = dict(temperature=t, tile_size=geom.tile_size, rows=geom.rows, keep=keep)
    return TileSpec(score_map=cost, **base), TileSpec(score_map=combined, **base), keep


def _direction_rows(
    loss: HardCouplingLoss,
    geom: StreamingGeometry,
    labels: torch.Tensor | None,
    potential: torch.Tensor,
) -> torch.Tensor:
    """Per-anchor losses (n,) of one direction, given the coupling's column potential."""
    coupling, combined, keep = _specs(loss, geom, labels)
    n = geom.shape[0]
    count = torch.cat([keep(r0, r1).sum(-1) for r0, r1 in coupling.blocks(n)])
    count = count.to(geom.work_dtype)
    has = count > 0
    log_count = torch.where(has, count.clamp_min(1).log(), torch.zeros_like(count))
    if loss.coupling_grad == "none":
        potential = potential.detach()
        with torch.no_grad():
            den = row_reduce(geom, potential, spec=coupling)
    else:
        den = row_reduce(geom, potential, spec=coupling)
    num = row_reduce(geom, potential, spec=combined)
    zero = torch.zeros_like(num)
    log_ng0 = log_count + torch.where(has, num, zero) - torch.where(has, den, zero)
    log_pos = geom.positive_scores().to(geom.work_dtype)
    return loss._row_tail(log_pos, log_count, has, log_ng0)


def _solve(loss: HardCouplingLoss, geom: StreamingGeometry, labels: torch.Tensor | None):
    """The coupling's potentials ``(f, g)`` (with the gradient ``coupling_grad`` asks for)."""
    coupling, _, keep = _specs(loss, geom, labels)
    n, m = geom.shape
    if labels is not None:  # only labels can leave no negative at all (one host sync)
        total = sum(int(keep(r0, r1).sum()) for r0, r1 in coupling.blocks(n))
        if geom.shard is not None:
            total = int(geom.shard.max(torch.tensor(total, device=geom.x.device)))
        if total == 0:  # nothing to couple: every row's loss is 0
            zeros = geom.x.new_zeros
            return zeros(n, dtype=geom.work_dtype), zeros(m, dtype=geom.work_dtype)
    options: dict[str, Any] = dict(
        iters=loss.iters,
        tol=loss.tol or None,
        grad=_MODES[loss.coupling_grad],
        spec=coupling,
        bound=loss._bound(),
    )
    if loss.coupling_grad == "none":
        with torch.no_grad():
            out = streaming_solve(geom, Problem(), **options)
        return out.f.detach(), out.g.detach()
    out = streaming_solve(geom, Problem(), **options)
    return out.f, out.g


def hard_streaming_forward(
    loss: HardCouplingLoss,
    z1: torch.Tensor,
    z2: torch.Tensor,
    labels: torch.Tensor | None,
    negatives: torch.Tensor | None,
    *,
    tile_size: int,
) -> torch.Tensor:
    """:class:`~otcl.losses.OTHard`'s value on a streaming geometry (same checks, layouts,
    labels, extra negatives and sharding as its dense forward)."""
    shard = current_shard() if loss.gather_distributed else None
    loss._check_call(z1, z2, labels, None, negatives, shard)
    negatives = flat_negatives(negatives)
    if shard is not None and labels is not None:
        labels = shard.gather_constant(labels)
    options: dict[str, Any] = dict(
        temperature=loss.temperature,
        tile_size=tile_size,
        layout=loss.layout,
        similarity_kind=loss.similarity,
    )
    geo = streaming_pair_scores(z1, z2, negatives=negatives, shard=shard, **options)
    f, g = _solve(loss, geo, labels)
    rows_total = None if shard is None else geo.n_rows
    value = row_mean(_direction_rows(loss, geo, labels, g), rows_total)
    if loss.layout == "cross" and loss.symmetric:
        if shard is None:
            rev, f_all = geo.transposed(), f
        else:
            rev = streaming_pair_scores(z2, z1, shard=shard, **options)
            f_all = shard.gather(f) if f.requires_grad else shard.gather_constant(f)
        rows = _direction_rows(loss, rev, labels, f_all)
        value = 0.5 * (value + row_mean(rows, rows_total and rev.n_rows))
    return value if shard is None else shard.total(value)
