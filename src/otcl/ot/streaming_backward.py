r"""The streamed backwards of :mod:`otcl.ot.streaming_sinkhorn` (see its module docstring).

Each function receives the autograd context of the solve, its saved tensors and the upstream
gradients of ``(f, g, row_lse)``, and accumulates the embeddings' gradients ``gx``, ``gy`` tile
by tile:

* :func:`unrolled_exp` / :func:`unrolled_log`: the exact reverse of the iterations (the dense
  fused backwards, streamed): one pass per iteration for the adjoint recursion on vectors, the
  score gradient formed in the last pass;
* :func:`implicit`: conjugate gradient on streamed plan-vector products, then one pass;
* :func:`detach`: the row log-sum-exps through the scores only.
"""

from __future__ import annotations

from typing import Any

import torch

from .implicit import _default_tol, conjugate_gradient
from .sinkhorn_iterations import _col_sum
from .streaming import TileSpec

__all__ = ["detach", "implicit", "unrolled_exp", "unrolled_log"]


def _adjoint(grad: torch.Tensor | None, size: int, like: torch.Tensor) -> torch.Tensor:
    """A writable copy of an upstream gradient, or zeros of ``size`` (``like``'s dtype and
    device) where it is None."""
    if grad is None:
        return torch.zeros(size, dtype=like.dtype, device=like.device)
    return grad.clone()


def _row_lse_col_adjoint(
    spec: TileSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    g: torch.Tensor,
    lse: torch.Tensor,
    grad_lse: torch.Tensor,
) -> torch.Tensor:
    r"""The direct part of :math:`\bar g` from ``row_lse`` :math:`= \mathrm{LSE}_j(S + g)`:
    :math:`\sum_i \bar\ell_i\, \mathrm{softmax}_j(S_{ij} + g_j)`, one pass over the tiles."""
    col = torch.zeros_like(g)
    for r0, r1 in spec.blocks(x.shape[0]):
        P = spec.scores(x, y, r0, r1).add_(g).sub_(lse[r0:r1].unsqueeze(-1)).exp_()
        col.addmv_(P.transpose(0, 1), grad_lse[r0:r1])
    return col


def detach(
    ctx: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    lse: torch.Tensor,
    row_sum: torch.Tensor,
    col_sum: torch.Tensor,
    grad_f: torch.Tensor | None,
    grad_g: torch.Tensor | None,
    grad_lse: torch.Tensor | None,
    gx: torch.Tensor | None,
    gy: torch.Tensor | None,
) -> None:
    assert grad_lse is not None  # the caller runs it only when row_lse has a gradient
    spec = ctx.opts["spec"]
    for r0, r1 in spec.blocks(x.shape[0]):
        S = spec.scores(x, y, r0, r1)
        P = S.add_(g).sub_(lse[r0:r1].unsqueeze(-1)).exp_()
        spec.backprop(x, y, r0, r1, P.mul_(grad_lse[r0:r1].unsqueeze(-1)), gx, gy)


def unrolled_exp(
    ctx: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    lse: torch.Tensor,
    row_sum: torch.Tensor,
    col_sum: torch.Tensor,
    grad_f: torch.Tensor | None,
    grad_g: torch.Tensor | None,
    grad_lse: torch.Tensor | None,
    gx: torch.Tensor | None,
    gy: torch.Tensor | None,
) -> None:
    """The reverse of the exp-domain iterations (the dense fused backward, streamed)."""
    opts, tr = ctx.opts, ctx.trace
    spec, shard, ta, tb = opts["spec"], opts["shard"], opts["ta"], opts["tb"]
    us, vs, rs, cs = tr["u"], tr["v"], tr["r"], tr["c"]
    n, m = x.shape[0], y.shape[0]
    tiny = torch.finfo(x.dtype).tiny
    fb, gb = _adjoint(grad_f, n, x), _adjoint(grad_g, m, x)
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
        if last and ta > 0:
            left.append(alpha)  # filled tile by tile below, before each tile reads it
            right.append(vs[t - 1])
        R = torch.stack(right, dim=-1) if last else None
        for r0, r1 in spec.blocks(n):
            K = spec.scores(x, y, r0, r1).exp_()
            if tb > 0:
                fb[r0:r1] += us[t][r0:r1] * (K @ beta)
            if ta > 0:
                rb = rs[t - 1][r0:r1]
                ab = torch.where(rb > tiny, -ta * fb[r0:r1] / rb, torch.zeros_like(rb))
                assert alpha is not None
                alpha[r0:r1] = ab
                if not last:
                    col.addmv_(K.transpose(0, 1), ab)
            if last:
                assert R is not None
                L = torch.stack([vec[r0:r1] for vec in left], dim=-1)
                spec.backprop(x, y, r0, r1, K.mul_(L @ R.transpose(0, 1)), gx, gy)
        if ta > 0:
            if not last:
                left.append(alpha)
                right.append(vs[t - 1])
            gb = gb + vs[t - 1] * col
            fb = torch.zeros_like(fb)


def unrolled_log(
    ctx: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    lse: torch.Tensor,
    row_sum: torch.Tensor,
    col_sum: torch.Tensor,
    grad_f: torch.Tensor | None,
    grad_g: torch.Tensor | None,
    grad_lse: torch.Tensor | None,
    gx: torch.Tensor | None,
    gy: torch.Tensor | None,
) -> None:
    """The reverse of the log-domain iterations (the dense fused log backward, streamed)."""
    opts, tr = ctx.opts, ctx.trace
    spec, shard, ta, tb = opts["spec"], opts["shard"], opts["ta"], opts["tb"]
    fs, gs, lrs, lcs = tr["f"], tr["g"], tr["lr"], tr["lc"]
    n, m = x.shape[0], y.shape[0]
    fb, gb = _adjoint(grad_f, n, x), _adjoint(grad_g, m, x)
    # terms of S-bar: ("row", alpha, g_prev, lr) -> alpha_i softmax_j(S + g_prev);
    # ("col", beta, f_t, lc) -> softmax_i(S + f_t) beta_j
    terms: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    if grad_lse is not None:
        gb = gb + _row_lse_col_adjoint(spec, x, y, g, lse, grad_lse)
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
            assert alpha is not None
            terms.append(("row", alpha, gs[t - 1], lrs[t - 1]))
        for r0, r1 in spec.blocks(n):
            S = spec.scores(x, y, r0, r1)
            if tb > 0:
                P = (S + fs[t][r0:r1].unsqueeze(-1)).sub_(lcs[t - 1]).exp_()
                fb[r0:r1] += P @ beta
            if ta > 0:
                assert alpha is not None
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
                assert alpha is not None
                terms.append(("row", alpha, gs[t - 1], lrs[t - 1]))
            gb = gb + col
            fb = torch.zeros_like(fb)


def implicit(
    ctx: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    lse: torch.Tensor,
    row_sum: torch.Tensor,
    col_sum: torch.Tensor,
    grad_f: torch.Tensor | None,
    grad_g: torch.Tensor | None,
    grad_lse: torch.Tensor | None,
    gx: torch.Tensor | None,
    gy: torch.Tensor | None,
) -> None:
    """Implicit differentiation at (f, g): streamed conjugate gradient (module doc)."""
    opts = ctx.opts
    spec, shard, ta, tb, dom = opts["spec"], opts["shard"], opts["ta"], opts["tb"], opts["domain"]
    n, m = x.shape[0], y.shape[0]
    fb, gb = _adjoint(grad_f, n, x), _adjoint(grad_g, m, x)
    u, v = f.exp(), g.exp()

    def plan(r0: int, r1: int) -> torch.Tensor:
        S = spec.scores(x, y, r0, r1)
        if dom == "exp":
            return S.exp_().mul_(u[r0:r1].unsqueeze(-1)).mul_(v)
        return S.add_(f[r0:r1].unsqueeze(-1)).add_(g).exp_()

    if grad_lse is not None:  # row_lse = LSE_j(S + g): its direct part of g-bar
        gb = gb + _row_lse_col_adjoint(spec, x, y, g, lse, grad_lse)
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
