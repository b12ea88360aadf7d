r"""Sinkhorn on a :class:`~otcl.ot.streaming.StreamingGeometry`: potentials, never the plan.

The iterations of :mod:`otcl.ot.sinkhorn`, one pass over the row tiles per iteration: each tile
of scores is computed once and serves both half-steps, since the row update of a tile needs only
that tile and :math:`g`, and the column update accumulates over tiles:

* exp domain (bounded scores, :math:`|S| \le 30`, as the dense ``domain="auto"``): per tile
  :math:`K = e^{S}`, :math:`u \leftarrow (a / K v)^{\tau_a}` on the tile's rows, and
  :math:`K^\top u` accumulated; then :math:`v \leftarrow (b / K^\top u)^{\tau_b}`;
* log domain: :math:`f \leftarrow \tau_a(\log a - \mathrm{LSE}_j(S + g))` on the tile's rows and
  the column log-sum-exp of :math:`S + f` accumulated with a running maximum
  (:class:`~otcl.ot.streaming.OnlineColumnLSE`).

A last pass gives :math:`\mathrm{row\_lse} = \mathrm{LSE}_j(S_{ij} + g_j)` (the log row sums of
the plan are :math:`f + \mathrm{row\_lse}`) and the marginal errors. The output carries
:math:`f, g, \mathrm{row\_lse}`: every loss of :mod:`otcl.losses` needs only these and tiles
(:mod:`otcl.losses.streaming`); the plan is formed only on request, one block at a time
(:meth:`StreamingOutput.plan_block`).

**Gradients** (``torch.autograd.Function`` with a streamed backward; the embeddings get the
gradient, the marginals and the warm start are constants):

* ``grad="unrolled"``: the exact reverse of the iterations (as the dense fused backwards). One
  pass per iteration runs the adjoint recursion on vectors (:math:`O(T(n+m))` kept:
  the potentials or scalings and log-sum-exps of every iteration); the score gradient
  :math:`\bar S = \sum_t \operatorname{diag}(\alpha_t) P^{row}_t + P^{col}_t
  \operatorname{diag}(\beta_t)` (a rank-2T product :math:`K \odot (L R^\top)` in the exp domain)
  is formed tile by tile in the last of these passes and sent to the embeddings there.
* ``grad="implicit"``: the adjoint system of :mod:`otcl.ot.implicit` solved by conjugate
  gradient, each step one pass of the two plan-vector products, then one pass for
  :math:`\bar S = -P \odot (\tau_a x_f \oplus \tau_b x_g)`.
* ``grad="detach"``: potentials constant; only ``row_lse`` is differentiated (one pass).

Passes over the n x m x d scores (one tile matmul each), T iterations: forward T + 1; backward
T + 1 (unrolled), CG steps + 2 (implicit), 1 (detach); the gradient products of the last pass
add two matmul-equivalents.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .._validation import check_choice, check_marginal
from . import streaming_backward as backward
from .distributed import Shard
from .problem import Problem
from .sinkhorn import DOMAINS, GRAD_MODES
from .sinkhorn_iterations import EXP_SAFE_BOUND, _col_sum, _moved
from .streaming import OnlineColumnLSE, StreamingGeometry, TileSpec
from .streaming_reduce import row_reduce

__all__ = ["StreamingOutput", "row_reduce", "streaming_solve"]


@dataclass(frozen=True, eq=False)
class StreamingOutput:
    """Result of a streamed solve: potentials and row log-sum-exps, no n x m matrix.

    Attributes:
        f: (n,) row potential; g: (m,) column potential (global when sharded).
        row_lse: (n,) :math:`\\mathrm{LSE}_j(S_{ij} + g_j)`, differentiable.
        n_iters, converged, domain: as :class:`~otcl.ot.SinkhornOutput`.
        row_error, col_error: L1 errors of the marginals (None when not computed: the
            closed-form row solve skips the column pass).
        geometry: the :class:`~otcl.ot.streaming.StreamingGeometry` solved.
        spec: the tile spec of the scores solved (the geometry's, or a loss's own scores).
        shard, rows_total: as :class:`~otcl.ot.SinkhornOutput`.
    """

    f: torch.Tensor
    g: torch.Tensor
    row_lse: torch.Tensor
    n_iters: int
    converged: bool | None
    row_error: torch.Tensor | None
    col_error: torch.Tensor | None
    domain: str
    geometry: StreamingGeometry = field(repr=False)
    spec: TileSpec = field(repr=False)
    shard: Shard | None = field(default=None, repr=False)
    rows_total: int | None = None

    def plan_block(self, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, m) rows ``r0:r1`` of the plan :math:`e^{f + S + g}` (no gradient)."""
        x, y = self.geometry.x.detach(), self.geometry.y.detach()
        with torch.no_grad():
            s = self.spec.scores(x, y, r0, r1)
            return s.add_(self.f[r0:r1].detach().unsqueeze(-1)).add_(self.g.detach()).exp_()

    def plan_blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(r0, r1, block)`` over the row tiles: the plan one block at a time."""
        for r0, r1 in self.spec.blocks(self.f.shape[-1]):
            yield r0, r1, self.plan_block(r0, r1)

    def replace(self, **changes: Any) -> StreamingOutput:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# -- the forward iterations (no autograd) ----------------------------------------------------


def _final_pass(x, y, spec, f, g, dom, shard):
    """row_lse = LSE_j(S + g) and the plan's row and column sums, from one pass."""
    n, m = x.shape[0], y.shape[0]
    lse = x.new_empty(n)
    if dom == "exp":
        u, v = f.exp(), g.exp()
        col = x.new_zeros(m)
        for r0, r1 in spec.blocks(n):
            K = spec.scores(x, y, r0, r1).exp_()
            lse[r0:r1] = K @ v
            col.addmv_(K.transpose(0, 1), u[r0:r1])
        kv = lse.clone()
        col = col if shard is None else shard.sum(col)
        return kv.log(), u * kv, v * col
    acc = OnlineColumnLSE(m, x)
    for r0, r1 in spec.blocks(n):
        S = spec.scores(x, y, r0, r1)
        lse[r0:r1] = torch.logsumexp(S + g, dim=-1)
        acc.add(S.add_(f[r0:r1].unsqueeze(-1)))
    return lse, (f + lse).exp(), (g + acc.result(shard)).exp()


def _iterate(
    x: torch.Tensor,
    y: torch.Tensor,
    spec: TileSpec,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    ta: float,
    tb: float,
    f: torch.Tensor,
    g: torch.Tensor,
    iters: int,
    tol: float | None,
    check_every: int,
    dom: str,
    shard: Shard | None,
    trace: dict[str, list[Any]] | None,
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """The iterations: returns (f, g, n_done, converged); ``trace`` (a dict or None) receives
    every iterate for the unrolled backward."""
    n, m = x.shape[0], y.shape[0]
    tiny = torch.finfo(x.dtype).tiny
    exp = dom == "exp"
    # bound for the checker only: each branch rebinds the names it reads before reading them
    a = b = u = v = u_prev = v_prev = f_prev = g_prev = f
    if exp:
        a, b = log_a.exp(), log_b.exp()
        u, v = f.exp(), g.exp()
        if trace is not None:
            trace.update(u=[u], v=[v], r=[], c=[])
    elif trace is not None:
        trace.update(f=[f], g=[g], lr=[], lc=[])
    n_done, converged = 0, False
    for it in range(iters):
        if exp:
            u_prev, v_prev = u, v
            u_new = torch.empty_like(u) if ta > 0 else u
            r = torch.empty_like(u) if ta > 0 else None
            col = x.new_zeros(m) if tb > 0 else None
            for r0, r1 in spec.blocks(n):
                K = spec.scores(x, y, r0, r1).exp_()
                if ta > 0:
                    assert r is not None
                    kv = (K @ v).clamp_min_(tiny)
                    r[r0:r1] = kv
                    ub = a[r0:r1] / kv if ta == 1.0 else (a[r0:r1] / kv).pow(ta)
                    u_new[r0:r1] = ub
                if tb > 0:
                    assert col is not None
                    col.addmv_(K.transpose(0, 1), u_new[r0:r1])
            u = u_new
            c = None
            if tb > 0:
                assert col is not None
                c = (col if shard is None else shard.sum(col)).clamp_min(tiny)
                v = b / c if tb == 1.0 else (b / c).pow(tb)
            if trace is not None:
                trace["u"].append(u)
                trace["v"].append(v)
                trace["r"].append(r)
                trace["c"].append(c)
        else:
            f_prev, g_prev = f, g
            f_new = torch.empty_like(f) if ta > 0 else f
            lr = torch.empty_like(f) if ta > 0 else None
            acc = OnlineColumnLSE(m, x) if tb > 0 else None
            for r0, r1 in spec.blocks(n):
                S = spec.scores(x, y, r0, r1)
                if ta > 0:
                    assert lr is not None
                    lr[r0:r1] = torch.logsumexp(S + g, dim=-1)
                    f_new[r0:r1] = ta * (log_a[r0:r1] - lr[r0:r1])
                if tb > 0:
                    assert acc is not None
                    acc.add(S.add_(f_new[r0:r1].unsqueeze(-1)))
            f = f_new
            lc = None
            if tb > 0:
                assert acc is not None
                lc = acc.result(shard)
                g = tb * (log_b - lc)
            if trace is not None:
                trace["f"].append(f)
                trace["g"].append(g)
                trace["lr"].append(lr)
                trace["lc"].append(lc)
        n_done = it + 1
        if ta == 0 or tb == 0:  # semi-relaxed: one update of the constrained side is exact
            converged = True
            break
        if tol is not None and (n_done % check_every == 0 or n_done == iters):
            if exp:
                moved = _moved(u.log(), u_prev.log(), v.log(), v_prev.log(), shard)
            else:
                moved = _moved(f, f_prev, g, g_prev, shard)
            if moved < tol:
                converged = True
                break
    if exp:
        return u.log(), v.log(), n_done, converged
    return f, g, n_done, converged


# -- the autograd function ------------------------------------------------------------------


class _StreamSinkhorn(torch.autograd.Function):
    """Streamed Sinkhorn ``(x, y) -> (f, g, row_lse)`` with a streamed backward (module doc)."""

    @staticmethod
    def forward(ctx, x, y, log_a, log_b, f0, g0, opts):
        spec, shard, dom, mode = opts["spec"], opts["shard"], opts["domain"], opts["grad"]
        ta, tb = opts["ta"], opts["tb"]
        trace = {} if mode == "unrolled" else None
        f, g, n_done, conv = _iterate(
            x, y, spec, log_a, log_b, ta, tb, f0, g0, opts["iters"], opts["tol"],
            opts["check_every"], dom, shard, trace,
        )  # fmt: skip
        lse, row_sum, col_sum = _final_pass(x, y, spec, f, g, dom, shard)
        opts["info"].update(n_iters=n_done, converged=conv, row_sum=row_sum, col_sum=col_sum)
        ctx.opts, ctx.trace, ctx.n_done = opts, trace, n_done
        ctx.save_for_backward(x, y, f, g, lse, row_sum, col_sum)
        ctx.mark_non_differentiable(row_sum, col_sum)
        return f, g, lse

    @staticmethod
    def backward(ctx, grad_f, grad_g, grad_lse):  # pyright: ignore[reportIncompatibleMethodOverride]
        x, y, f, g, lse, row_sum, col_sum = ctx.saved_tensors
        opts = ctx.opts
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        if need_x or need_y:
            args = (x, y, f, g, lse, row_sum, col_sum, grad_f, grad_g, grad_lse, gx, gy)
            mode = opts["grad"]
            if mode == "unrolled":
                if opts["domain"] == "exp":
                    backward.unrolled_exp(ctx, *args)
                else:
                    backward.unrolled_log(ctx, *args)
            elif mode == "implicit":
                backward.implicit(ctx, *args)
            elif grad_lse is not None:  # detach: row_lse through the scores only
                backward.detach(ctx, *args)
        return gx, gy, None, None, None, None, None


# -- the solve --------------------------------------------------------------------------------


def _choose_domain(domain: str, geom: StreamingGeometry, spec: TileSpec, bound: float | None):
    if domain != "auto":
        return domain
    if bound is None:  # one pass for the largest finite |S| (as the dense solver's)
        top = geom.x.new_zeros(())
        with torch.no_grad():
            x, y = geom.x.detach(), geom.y.detach()
            for r0, r1 in spec.blocks(x.shape[0]):
                s = spec.scores(x, y, r0, r1)
                s = s[torch.isfinite(s)]
                if s.numel():
                    top = torch.maximum(top, s.abs().max())
        bound = float(top if geom.shard is None else geom.shard.max(top))
    return "exp" if bound <= EXP_SAFE_BOUND else "log"


def streaming_solve(
    geom: StreamingGeometry,
    problem: Problem | None = None,
    *,
    iters: int = 100,
    tol: float | None = None,
    check_every: int = 10,
    grad: str = "unrolled",
    domain: str = "auto",
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    spec: TileSpec | None = None,
    bound: float | None = None,
    cg_tol: float | None = None,
    cg_max_iter: int = 500,
    marginal_tol: float = 1e-5,
) -> StreamingOutput:
    r"""Solve ``problem`` on a streaming geometry: the streamed twin of
    ``Sinkhorn(iters, tol, check_every, grad, domain)(geometry, problem)``.

    The same values (potentials, row log-sum-exps of the plan) and gradients as the dense
    solver with ``backward="fused"``, to rounding.

    Args:
        geom: the :class:`~otcl.ot.streaming.StreamingGeometry`.
        problem: marginals and relaxations (:class:`~otcl.ot.Problem`), default balanced.
        iters, tol, check_every, grad, domain: the :class:`~otcl.ot.Sinkhorn` options.
        init: warm start ``(f, g)`` (constants).
        spec: other scores of the same point clouds (e.g. a hard-negative coupling's cost),
            default the geometry's; ``bound``: a bound on their ``|S|`` (default the geometry's).
        cg_tol, cg_max_iter: the conjugate gradient of ``grad="implicit"``.
        marginal_tol: as :class:`~otcl.ot.Sinkhorn`'s: a balanced solve is ``converged`` when
            both final marginal errors are within it, relative to the total mass.
    Returns:
        :class:`StreamingOutput`.
    """
    check_choice("grad", grad, GRAD_MODES)
    check_choice("domain", domain, DOMAINS)
    problem = Problem() if problem is None else problem
    if not isinstance(problem, Problem):
        raise ValueError(f"problem: expected an otcl.ot.Problem, got {type(problem).__name__}")
    if spec is None:  # the geometry's own scores: its bound too
        spec, bound = geom.spec, geom.bound if bound is None else bound
    x, y, shard = geom.x, geom.y, geom.shard
    n, m = x.shape[0], y.shape[0]
    dtype = x.dtype
    like = x.detach()
    n_all = n if shard is None else n * shard.world
    rows_total = None if shard is None else n_all
    common: dict[str, Any] = dict(geometry=geom, spec=spec, shard=shard, rows_total=rows_total)
    if problem.mass is not None:  # log P = S + f, f = log(mass) - LSE(S)
        lse = row_reduce(geom, spec=spec)
        total = torch.logsumexp(lse, 0) if shard is None else shard.logsumexp_all(lse.unsqueeze(-1))
        f = (math.log(problem.mass) - total).expand(n)
        g = torch.zeros(m, dtype=dtype, device=x.device)
        return StreamingOutput(f, g, lse, 1, True, None, None, "log", **common)
    a = check_marginal("a", problem.a, torch.Size(), n_all, like=like)
    b = check_marginal("b", problem.b, torch.Size(), m, like=like)
    if a is not None and geom.rows is not None:
        a = a[geom.rows]
    log_a = torch.full((n,), -math.log(n_all), dtype=dtype, device=x.device)
    log_a = log_a if a is None else a.log()
    log_b = torch.full((m,), -math.log(m), dtype=dtype, device=x.device) if b is None else b.log()
    ta, tb = problem.tau_a, problem.tau_b
    if init is not None:
        f0, g0 = init[0].detach().to(like), init[1].detach().to(like)
    else:
        f0 = torch.zeros(n, dtype=dtype, device=x.device)
        g0 = torch.zeros(m, dtype=dtype, device=x.device)
    if tb == 0 and ta > 0:  # rows only: the closed form, one pass (the InfoNCE recipe)
        lse = row_reduce(geom, g0, spec=spec)
        f = ta * (log_a - lse)
        if grad == "detach":
            f = f.detach()
        err = _col_sum((f + lse).detach().exp().sub(log_a.exp()).abs().sum(), shard)
        return StreamingOutput(f, g0, lse, 1, True, err, None, "log", **common)
    if ta * tb == 0 and grad == "implicit":  # semi-relaxed: the single update is differentiated
        grad = "unrolled"
    info: dict = {}
    opts: dict[str, Any] = dict(
        spec=spec, shard=shard, domain=_choose_domain(domain, geom, spec, bound), grad=grad,
        ta=ta, tb=tb, iters=iters, tol=tol, check_every=check_every, info=info,
        cg_tol=cg_tol, cg_max_iter=cg_max_iter,
    )  # fmt: skip
    with torch.autocast(device_type=x.device.type, enabled=False):
        f, g, lse = _StreamSinkhorn.apply(x, y, log_a, log_b, f0, g0, opts)
    if grad == "detach":
        f, g = f.detach(), g.detach()
    row_err = _col_sum((info["row_sum"] - log_a.exp()).abs().sum(), shard)
    col_err = (info["col_sum"] - log_b.exp()).abs().sum()
    # the dense solver's meaning of ``converged``: a balanced plan by its final marginal errors,
    # a relaxed one by its stopping test (None when no ``tol`` ran)
    conv: bool | None = bool(info["converged"]) if (info["converged"] or tol is not None) else None
    if ta == 1.0 and tb == 1.0:
        conv = bool(torch.maximum(row_err, col_err) <= marginal_tol * log_b.exp().sum())
    return StreamingOutput(
        f, g, lse, info["n_iters"], conv, row_err, col_err, opts["domain"], **common
    )
