r"""Implicit differentiation of Sinkhorn potentials at the fixed point.

The potentials returned by :func:`otcl.ot.sinkhorn` solve the fixed-point equations

.. math::

    f = \tau_a\big(\log a - \mathrm{LSE}_j(S_{ij} + g_j)\big),\qquad
    g = \tau_b\big(\log b - \mathrm{LSE}_i(S_{ij} + f_i)\big).

Differentiating them (implicit function theorem; Luise et al., NeurIPS 2018; Eisenberger et
al., CVPR 2022; OTT-JAX's ``implicit_differentiation``) gives, with the plan
:math:`P = e^{f + S + g}`, its marginals :math:`r = P\mathbf 1`, :math:`c = P^\top\mathbf 1`
and upstream gradients :math:`(\bar f, \bar g)`, the *adjoint* system, symmetric in the
variables :math:`x_f = w_f / r`, :math:`x_g = w_g / c`:

.. math::

    H x = \begin{pmatrix} \tau_a \operatorname{diag}(r) & \tau_a\tau_b P \\
                          \tau_a\tau_b P^\top & \tau_b \operatorname{diag}(c) \end{pmatrix}
          \begin{pmatrix} x_f \\ x_g \end{pmatrix}
        = \begin{pmatrix} \tau_a \bar f \\ \tau_b \bar g \end{pmatrix},
    \qquad
    x^\top H x = \tau_a\tau_b\sum_{ij} P_{ij}(x_{f,i} + x_{g,j})^2
        + \tau_a(1-\tau_b)\,r^\top x_f^2 + \tau_b(1-\tau_a)\,c^\top x_g^2 \ \ge 0,

and then

.. math::

    \bar S_{ij} = -P_{ij}\,(\tau_a x_{f,i} + \tau_b x_{g,j}),\qquad
    \overline{\log a} = \tau_a\, r \odot x_f,\qquad \overline{\log b} = \tau_b\, c\odot x_g .

:math:`H` is positive definite when :math:`\tau_a\tau_b < 1` (unbalanced) and positive
semi-definite with the single null direction :math:`e = (\mathbf 1_n, -\mathbf 1_m)` in the
balanced case: the *gauge* :math:`(f + k, g - k)` leaves the plan unchanged. We solve by
Jacobi-preconditioned conjugate gradient (two matrix-vector products with :math:`P` per
step, batched), after projecting the right-hand side on :math:`e^\perp` and returning the
solution orthogonal to :math:`e`. For any loss that depends on the potentials only through the
plan (gauge-invariant: every cross-entropy / KL on :math:`P`) the right-hand side is already
orthogonal to :math:`e` and the result is *the* derivative; for gauge-dependent quantities
(e.g. :math:`g` alone, or RINCE on :math:`K v` in the balanced case) it is the derivative in the
gauge :math:`\sum_i \mathrm{d}f_i = \sum_j \mathrm{d}g_j`.

Memory is :math:`O(nm)` (one plan, rebuilt in the backward) whatever the number of Sinkhorn
iterations; the backward costs two :math:`n\times m` passes per CG step.

Semi-relaxed problems (:math:`\tau_a = 0` or :math:`\tau_b = 0`) are solved exactly by one
update of the constrained side; there the update itself is differentiated (closed form).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .distributed import Shard

__all__ = ["conjugate_gradient", "implicit_potentials", "solve_adjoint"]


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reduce a broadcast gradient to the shape of ``like``."""
    return grad if grad.shape == like.shape else grad.sum_to_size(like.shape)


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def solve_adjoint(
    P: torch.Tensor,
    rhs_f: torch.Tensor,
    rhs_g: torch.Tensor,
    ta: float,
    tb: float,
    *,
    tol: float | None = None,
    max_iter: int = 500,
    marginals: tuple[torch.Tensor, torch.Tensor] | None = None,
    shard: Shard | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    r"""Solve :math:`H x = (\tau_a \bar f, \tau_b \bar g)` by preconditioned conjugate gradient.

    Args:
        P: (..., n, m) plan.
        rhs_f: (..., n) upstream gradient :math:`\bar f` of the row potential.
        rhs_g: (..., m) upstream gradient :math:`\bar g` of the column potential.
        ta, tb: scaling exponents in (0, 1].
        tol: relative residual tolerance (default 1e-6 in fp32, 1e-12 in fp64).
        max_iter: maximum CG steps.
        marginals: ``(P.sum(-1), P.sum(-2))`` if already computed (the column sums global).
        shard: this rank's share when ``P`` holds only this rank's rows of the global plan
            (``rhs_f`` local, ``rhs_g`` the global adjoint of the shared column potential):
            the products with :math:`P^\top` and the dot products are summed over ranks.
    Returns:
        ``(x_f, x_g, steps)``; in the balanced case (ta = tb = 1) the solution orthogonal to
        the gauge direction :math:`(\mathbf 1, -\mathbf 1)`.
    """

    def rows_sum(x: torch.Tensor) -> torch.Tensor:  # a sum over the rows of every rank
        return x if shard is None else shard.sum(x)

    n = P.shape[-2] * (1 if shard is None else shard.world)
    m = P.shape[-1]
    r, c = (P.sum(-1), rows_sum(P.sum(-2))) if marginals is None else marginals

    def plan_mul(xf: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pxg = (P @ xg.unsqueeze(-1)).squeeze(-1)
        ptxf = rows_sum((xf.unsqueeze(-2) @ P).squeeze(-2))
        return pxg, ptxf

    tol = _default_tol(P.dtype) if tol is None else tol
    return conjugate_gradient(
        plan_mul, r, c, rhs_f, rhs_g, ta, tb, n=n, m=m, tol=tol, max_iter=max_iter, shard=shard
    )


def conjugate_gradient(
    plan_mul: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    r: torch.Tensor,
    c: torch.Tensor,
    rhs_f: torch.Tensor,
    rhs_g: torch.Tensor,
    ta: float,
    tb: float,
    *,
    n: int,
    m: int,
    tol: float,
    max_iter: int,
    shard: Shard | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    r"""The adjoint solve of :func:`solve_adjoint` with the plan given as an operator.

    Args:
        plan_mul: ``(x_f, x_g) -> (P x_g, P^T x_f)`` (the second summed over ranks when
            sharded): two plan-vector products, e.g. streamed over tiles
            (:mod:`otcl.ot.streaming_sinkhorn`).
        r, c: the plan's row and (global) column sums.
        rhs_f, rhs_g, ta, tb, tol, max_iter, shard: as :func:`solve_adjoint`.
        n, m: the global row and column counts.
    Returns:
        ``(x_f, x_g, steps)``.
    """
    dtype = r.dtype

    def rows_sum(x: torch.Tensor) -> torch.Tensor:  # a sum over the rows of every rank
        return x if shard is None else shard.sum(x)

    bf, bg = ta * rhs_f, tb * rhs_g
    balanced = ta == 1.0 and tb == 1.0
    if balanced:  # consistent right-hand side: remove the component along (1, -1)
        k = (rows_sum(bf.sum(-1, keepdim=True)) - bg.sum(-1, keepdim=True)) / (n + m)
        bf, bg = bf - k, bg + k
    tt = ta * tb
    df, dg = ta * r, tb * c
    tiny = torch.finfo(dtype).tiny
    inv_f = torch.where(df > tiny, 1.0 / df.clamp_min(tiny), torch.zeros_like(df))
    inv_g = torch.where(dg > tiny, 1.0 / dg.clamp_min(tiny), torch.zeros_like(dg))

    def hmul(xf: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pxg, ptxf = plan_mul(xf, xg)
        return df * xf + tt * pxg, tt * ptxf + dg * xg

    def dot(af, ag, bf_, bg_):
        return rows_sum((af * bf_).sum(-1)) + (ag * bg_).sum(-1)

    xf, xg = torch.zeros_like(bf), torch.zeros_like(bg)
    rf, rg = bf, bg
    zf, zg = inv_f * rf, inv_g * rg
    pf, pg = zf, zg
    rz = dot(rf, rg, zf, zg)
    b_norm = dot(bf, bg, bf, bg).sqrt()
    thresh = tol * b_norm
    steps = 0
    for steps in range(1, max_iter + 1):  # noqa: B007
        hf, hg = hmul(pf, pg)
        php = dot(pf, pg, hf, hg)
        alpha = torch.where(php > 0, rz / php.clamp_min(tiny), torch.zeros_like(php))
        xf = xf + alpha.unsqueeze(-1) * pf
        xg = xg + alpha.unsqueeze(-1) * pg
        rf = rf - alpha.unsqueeze(-1) * hf
        rg = rg - alpha.unsqueeze(-1) * hg
        if bool((dot(rf, rg, rf, rg).sqrt() <= thresh).all()):
            break
        zf, zg = inv_f * rf, inv_g * rg
        rz_new = dot(rf, rg, zf, zg)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        rz = rz_new
        pf = zf + beta.unsqueeze(-1) * pf
        pg = zg + beta.unsqueeze(-1) * pg
    if balanced:
        k = (rows_sum(xf.sum(-1, keepdim=True)) - xg.sum(-1, keepdim=True)) / (n + m)
        xf, xg = xf - k, xg + k
    return xf, xg, steps


class _ImplicitSinkhorn(torch.autograd.Function):
    """Identity on (f, g) in the forward; adjoint solve at the fixed point in the backward."""

    @staticmethod
    def forward(ctx, S, log_a, log_b, f, g, ta, tb, tol, max_iter, kernel, shard):
        ctx.ta, ctx.tb, ctx.tol, ctx.max_iter = ta, tb, tol, max_iter
        ctx.kernel, ctx.shard = kernel, shard
        # with the kernel, S itself is not needed again (and need not stay alive)
        ctx.save_for_backward(S if kernel is None else None, log_a, log_b, f, g)
        return f.clone(), g.clone()

    @staticmethod
    def backward(ctx, grad_f, grad_g):  # pyright: ignore[reportIncompatibleMethodOverride]
        S, log_a, log_b, f, g = ctx.saved_tensors
        ta, tb = ctx.ta, ctx.tb
        if grad_f is None:
            grad_f = torch.zeros_like(f)
        if grad_g is None:
            grad_g = torch.zeros_like(g)
        shard = ctx.shard
        world = 1 if shard is None else shard.world
        if shard is not None:  # g is shared: its adjoint is the sum of every rank's
            grad_g = shard.sum(grad_g)
        with torch.no_grad():
            if ctx.kernel is not None:  # P = diag(u) K diag(v): no exp pass
                P = torch.mul(ctx.kernel, f.exp().unsqueeze(-1)).mul_(g.exp().unsqueeze(-2))
            else:
                P = (f.unsqueeze(-1) + S).add_(g.unsqueeze(-2)).exp_()
            r = P.sum(-1)
            c = P.sum(-2) if shard is None else shard.sum(P.sum(-2))
            xf, xg, _ = solve_adjoint(
                P,
                grad_f,
                grad_g,
                ta,
                tb,
                tol=ctx.tol,
                max_iter=ctx.max_iter,
                marginals=(r, c),
                shard=shard,
            )
            grad_S = grad_la = grad_lb = None
            gla, glb = ta * r * xf, tb * c * xg
            if ta == 1.0 and tb == 1.0:
                # Balanced: the adjoint system only covers mass-preserving changes of the
                # marginals. Complete it as the iterations do (the last update matches the
                # columns): scaling a leaves the plan unchanged, scaling b by e^k moves g by k.
                a, b = log_a.exp().expand_as(gla), log_b.exp().expand_as(glb)
                a_sum, gla_sum = a.sum(-1, keepdim=True), gla.sum(-1, keepdim=True)
                if shard is not None:
                    a_sum, gla_sum = shard.sum(a_sum), shard.sum(gla_sum)
                gla = gla - gla_sum * a / a_sum
                excess = grad_g.sum(-1, keepdim=True) - glb.sum(-1, keepdim=True)
                glb = glb + excess * b / b.sum(-1, keepdim=True)
            # the shared inputs' gradients (log b) are returned as equal shares over ranks
            glb = glb / world
            if ctx.needs_input_grad[1]:
                grad_la = _sum_to(gla, log_a)
            if ctx.needs_input_grad[2]:
                grad_lb = _sum_to(glb, log_b)
            if ctx.needs_input_grad[0]:
                grad_S = P.mul_(-(ta * xf).unsqueeze(-1) - (tb * xg).unsqueeze(-2))
        return grad_S, grad_la, grad_lb, None, None, None, None, None, None, None, None


def implicit_potentials(
    S: torch.Tensor,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    ta: float,
    tb: float,
    f: torch.Tensor,
    g: torch.Tensor,
    *,
    tol: float | None = None,
    max_iter: int = 500,
    kernel: torch.Tensor | None = None,
    shard: Shard | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Attach implicit gradients to converged potentials.

    Args:
        S: (..., n, m) scores (the log-kernel), possibly requiring grad; ``-inf`` = excluded.
        log_a, log_b: (n,)/(..., n) and (m,)/(..., m) log-marginals.
        ta, tb: scaling exponents :math:`\tau = \rho/(1+\rho)` in [0, 1].
        f, g: (..., n), (..., m) potentials from a (no-grad) Sinkhorn solve, at the fixed point.
        tol, max_iter: conjugate-gradient tolerance (relative residual; default 1e-6 in fp32,
            1e-12 in fp64) and step limit of the adjoint solve.
        kernel: :math:`K = e^S` if already computed (exp-domain solve): the backward then forms
            the plan as :math:`\operatorname{diag}(e^f) K \operatorname{diag}(e^g)`, without an
            exp pass over S.
        shard: this rank's share of a row-sharded problem (:mod:`otcl.ot.distributed`).
    Returns:
        ``(f, g)`` with the same values, differentiable w.r.t. ``S``, ``log_a``, ``log_b``
        through the fixed-point equations (see the module docstring). Semi-relaxed problems
        (ta = 0 or tb = 0) differentiate their closed-form single update.
    """
    f, g = f.detach(), g.detach()
    if tb == 0 and ta == 0:
        return f, g
    if tb == 0:  # rows only: f = ta (log a - LSE_j(S + g)), g fixed
        return ta * (log_a - torch.logsumexp(S + g.unsqueeze(-2), dim=-1)), g
    if ta == 0:  # columns only
        col = S + f.unsqueeze(-1)
        lse = torch.logsumexp(col, dim=-2) if shard is None else shard.logsumexp_rows(col)
        return f, tb * (log_b - lse)
    return _ImplicitSinkhorn.apply(S, log_a, log_b, f, g, ta, tb, tol, max_iter, kernel, shard)
