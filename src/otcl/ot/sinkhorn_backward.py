r"""The hand-written backwards of the dense Sinkhorn solver (:mod:`otcl.ot.sinkhorn`).

* :class:`_FusedExpSinkhorn`: exp-domain iterations with the exact reverse of the unrolled
  loop, :math:`O(nm + T(n+m))` memory;
* :class:`_FusedLogSinkhorn`: log-domain iterations, the reverse by recomputing each
  half-iteration's softmax in one reused n x m buffer;
* :class:`_RowLSE`: :math:`\log K v` from a kernel already formed (implicit and detached
  exp-domain solves).
"""

from __future__ import annotations

import torch

from .implicit import _sum_to
from .sinkhorn_iterations import _col_sum, _exp_iterate, _exp_plan_sums, _log_iterate


def _traced_iterate(
    ctx, iterate, S, log_a, log_b, f0, g0, ta, tb, iters, tol, check_every, info, shard
):
    """Run ``iterate`` with a trace for a fused backward: the potentials and the trace.

    The iteration count and the stopping test go to ``info`` (given only with a tolerance: a
    data-dependent iteration count), the options the backward reads to ``ctx``.
    """
    trace: dict = {}
    f, g, n_done, conv = iterate(
        S, log_a, log_b, ta, tb, f0, g0, iters, tol, check_every, trace, shard
    )
    if info is not None:
        info["n_iters"], info["converged"] = n_done, conv
    ctx.ta, ctx.tb, ctx.n_done, ctx.shard = ta, tb, n_done, shard
    return f, g, trace


def _input_grads(ctx, grad_S, bars, likes) -> tuple:
    """The backward's gradients of ``(S, log_a, log_b, f0, g0)``, each reduced to its input's
    shape (``bars`` against ``likes``), and None for the seven non-tensor inputs."""
    grads = [grad_S]
    for i, (val, like) in enumerate(zip(bars, likes, strict=True)):
        grads.append(_sum_to(val, like) if ctx.needs_input_grad[i + 1] else None)
    return (*grads, None, None, None, None, None, None, None)


class _FusedExpSinkhorn(torch.autograd.Function):
    r"""Exp-domain Sinkhorn with an exact, hand-written backward of the *unrolled* iterations.

    Forward: the iterations of :func:`_exp_iterate` (same operations, so the same values),
    run without autograd, keeping only :math:`K = e^S` and the scaling vectors
    :math:`u_t, v_t` and matrix-vector products :math:`r_t = K v_{t-1}`,
    :math:`c_t = K^\top u_t` of every iteration: :math:`O(n m + T(n+m))` memory instead of
    autograd's :math:`O(T\,n m)`.

    Backward (reverse-mode through the same T iterations, in log-potential adjoints
    :math:`\bar f_t = \partial L/\partial \log u_t`, :math:`\bar g_t`):

    .. math::

        \beta_t = -\tau_b\,\bar g_t / c_t,\quad \bar f_t \mathrel{+}= u_t \odot K\beta_t,
        \qquad
        \alpha_t = -\tau_a\,\bar f_t / r_t,\quad \bar g_{t-1} = v_{t-1}\odot K^\top\alpha_t,

    two matrix-vector products per iteration, and the gradient of the kernel is a sum of
    rank-one terms gathered into a single rank-2T product,

    .. math::

        \bar S = K \odot \Big(\sum_t \alpha_t v_{t-1}^\top + u_t \beta_t^\top\Big)
               = K \odot \big([A\;U]\,[V\;B]^\top\big).

    This is exactly the gradient autograd computes through the loop (tested to 1e-5 in fp32),
    at the cost of ~2 forward passes instead of T rank-one updates of an n x m buffer.

    Outputs ``(f, g, row_lse)`` with :math:`\mathrm{row\_lse} = \log K v_T`; the plan is
    left to the caller (:math:`\log P = f + S + g`, by autograd when needed), and losses that
    only need row log-sums of the plan use ``row_lse``, whose gradient is one more rank-one
    term :math:`h v_T^\top` (:math:`h = \bar\ell / K v_T`) and one matrix-vector product.
    """

    @staticmethod
    def forward(ctx, S, log_a, log_b, f0, g0, ta, tb, iters, tol, check_every, info, shard):
        f, g, trace = _traced_iterate(
            ctx, _exp_iterate, S, log_a, log_b, f0, g0, ta, tb, iters, tol, check_every, info, shard
        )
        K = trace["K"]
        # marginals of the final plan P = diag(u) K diag(v), from two matrix-vector products;
        # the row one, K v, is also the output row_lse = log K v = LSE_j(S_ij + g_j)
        kv, row_sum, col_sum = _exp_plan_sums(trace, shard)
        ctx.vecs = (trace["u"], trace["v"], trace["r"], trace["c"], kv)
        ctx.save_for_backward(K, log_a, log_b, f0, g0)
        ctx.mark_non_differentiable(row_sum, col_sum)
        return f, g, kv.log(), row_sum, col_sum

    @staticmethod
    def backward(ctx, grad_f, grad_g, grad_lse, _grad_row_sum, _grad_col_sum):  # pyright: ignore[reportIncompatibleMethodOverride]
        K, log_a, log_b, f0, g0 = ctx.saved_tensors
        us, vs, rs, cs, kv = ctx.vecs
        ta, tb = ctx.ta, ctx.tb
        tiny = torch.finfo(K.dtype).tiny
        fb = torch.zeros_like(us[-1]) if grad_f is None else grad_f
        gb = torch.zeros_like(vs[-1]) if grad_g is None else grad_g
        left, right = [], []  # K_bar = sum_k left_k right_k^T
        if grad_lse is not None:  # row_lse = log(K v_T): d/dS = diag(h / Kv) K diag(v_T)
            h = torch.where(kv > tiny, grad_lse / kv, torch.zeros_like(kv))
            gb = gb + vs[-1] * (h.unsqueeze(-2) @ K).squeeze(-2)
            left.append(h)
            right.append(vs[-1])
        la_bar = torch.zeros_like(fb)
        lb_bar = torch.zeros_like(gb)
        for t in range(ctx.n_done, 0, -1):
            if tb > 0:  # g_t = tb (log b - log c_t), c_t = K^T u_t
                c = cs[t - 1]  # (sharded: g is shared, its adjoint is the sum over ranks)
                gb_all = _col_sum(gb, ctx.shard)
                beta = torch.where(c > tiny, -tb * gb_all / c, torch.zeros_like(c))
                lb_bar = lb_bar + tb * gb
                fb = fb + us[t] * (K @ beta.unsqueeze(-1)).squeeze(-1)
                left.append(us[t])
                right.append(beta)
                gb = torch.zeros_like(gb)
            if ta > 0:  # f_t = ta (log a - log r_t), r_t = K v_{t-1}
                r = rs[t - 1]
                alpha = torch.where(r > tiny, -ta * fb / r, torch.zeros_like(r))
                la_bar = la_bar + ta * fb
                gb = gb + vs[t - 1] * (alpha.unsqueeze(-2) @ K).squeeze(-2)
                left.append(alpha)
                right.append(vs[t - 1])
                fb = torch.zeros_like(fb)
        grad_S = None
        if ctx.needs_input_grad[0]:
            L = torch.stack(left, dim=-1)  # (..., n, k)
            R = torch.stack(right, dim=-1)  # (..., m, k)
            grad_S = (L @ R.transpose(-1, -2)).mul_(K)
        return _input_grads(ctx, grad_S, (la_bar, lb_bar, fb, gb), (log_a, log_b, f0, g0))


class _RowLSE(torch.autograd.Function):
    r""":math:`\mathrm{LSE}_j(S_{ij} + g_j) = \log (K v)_i` from a kernel :math:`K = e^S` already
    computed, with :math:`v = e^g`, :math:`K v` given (no exp pass over S).

    Backward, with :math:`h = \bar\ell / K v`: :math:`\bar S = K \odot h v^\top`,
    :math:`\bar g = v \odot K^\top h` (the row softmax of :math:`S + g`, without forming it).
    """

    @staticmethod
    def forward(ctx, S, g, K, v, kv):
        ctx.save_for_backward(K, v, kv)
        return kv.log()

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        K, v, kv = ctx.saved_tensors
        tiny = torch.finfo(K.dtype).tiny
        h = torch.where(kv > tiny, grad / kv, torch.zeros_like(kv))
        grad_S = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_S = torch.mul(K, h.unsqueeze(-1)).mul_(v.unsqueeze(-2))
        if ctx.needs_input_grad[1]:
            grad_g = v * (h.unsqueeze(-2) @ K).squeeze(-2)
        return grad_S, grad_g, None, None, None


class _FusedLogSinkhorn(torch.autograd.Function):
    r"""Log-domain Sinkhorn with an exact backward of the unrolled iterations by recomputation.

    Autograd through :func:`_log_iterate` keeps one n x m softmax per half-iteration
    (:math:`O(T\,nm)` memory). Here the forward keeps only the potentials and log-sum-exps
    of every iteration (:math:`O(T(n+m))`), and the backward rebuilds each half-iteration's
    softmax in one reused n x m buffer,

    .. math::

        \bar S \mathrel{+}= \operatorname{diag}(\alpha_t)\,\mathrm{softmax}_j(S + g_{t-1})
            + \mathrm{softmax}_i(S + f_t)\operatorname{diag}(\beta_t),\qquad
        \alpha_t = -\tau_a \bar f_t,\ \beta_t = -\tau_b \bar g_t,

    so memory is :math:`O(nm)` whatever ``iters``, for the same arithmetic as autograd.
    """

    @staticmethod
    def forward(ctx, S, log_a, log_b, f0, g0, ta, tb, iters, tol, check_every, info, shard):
        f, g, trace = _traced_iterate(
            ctx, _log_iterate, S, log_a, log_b, f0, g0, ta, tb, iters, tol, check_every, info, shard
        )
        ctx.vecs = (trace["f"], trace["g"], trace["lr"], trace["lc"])
        ctx.save_for_backward(S, log_a, log_b, f0, g0)
        log_plan = (f.unsqueeze(-1) + S).add_(g.unsqueeze(-2))
        return f, g, log_plan

    @staticmethod
    def backward(ctx, grad_f, grad_g, grad_plan):  # pyright: ignore[reportIncompatibleMethodOverride]
        S, log_a, log_b, f0, g0 = ctx.saved_tensors
        fs, gs, lrs, lcs = ctx.vecs
        ta, tb = ctx.ta, ctx.tb
        fb = torch.zeros_like(fs[-1]) if grad_f is None else grad_f
        gb = torch.zeros_like(gs[-1]) if grad_g is None else grad_g
        need_S = ctx.needs_input_grad[0]
        if grad_plan is not None:  # log_plan = f + S + g
            fb = fb + grad_plan.sum(-1)
            gb = gb + grad_plan.sum(-2)
        grad_S = None
        if need_S:
            grad_S = torch.zeros_like(S) if grad_plan is None else grad_plan.clone()
        la_bar = torch.zeros_like(fb)
        lb_bar = torch.zeros_like(gb)
        buf = torch.empty_like(S)
        for t in range(ctx.n_done, 0, -1):
            if tb > 0:  # g_t = tb (log b - LSE_i(S_ij + f_t,i))
                beta = -tb * _col_sum(gb, ctx.shard)
                lb_bar = lb_bar + tb * gb
                torch.add(S, fs[t].unsqueeze(-1), out=buf)
                buf.sub_(lcs[t - 1].unsqueeze(-2)).exp_()  # column softmax
                fb = fb + (buf @ beta.unsqueeze(-1)).squeeze(-1)
                if grad_S is not None:  # need_S
                    grad_S.addcmul_(buf, beta.unsqueeze(-2))
                gb = torch.zeros_like(gb)
            if ta > 0:  # f_t = ta (log a - LSE_j(S_ij + g_{t-1,j}))
                alpha = -ta * fb
                la_bar = la_bar + ta * fb
                torch.add(S, gs[t - 1].unsqueeze(-2), out=buf)
                buf.sub_(lrs[t - 1].unsqueeze(-1)).exp_()  # row softmax
                gb = gb + (alpha.unsqueeze(-2) @ buf).squeeze(-2)
                if grad_S is not None:  # need_S
                    grad_S.addcmul_(buf, alpha.unsqueeze(-1))
                fb = torch.zeros_like(fb)
        return _input_grads(ctx, grad_S, (la_bar, lb_bar, fb, gb), (log_a, log_b, f0, g0))
