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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .._validation import check_choice, check_marginal
from .distributed import Shard
from .implicit import _default_tol, conjugate_gradient
from .problem import Problem
from .sinkhorn import DOMAINS, EXP_SAFE_BOUND, GRAD_MODES, _moved
from .streaming import OnlineColumnLSE, StreamingGeometry, TileSpec

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
    converged: bool
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


def _iterate(x, y, spec, log_a, log_b, ta, tb, f, g, iters, tol, check_every, dom, shard, trace):
    """The iterations: returns (f, g, n_done, converged); ``trace`` (a dict or None) receives
    every iterate for the unrolled backward."""
    n, m = x.shape[0], y.shape[0]
    tiny = torch.finfo(x.dtype).tiny
    exp = dom == "exp"
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
                    kv = (K @ v).clamp_min_(tiny)
                    r[r0:r1] = kv
                    ub = a[r0:r1] / kv if ta == 1.0 else (a[r0:r1] / kv).pow(ta)
                    u_new[r0:r1] = ub
                if tb > 0:
                    col.addmv_(K.transpose(0, 1), u_new[r0:r1])
            u = u_new
            c = None
            if tb > 0:
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
                    lr[r0:r1] = torch.logsumexp(S + g, dim=-1)
                    f_new[r0:r1] = ta * (log_a[r0:r1] - lr[r0:r1])
                if tb > 0:
                    acc.add(S.add_(f_new[r0:r1].unsqueeze(-1)))
            f = f_new
            lc = None
            if tb > 0:
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


def _col_sum(x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    return x if shard is None else shard.sum(x)


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
    def backward(ctx, grad_f, grad_g, grad_lse):
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
                    _unrolled_exp(ctx, *args)
                else:
                    _unrolled_log(ctx, *args)
            elif mode == "implicit":
                _implicit(ctx, *args)
            elif grad_lse is not None:  # detach: row_lse through the scores only
                _detach(ctx, *args)
        return gx, gy, None, None, None, None, None


def _detach(ctx, x, y, f, g, lse, row_sum, col_sum, grad_f, grad_g, grad_lse, gx, gy):
    spec = ctx.opts["spec"]
    for r0, r1 in spec.blocks(x.shape[0]):
        S = spec.scores(x, y, r0, r1)
        P = S.add_(g).sub_(lse[r0:r1].unsqueeze(-1)).exp_()
        spec.backprop(x, y, r0, r1, P.mul_(grad_lse[r0:r1].unsqueeze(-1)), gx, gy)


def _unrolled_exp(ctx, x, y, f, g, lse, row_sum, col_sum, grad_f, grad_g, grad_lse, gx, gy):
    """The reverse of the exp-domain iterations (the dense fused backward, streamed)."""
    opts, tr = ctx.opts, ctx.trace
    spec, shard, ta, tb = opts["spec"], opts["shard"], opts["ta"], opts["tb"]
    us, vs, rs, cs = tr["u"], tr["v"], tr["r"], tr["c"]
    n, m = x.shape[0], y.shape[0]
    tiny = torch.finfo(x.dtype).tiny
    fb = torch.zeros(n, dtype=x.dtype, device=x.device) if grad_f is None else grad_f.clone()
    gb = torch.zeros(m, dtype=x.dtype, device=x.device) if grad_g is None else grad_g.clone()
    left, right = [], []  # S-bar = K * (sum_k left_k right_k^T)
    if grad_lse is not None:  # row_lse = log K v_T
        kv = lse.exp()
        h = torch.where(kv > tiny, grad_lse / kv, torch.zeros_like(kv))
        col = torch.zeros_like(gb)
        for r0, r1 in spec.blocks(n):
            K = spec.scores(x, y, r0, r1).exp_()
            col.addmv_(K.transpose(0, 1), h[r0:r1])
        gb = gb + vs[-1] * col
        left.append(h)
        right.append(vs[-1])
    for t in range(ctx.n_done, 0, -1):
        beta = None
        if tb > 0:
            c = cs[t - 1]
            beta = torch.where(c > tiny, -tb * _col_sum(gb, shard) / c, torch.zeros_like(c))
            left.append(us[t])
            right.append(beta)
            gb = torch.zeros_like(gb)
        alpha = torch.empty_like(fb) if ta > 0 else None
        col = torch.zeros_like(gb)
        last = t == 1
        if last:
            if ta > 0:
                left.append(alpha)  # filled tile by tile below, before each tile reads it
                right.append(vs[t - 1])
            R = torch.stack(right, dim=-1)
        for r0, r1 in spec.blocks(n):
            K = spec.scores(x, y, r0, r1).exp_()
            if tb > 0:
                fb[r0:r1] += us[t][r0:r1] * (K @ beta)
            if ta > 0:
                rb = rs[t - 1][r0:r1]
                ab = torch.where(rb > tiny, -ta * fb[r0:r1] / rb, torch.zeros_like(rb))
                alpha[r0:r1] = ab
                if not last:
                    col.addmv_(K.transpose(0, 1), ab)
            if last:
                L = torch.stack([vec[r0:r1] for vec in left], dim=-1)
                spec.backprop(x, y, r0, r1, K.mul_(L @ R.transpose(0, 1)), gx, gy)
        if ta > 0:
            if not last:
                left.append(alpha)
                right.append(vs[t - 1])
            gb = gb + vs[t - 1] * col
            fb = torch.zeros_like(fb)


def _unrolled_log(ctx, x, y, f, g, lse, row_sum, col_sum, grad_f, grad_g, grad_lse, gx, gy):
    """The reverse of the log-domain iterations (the dense fused log backward, streamed)."""
    opts, tr = ctx.opts, ctx.trace
    spec, shard, ta, tb = opts["spec"], opts["shard"], opts["ta"], opts["tb"]
    fs, gs, lrs, lcs = tr["f"], tr["g"], tr["lr"], tr["lc"]
    n, m = x.shape[0], y.shape[0]
    fb = torch.zeros(n, dtype=x.dtype, device=x.device) if grad_f is None else grad_f.clone()
    gb = torch.zeros(m, dtype=x.dtype, device=x.device) if grad_g is None else grad_g.clone()
    # terms of S-bar: ("row", alpha, g_prev, lr) -> alpha_i softmax_j(S + g_prev);
    # ("col", beta, f_t, lc) -> softmax_i(S + f_t) beta_j
    terms: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    if grad_lse is not None:
        col = torch.zeros_like(gb)
        for r0, r1 in spec.blocks(n):
            P = spec.scores(x, y, r0, r1).add_(g).sub_(lse[r0:r1].unsqueeze(-1)).exp_()
            col.addmv_(P.transpose(0, 1), grad_lse[r0:r1])
        gb = gb + col
        terms.append(("row", grad_lse, g, lse))
    for t in range(ctx.n_done, 0, -1):
        beta = None
        if tb > 0:
            beta = -tb * _col_sum(gb, shard)
            terms.append(("col", beta, fs[t], lcs[t - 1]))
            gb = torch.zeros_like(gb)
        alpha = -ta * fb if ta > 0 else None  # filled tile by tile when tb > 0
        col = torch.zeros_like(gb)
        last = t == 1
        if last and ta > 0:
            terms.append(("row", alpha, gs[t - 1], lrs[t - 1]))
        for r0, r1 in spec.blocks(n):
            S = spec.scores(x, y, r0, r1)
            if tb > 0:
                P = (S + fs[t][r0:r1].unsqueeze(-1)).sub_(lcs[t - 1]).exp_()
                fb[r0:r1] += P @ beta
            if ta > 0:
                alpha[r0:r1] = -ta * fb[r0:r1]
                if not last:
                    P = (S + gs[t - 1]).sub_(lrs[t - 1][r0:r1].unsqueeze(-1)).exp_()
                    col.addmv_(P.transpose(0, 1), alpha[r0:r1])
            if last:
                grad = torch.zeros_like(S)
                for kind, w, pot, norm in terms:
                    if kind == "row":
                        P = (S + pot).sub_(norm[r0:r1].unsqueeze(-1)).exp_()
                        grad.addcmul_(P, w[r0:r1].unsqueeze(-1))
                    else:
                        P = (S + pot[r0:r1].unsqueeze(-1)).sub_(norm).exp_()
                        grad.addcmul_(P, w)
                spec.backprop(x, y, r0, r1, grad, gx, gy)
        if ta > 0:
            if not last:
                terms.append(("row", alpha, gs[t - 1], lrs[t - 1]))
            gb = gb + col
            fb = torch.zeros_like(fb)


def _implicit(ctx, x, y, f, g, lse, row_sum, col_sum, grad_f, grad_g, grad_lse, gx, gy):
    """Implicit differentiation at (f, g): streamed conjugate gradient (module doc)."""
    opts = ctx.opts
    spec, shard, ta, tb, dom = opts["spec"], opts["shard"], opts["ta"], opts["tb"], opts["domain"]
    n, m = x.shape[0], y.shape[0]
    fb = torch.zeros(n, dtype=x.dtype, device=x.device) if grad_f is None else grad_f
    gb = torch.zeros(m, dtype=x.dtype, device=x.device) if grad_g is None else grad_g
    u, v = f.exp(), g.exp()

    def plan(r0: int, r1: int) -> torch.Tensor:
        S = spec.scores(x, y, r0, r1)
        if dom == "exp":
            return S.exp_().mul_(u[r0:r1].unsqueeze(-1)).mul_(v)
        return S.add_(f[r0:r1].unsqueeze(-1)).add_(g).exp_()

    if grad_lse is not None:  # row_lse = LSE_j(S + g): its direct part of g-bar
        col = torch.zeros_like(gb)
        for r0, r1 in spec.blocks(n):
            P = spec.scores(x, y, r0, r1).add_(g).sub_(lse[r0:r1].unsqueeze(-1)).exp_()
            col.addmv_(P.transpose(0, 1), grad_lse[r0:r1])
        gb = gb + col
    if shard is not None:  # g is shared: its adjoint is the sum of every rank's
        gb = shard.sum(gb)

    def plan_mul(xf: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pxg = torch.empty_like(xf)
        ptxf = torch.zeros_like(xg)
        for r0, r1 in spec.blocks(n):
            P = plan(r0, r1)
            pxg[r0:r1] = P @ xg
            ptxf.addmv_(P.transpose(0, 1), xf[r0:r1])
        return pxg, _col_sum(ptxf, shard)

    n_all = n if shard is None else n * shard.world
    tol = _default_tol(x.dtype) if opts["cg_tol"] is None else opts["cg_tol"]
    xf, xg, _ = conjugate_gradient(
        plan_mul, row_sum, col_sum, fb, gb, ta, tb, n=n_all, m=m, tol=tol,
        max_iter=opts["cg_max_iter"], shard=shard,
    )  # fmt: skip
    wf, wg = -ta * xf, -tb * xg
    for r0, r1 in spec.blocks(n):
        P = plan(r0, r1)
        grad = P * (wf[r0:r1].unsqueeze(-1) + wg)
        if grad_lse is not None:  # + h_i softmax_j(S + g) = h_i P_ij / row_sum_i
            grad.addcmul_(P, (grad_lse[r0:r1] / row_sum[r0:r1]).unsqueeze(-1))
        spec.backprop(x, y, r0, r1, grad, gx, gy)


# -- row reductions -------------------------------------------------------------------------


class _RowReduce(torch.autograd.Function):
    r"""Per-row reduction of :math:`S + g` over a tile weight: ``"lse"``:
    :math:`\mathrm{LSE}_j(S_{ij} + g_j + w_{ij})`; ``"sum"``: :math:`\sum_j W_{ij}(S_{ij} + g_j)`.

    Backward: :math:`\bar S_{ij} = h_i\,\mathrm{softmax}_j(\cdot)` or :math:`h_i W_{ij}`,
    :math:`\bar g_j = \sum_i \bar S_{ij}` (this rank's rows), one pass.
    """

    @staticmethod
    def forward(ctx, x, y, g, spec, weight, kind):
        n = x.shape[0]
        out = x.new_empty(n)
        for r0, r1 in spec.blocks(n):
            S = spec.scores(x, y, r0, r1)
            if g is not None:
                S.add_(g)
            w = None if weight is None else weight(r0, r1)
            if kind == "lse":
                out[r0:r1] = torch.logsumexp(S if w is None else S.add_(w), dim=-1)
            else:
                out[r0:r1] = torch.where(w != 0, w * S, torch.zeros_like(S)).sum(-1)
        ctx.spec, ctx.weight, ctx.kind = spec, weight, kind
        ctx.has_g = g is not None
        ctx.save_for_backward(x, y, g if g is not None else x.new_empty(0), out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, g, out = ctx.saved_tensors
        spec, weight, kind = ctx.spec, ctx.weight, ctx.kind
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_g = ctx.has_g and ctx.needs_input_grad[2]
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        gg = torch.zeros(y.shape[0], dtype=x.dtype, device=x.device) if need_g else None
        for r0, r1 in spec.blocks(x.shape[0]):
            w = None if weight is None else weight(r0, r1)
            h = grad[r0:r1].unsqueeze(-1)
            if kind == "lse":
                S = spec.scores(x, y, r0, r1)
                if ctx.has_g:
                    S.add_(g)
                if w is not None:
                    S.add_(w)
                top = out[r0:r1]  # a row with nothing to sum (-inf) has no gradient
                top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
                tile = S.sub_(top.unsqueeze(-1)).exp_().mul_(h)
            else:
                tile = torch.where(w != 0, w * h, torch.zeros_like(w))
            if gg is not None:
                gg += tile.sum(0)
            if need_x or need_y:
                spec.backprop(x, y, r0, r1, tile, gx, gy)
        return gx, gy, gg, None, None, None


def row_reduce(
    geom: StreamingGeometry,
    g: torch.Tensor | None = None,
    *,
    weight: Callable[[int, int], torch.Tensor] | None = None,
    kind: str = "lse",
    spec: TileSpec | None = None,
) -> torch.Tensor:
    r"""(n,) per-row :math:`\mathrm{LSE}_j(S_{ij} + g_j + w_{ij})` (``kind="lse"``, ``weight``
    returns log-weights, ``-inf`` = left out) or :math:`\sum_j W_{ij}(S_{ij} + g_j)`
    (``kind="sum"``, ``weight`` returns the weights), streamed, differentiable in the embeddings
    and ``g``. ``spec``: other scores of the same point clouds (default: the geometry's)."""
    check_choice("kind", kind, ("lse", "sum"))
    if kind == "sum" and weight is None:
        raise ValueError("weight: kind='sum' needs a weight tile function, got None")
    spec = geom.spec if spec is None else spec
    return _RowReduce.apply(geom.x, geom.y, g, spec, weight, kind)


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
    common = dict(geometry=geom, spec=spec, shard=shard, rows_total=rows_total)
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
    opts = dict(
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
    return StreamingOutput(
        f, g, lse, info["n_iters"], info["converged"], row_err, col_err, opts["domain"], **common
    )
