r"""The *solver*: entropic couplings by (unbalanced) Sinkhorn scaling.

Solves, for scores :math:`S` of shape (..., n, m) and marginals :math:`a, b`,

.. math::

    P^\star = \arg\max_{P\ge 0}\; \langle P, S\rangle + H(P)
        - \rho_a \mathrm{KL}(P\mathbf 1\|a) - \rho_b \mathrm{KL}(P^\top\mathbf 1\|b),

whose solution is :math:`P_{ij} = \exp(f_i + S_{ij} + g_j)` with the fixed point

.. math::

    f \leftarrow \tau_a\big(\log a - \mathrm{LSE}_j(S_{ij} + g_j)\big),\qquad
    g \leftarrow \tau_b\big(\log b - \mathrm{LSE}_i(S_{ij} + f_i)\big),\qquad
    \tau = \rho/(1+\rho).

``rho=None`` is a hard marginal (:math:`\tau=1`, plain Sinkhorn), ``rho=0`` a free one
(:math:`\tau = 0`). With :math:`S = -C/\varepsilon` the plan equals POT's
``ot.sinkhorn_log(a, b, C, eps)`` and, with ``rho = reg_m / eps``,
``ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, reg_m, reg_type="entropy")``.

One *iteration* is one row update followed by one column update. Starting from
:math:`g = 0`, a single row update is the row softmax: InfoNCE is the half-iteration member
of the family (Shi et al., 2023; Chen et al., 2024).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .._validation import check_choice, check_int_at_least, check_marginal, check_nonneg
from .distributed import Shard
from .geometry import Geometry
from .implicit import implicit_potentials
from .problem import Problem

__all__ = [
    "BACKWARDS",
    "DOMAINS",
    "GRAD_MODES",
    "Sinkhorn",
    "SinkhornOutput",
    "sinkhorn",
    "solve",
]

GRAD_MODES = ("unrolled", "implicit", "detach")
DOMAINS = ("auto", "log", "exp")
# exp-domain scaling is used only when |S| <= this bound (fp32: e^30 ~ 1e13, far from overflow)
EXP_SAFE_BOUND = 30.0


@dataclass(frozen=True, eq=False)
class SinkhornOutput:
    """Result of a coupling solve (immutable; :meth:`replace` derives a modified copy).

    Attributes:
        f: (..., n) row potential (log of the row scaling u).
        g: (..., m) column potential (log of the column scaling v).
        scores: (..., n, m) the scores :math:`S` the plan was computed from (float32/64).
        n_iters: iterations run (row + column update = 1).
        tol_met: the solver's stopping test: True when ``tol`` was met or the problem has a
            closed form (one update is exact), False when ``tol`` was given and not met, None
            when no test ran (no ``tol``).
        row_error: (...,) L1 error of the row marginal :math:`\\|P1 - a\\|_1`.
        col_error: (...,) L1 error of the column marginal :math:`\\|P^T1 - b\\|_1`.
        domain: ``"log"`` or ``"exp"``: the arithmetic used.
        row_lse: (..., n) :math:`\\mathrm{LSE}_j(S_{ij} + g_j) = \\log (K v)_i`, differentiable,
            when the solver has it for free (exp-domain solves), else None. The log row sums of
            the plan are ``f + row_lse``; divergences use it to skip the n x m plan.
        stored_log_plan: the (..., n, m) log-plan when the solver formed it, else None; read
            :attr:`log_plan` instead.
        shard: this rank's :class:`~otcl.ot.distributed.Shard` when the rows are a share of the
            global problem's (``gather_distributed``), else None; ``f``, ``row_lse``, ``scores``
            and the plan are then this rank's rows, ``g`` is global.
        rows_total: the global problem's row count when sharded (None: ``f.shape[-1]``).
        marginal_ok: for a balanced problem (both marginals hard), a 0-dim bool tensor: whether
            both marginal errors are within the solver's ``marginal_tol`` (relative to the
            total mass); None for the other problems. Read :attr:`converged`.
    """

    f: torch.Tensor
    g: torch.Tensor
    scores: torch.Tensor
    n_iters: int
    tol_met: bool | None
    row_error: torch.Tensor
    col_error: torch.Tensor
    domain: str = "log"
    row_lse: torch.Tensor | None = None
    stored_log_plan: torch.Tensor | None = field(default=None, repr=False)
    shard: Shard | None = field(default=None, repr=False)
    rows_total: int | None = None
    marginal_ok: torch.Tensor | None = field(default=None, repr=False)

    @property
    def converged(self) -> bool | None:
        r"""Whether the plan is converged, as far as it can be measured.

        * balanced problems (both marginals hard): the final marginal errors, both within the
          solver's ``marginal_tol`` (default 1e-5) relative to the total mass,
          :math:`\max(\|P1 - a\|_1, \|P^\top 1 - b\|_1) \le \mathrm{tol}\cdot\|b\|_1`, whatever
          ``tol`` and ``iters`` were (one host sync, on reading);
        * closed forms (a free side, or the total mass only): True;
        * a KL-relaxed side (unbalanced): the plan's marginals differ from ``a``, ``b`` by
          design, so their error tells nothing: whether ``tol`` was met, or None when no ``tol``
          was given (not measured).
        """
        if self.marginal_ok is not None:
            return bool(self.marginal_ok)
        return self.tol_met

    @property
    def log_plan(self) -> torch.Tensor:
        """(..., n, m) :math:`\\log P = f + S + g` (``-inf`` on masked entries).

        Formed on each access when the solver did not form it (the exp-domain paths); call
        :meth:`with_log_plan` once to share one n x m buffer between several readers.
        """
        if self.stored_log_plan is not None:
            return self.stored_log_plan
        # one n x m buffer (a chained out-of-place sum allocates two)
        return (self.f.unsqueeze(-1) + self.scores).add_(self.g.unsqueeze(-2))

    @property
    def plan(self) -> torch.Tensor:
        """(..., n, m) the coupling :math:`P`."""
        return self.log_plan.exp()

    def with_log_plan(self) -> SinkhornOutput:
        """This output with its log-plan formed and stored (itself if it already is)."""
        if self.stored_log_plan is not None:
            return self
        return self.replace(stored_log_plan=self.log_plan)

    def replace(self, **changes: Any) -> SinkhornOutput:
        """A copy with some fields changed (e.g. potentials moved to another gauge)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        shape = tuple(self.f.shape) + tuple(self.g.shape[-1:])
        return (
            f"SinkhornOutput(shape={shape}, n_iters={self.n_iters}, converged={self.converged}, "
            f"domain={self.domain!r})"
        )


def _log_marginal(m: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if m is None:
        return torch.full((n,), -math.log(n), dtype=like.dtype, device=like.device)
    return m.log()


def _choose_domain(
    domain: str, scores: torch.Tensor, bound: float | None, shard: Shard | None = None
) -> str:
    if domain != "auto":
        return domain
    if bound is None:
        finite = scores.detach()
        finite = finite[torch.isfinite(finite)]
        top = finite.abs().max() if finite.numel() else finite.new_zeros(())
        bound = float(top if shard is None else shard.max(top))
    return "exp" if bound <= EXP_SAFE_BOUND else "log"


def _col_lse(x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """LSE over the rows (dim -2) of every rank."""
    return torch.logsumexp(x, dim=-2) if shard is None else shard.logsumexp_rows(x)


def _col_sum(x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """Column sums (already over the local rows) completed over every rank."""
    return x if shard is None else shard.sum(x)


def _moved(f, f_prev, g, g_prev, shard: Shard | None) -> float:
    """sup-norm move of the potentials (one host sync; one all-reduce when sharded)."""
    df = (f - f_prev).abs().amax(dim=-1).max().detach()
    if shard is not None:
        df = shard.max(df)
    return float(torch.maximum(df, (g - g_prev).abs().amax(dim=-1).max().detach()))


def _log_iterate(S, log_a, log_b, ta, tb, f, g, iters, tol, check_every, trace=None, shard=None):
    # ``trace`` (a dict, no-grad use only) receives every potential and log-sum-exp for the
    # recomputing backward of :class:`_FusedLogSinkhorn`.
    if trace is not None:
        trace.update(f=[f], g=[g], lr=[], lc=[])
    n_done = 0
    converged = False
    lr = lc = None
    for it in range(iters):
        f_prev, g_prev = f, g
        if ta > 0:
            lr = torch.logsumexp(S + g.unsqueeze(-2), dim=-1)
            f = ta * (log_a - lr)
        if tb > 0:
            lc = _col_lse(S + f.unsqueeze(-1), shard)
            g = tb * (log_b - lc)
        if trace is not None:
            trace["f"].append(f)
            trace["g"].append(g)
            trace["lr"].append(lr if ta > 0 else None)
            trace["lc"].append(lc if tb > 0 else None)
        n_done = it + 1
        if ta == 0 or tb == 0:  # semi-relaxed: one update of the constrained side is exact
            converged = True
            break
        if tol is not None and (n_done % check_every == 0 or n_done == iters):
            if _moved(f, f_prev, g, g_prev, shard) < tol:
                converged = True
                break
    return f, g, n_done, converged


def _exp_iterate(S, log_a, log_b, ta, tb, f, g, iters, tol, check_every, trace=None, shard=None):
    # u = (a / K v)^ta, v = (b / K^T u)^tb in the exp domain: one matvec per update, no exp/log
    # of the n x m matrix inside the loop. Safe because |S| <= EXP_SAFE_BOUND.
    # ``trace`` (a dict, no-grad use only) receives K and every iterate for a hand-written
    # backward (:class:`_FusedExpSinkhorn`).
    K = S.exp()
    a, b = log_a.exp(), log_b.exp()
    u, v = f.exp(), g.exp()
    tiny = torch.finfo(K.dtype).tiny
    if trace is not None:
        trace.update(K=K, u=[u], v=[v], r=[], c=[])
    n_done = 0
    converged = False
    Kv = Ktu = None
    for it in range(iters):
        u_prev, v_prev = u, v
        if ta > 0:
            Kv = (K @ v.unsqueeze(-1)).squeeze(-1).clamp_min(tiny)
            u = a / Kv if ta == 1.0 else (a / Kv).pow(ta)
        if tb > 0:
            Ktu = _col_sum((u.unsqueeze(-2) @ K).squeeze(-2), shard).clamp_min(tiny)
            v = b / Ktu if tb == 1.0 else (b / Ktu).pow(tb)
        if trace is not None:
            trace["u"].append(u)
            trace["v"].append(v)
            trace["r"].append(Kv if ta > 0 else None)
            trace["c"].append(Ktu if tb > 0 else None)
        n_done = it + 1
        if ta == 0 or tb == 0:
            converged = True
            break
        if tol is not None and (n_done % check_every == 0 or n_done == iters):
            if _moved(u.log(), u_prev.log(), v.log(), v_prev.log(), shard) < tol:
                converged = True
                break
    return u.log(), v.log(), n_done, converged


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reduce a broadcast gradient to the shape of ``like``."""
    return grad if grad.shape == like.shape else grad.sum_to_size(like.shape)


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
        trace: dict = {}
        f, g, n_done, conv = _exp_iterate(
            S, log_a, log_b, ta, tb, f0, g0, iters, tol, check_every, trace, shard
        )
        if info is not None:  # only with a tolerance (a data-dependent iteration count)
            info["n_iters"], info["converged"] = n_done, conv
        K = trace["K"]
        # marginals of the final plan P = diag(u) K diag(v), from two matrix-vector products;
        # the row one, K v, is also the output row_lse = log K v = LSE_j(S_ij + g_j)
        u, v = trace["u"][-1], trace["v"][-1]
        kv = (K @ v.unsqueeze(-1)).squeeze(-1)
        row_sum = u * kv
        col_sum = v * _col_sum((u.unsqueeze(-2) @ K).squeeze(-2), shard)
        ctx.ta, ctx.tb, ctx.n_done, ctx.shard = ta, tb, n_done, shard
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
        grads = [grad_S]
        for i, (val, like) in enumerate(((la_bar, log_a), (lb_bar, log_b), (fb, f0), (gb, g0))):
            grads.append(_sum_to(val, like) if ctx.needs_input_grad[i + 1] else None)
        return (*grads, None, None, None, None, None, None, None)


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
        trace: dict = {}
        f, g, n_done, conv = _log_iterate(
            S, log_a, log_b, ta, tb, f0, g0, iters, tol, check_every, trace, shard
        )
        if info is not None:  # only with a tolerance (a data-dependent iteration count)
            info["n_iters"], info["converged"] = n_done, conv
        ctx.ta, ctx.tb, ctx.n_done, ctx.shard = ta, tb, n_done, shard
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
        grads = [grad_S]
        for i, (val, like) in enumerate(((la_bar, log_a), (lb_bar, log_b), (fb, f0), (gb, g0))):
            grads.append(_sum_to(val, like) if ctx.needs_input_grad[i + 1] else None)
        return (*grads, None, None, None, None, None, None, None)


BACKWARDS = ("fused", "autograd")


@dataclass(frozen=True)
class Sinkhorn:
    r"""The coupling solver: entropic OT of a score matrix under a :class:`Problem` (immutable).

    ``Sinkhorn(**options)(scores_or_geometry, problem)`` returns a :class:`SinkhornOutput`: the
    solver's options live here, the marginals and relaxations in the problem, the scores in the
    geometry (as OTT-JAX's ``Sinkhorn()(LinearProblem(geom, a, b, tau_a, tau_b))``).

    Args:
        iters: maximum number of iterations (row + column update); >= 1.
        tol: stop when the potentials move less than ``tol`` (sup norm), checked every
            ``check_every`` iterations (each check syncs with the host). None = run ``iters``
            iterations, the sync-free choice for training.
        check_every: iterations between two convergence checks.
        grad: ``"unrolled"`` (gradient of the iterations), ``"implicit"`` (implicit
            differentiation at the fixed point, memory independent of ``iters``) or
            ``"detach"`` (potentials treated as constants: the envelope-style gradient).
        domain: ``"log"`` (log-sum-exp updates, always stable), ``"exp"`` (matrix-vector scaling
            of :math:`K = e^S`, faster; only for bounded scores) or ``"auto"`` (exp when
            :math:`|S| \le 30`, log otherwise).
        backward: how ``grad="unrolled"`` is differentiated: ``"fused"`` (default: hand-written
            backward of the same iterations, :math:`O(nm)` memory) or ``"autograd"`` (autograd
            through the loop, :math:`O(\text{iters}\cdot nm)` memory: the reference).
        check_values: check the scores for NaN/+inf and the marginals' values, and that a
            balanced problem's marginals have equal total mass (each check is a host sync);
            ``False`` for a training step whose inputs are known good (otcl's losses pass their
            ``check_inputs``). With no check and no ``tol`` a solve syncs nothing and compiles
            (``torch.compile``) into one graph.
        marginal_tol: the relative L1 marginal error under which a balanced solve counts as
            converged (:attr:`SinkhornOutput.converged`); it does not stop the iterations.

    Example:
        >>> import torch
        >>> from otcl.ot import Problem, Sinkhorn
        >>> out = Sinkhorn(iters=200)(torch.randn(4, 5), Problem())
        >>> torch.allclose(out.plan.sum(-1), torch.full((4,), 0.25), atol=1e-5)
        True
    """

    iters: int = 100
    tol: float | None = None
    check_every: int = 10
    grad: str = "unrolled"
    domain: str = "auto"
    backward: str = "fused"
    check_values: bool = True
    marginal_tol: float = 1e-5

    def __post_init__(self) -> None:
        check_int_at_least("iters", self.iters, 1)
        check_int_at_least("check_every", self.check_every, 1)
        check_choice("grad", self.grad, GRAD_MODES)
        check_choice("domain", self.domain, DOMAINS)
        check_choice("backward", self.backward, BACKWARDS)
        if self.tol is not None:
            check_nonneg("tol", self.tol)
        check_nonneg("marginal_tol", self.marginal_tol)

    def replace(self, **changes: Any) -> Sinkhorn:
        """A solver with some options changed."""
        return dataclasses.replace(self, **changes)

    def __call__(
        self,
        scores: torch.Tensor | Geometry,
        problem: Problem | None = None,
        *,
        bound: float | None = None,
        init: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> SinkhornOutput:
        """Solve ``problem`` (default: balanced, uniform marginals) on ``scores``.

        Args:
            scores: (..., n, m) log-kernel :math:`S` (e.g. similarity / eps, or -C / eps);
                ``-inf`` entries are excluded pairs; or a :class:`~otcl.ot.Geometry`, whose
                ``scores`` and ``bound`` are used. Computed in float32 (or float64 if given)
                even under autocast.
            problem: the marginals and relaxations (:class:`Problem`).
            bound: a known bound on :math:`|S|` (e.g. 1/eps for cosine scores), saves a host
                sync in ``domain="auto"`` (a geometry brings its own).
            init: warm start ``(f, g)``.
        Returns:
            :class:`SinkhornOutput`.
        """
        shard = rows = None
        if isinstance(scores, Geometry):
            bound = scores.bound if bound is None else bound
            shard, rows = scores.shard, scores.rows
            scores = scores.scores
        problem = Problem() if problem is None else problem
        if not isinstance(problem, Problem):
            raise ValueError(f"problem: expected an otcl.ot.Problem, got {type(problem).__name__}")
        _check_scores_shape(scores)
        if self.check_values:
            _check_scores_values(scores, shard)
        if problem.mass is not None:
            return _mass_plan(scores, problem.mass, shard)
        return self._iterate(scores, problem, bound, init, shard, rows)

    def _iterate(
        self,
        scores: torch.Tensor,
        problem: Problem,
        bound: float | None,
        init: tuple[torch.Tensor, torch.Tensor] | None,
        shard: Shard | None = None,
        rows: torch.Tensor | None = None,
    ) -> SinkhornOutput:
        iters, tol, check_every, grad = self.iters, self.tol, self.check_every, self.grad
        fused = self.backward == "fused"
        with torch.autocast(device_type=scores.device.type, enabled=False):
            S = scores if scores.dtype == torch.float64 else scores.float()
            batch, n, m = S.shape[:-2], S.shape[-2], S.shape[-1]
            # sharded: the rows are this rank's share of the global rows (a is global)
            n_all = n if shard is None else n * shard.world  # equal shares (gathered)
            cv = self.check_values
            a = check_marginal("a", problem.a, batch, n_all, like=S, check_values=cv)
            b = check_marginal("b", problem.b, batch, m, like=S, check_values=cv)
            hard = problem.tau_a == 1.0 and problem.tau_b == 1.0
            if cv and hard:
                _check_equal_mass(a, b)
            if a is not None and rows is not None:
                a = a[..., rows]
            log_a = _log_marginal(a, n_all, S)[..., :n] if a is None else a.log()
            log_b = _log_marginal(b, m, S)
            ta, tb = problem.tau_a, problem.tau_b
            if init is not None:
                f0, g0 = init[0].to(S), init[1].to(S)
            else:
                f0 = torch.zeros((*batch, n), dtype=S.dtype, device=S.device)
                g0 = torch.zeros((*batch, m), dtype=S.dtype, device=S.device)
            dom = _choose_domain(self.domain, S, bound, shard)
            loop = (log_a, log_b, ta, tb, f0, g0, iters, tol, check_every)
            extra = (None, shard)  # (trace, shard) of the iterate functions
            sums = None  # (row sums, column sums) of the plan when known without an n x m pass
            row_lse = None
            log_plan = None

            if grad == "unrolled" and fused:
                # without a tolerance the iteration count is known: no side channel (compiles)
                info: dict | None = {} if tol is not None else None
                fused_args = (S, log_a, log_b, f0, g0, ta, tb, iters, tol, check_every, info, shard)
                if dom == "exp":
                    f, g, row_lse, row_sum, col_sum = _FusedExpSinkhorn.apply(*fused_args)
                    sums = row_sum, col_sum
                else:
                    f, g, log_plan = _FusedLogSinkhorn.apply(*fused_args)
                if info is not None:
                    n_done, conv = info["n_iters"], info["converged"]
                else:  # a free side: one update is exact (see the iterate functions)
                    closed = ta == 0 or tb == 0
                    n_done, conv = (1 if closed else iters), closed
            elif grad == "unrolled":  # the reference: autograd through the loop
                iterate = _exp_iterate if dom == "exp" else _log_iterate
                f, g, n_done, conv = iterate(S, *loop, *extra)
            else:
                with torch.no_grad():
                    if dom == "exp":
                        trace: dict = {}
                        f, g, n_done, conv = _exp_iterate(S.detach(), *loop, trace, shard)
                        K, u, v = trace["K"], trace["u"][-1], trace["v"][-1]
                        kv = (K @ v.unsqueeze(-1)).squeeze(-1)
                        col = _col_sum((u.unsqueeze(-2) @ K).squeeze(-2), shard)
                        sums = (u * kv, v * col)
                        del trace
                    else:
                        f, g, n_done, conv = _log_iterate(S.detach(), *loop, *extra)
                kernel = K if dom == "exp" and fused else None  # pyright: ignore[reportPossiblyUnboundVariable]
                if grad == "implicit":
                    f, g = implicit_potentials(
                        S, log_a, log_b, ta, tb, f, g, kernel=kernel, shard=shard
                    )
                if kernel is not None:  # K is kept for the divergences' row_lse = log K v
                    row_lse = _RowLSE.apply(S, g, kernel, v, kv)  # pyright: ignore[reportPossiblyUnboundVariable]
            if log_plan is None and sums is None:  # else formed on access
                log_plan = f.unsqueeze(-1) + S + g.unsqueeze(-2)
            with torch.no_grad():
                if sums is None:
                    assert log_plan is not None  # formed above
                    P = log_plan.detach().exp()
                    sums = P.sum(-1), _col_sum(P.sum(-2), shard)
                    del P
                row_err = _col_sum((sums[0].detach() - log_a.exp()).abs().sum(-1), shard)
                col_err = (sums[1].detach() - log_b.exp()).abs().sum(-1)
                marginal_ok = None
                if hard:  # the errors of a balanced plan measure its convergence (no sync here)
                    mass = log_b.exp().sum(-1)
                    marginal_ok = (
                        torch.maximum(row_err, col_err) <= self.marginal_tol * mass
                    ).all()
        return SinkhornOutput(
            f,
            g,
            S,
            n_done,
            conv if (conv or tol is not None) else None,  # no tol: no stopping test ran
            row_err,
            col_err,
            dom,
            row_lse=row_lse,
            stored_log_plan=log_plan,
            shard=shard,
            rows_total=None if shard is None else n_all,
            marginal_ok=marginal_ok,
        )


def sinkhorn(
    scores: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    iters: int = 100,
    rho_a: float | None = None,
    rho_b: float | None = None,
    tol: float | None = None,
    check_every: int = 10,
    grad: str = "unrolled",
    domain: str = "auto",
    bound: float | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    backward: str = "fused",
    marginal_tol: float = 1e-5,
) -> SinkhornOutput:
    r"""Entropic coupling of a score matrix, balanced, semi-relaxed or unbalanced, in one call.

    The convenience form of ``Sinkhorn(iters=..., ...)(scores, Problem(a, b, rho_a, rho_b))``,
    with the same results (see :class:`Sinkhorn` for the options and :class:`Problem` for the
    marginals).

    Args:
        scores: (..., n, m) log-kernel :math:`S`; ``-inf`` entries are excluded pairs.
        a: (n,) or (..., n) row marginal, non-negative; uniform 1/n if None.
        b: (m,) or (..., m) column marginal; uniform 1/m if None.
        iters, tol, check_every, grad, domain, backward, marginal_tol: solver options
            (:class:`Sinkhorn`).
        rho_a, rho_b: KL strengths of the marginals (None = hard, 0 = free, see
            :mod:`otcl.ot.problem`).
        bound: a known bound on :math:`|S|`, saves a host sync in ``domain="auto"``.
        init: warm start ``(f, g)``.

    Returns:
        :class:`SinkhornOutput` with ``log_plan``, ``plan``, ``f``, ``g``, ``n_iters``,
        ``converged`` and the marginal errors. A balanced problem is ``converged`` when its
        final marginal errors are within ``marginal_tol`` of the total mass (relative L1),
        whether or not ``tol`` stopped it early; ``a`` and ``b`` of unequal total mass (no
        balanced plan exists) raise ``ValueError``: relax a side (``rho_a``, ``rho_b``)
        for unbalanced transport.

    Example:
        >>> S = torch.randn(4, 5)
        >>> out = sinkhorn(S, iters=200)
        >>> torch.allclose(out.plan.sum(-1), torch.full((4,), 0.25), atol=1e-5)
        True
    """
    solver = Sinkhorn(iters, tol, check_every, grad, domain, backward, marginal_tol=marginal_tol)
    return solver(scores, Problem(a, b, rho_a, rho_b), bound=bound, init=init)


def _check_equal_mass(a: torch.Tensor | None, b: torch.Tensor | None) -> None:
    """A balanced problem needs marginals of equal total mass (uniform ones have mass 1); one
    host sync. The relative tolerance 1e-4 allows float32 rounding of normalised weights."""
    if a is None and b is None:
        return
    mass_a = torch.ones(()) if a is None else a.detach().sum(-1).double().cpu()
    mass_b = torch.ones(()) if b is None else b.detach().sum(-1).double().cpu()
    mass_a, mass_b = torch.broadcast_tensors(mass_a, mass_b)
    bad = (mass_a - mass_b).abs() > 1e-4 * torch.maximum(mass_a, mass_b)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        got_a, got_b = float(mass_a.flatten()[i]), float(mass_b.flatten()[i])
        raise ValueError(
            f"a, b: expected marginals of equal total mass for a balanced problem (no plan meets "
            f"both otherwise), got sum(a)={got_a:.6g} and sum(b)={got_b:.6g}; normalise them, or "
            "relax a side (rho_a, rho_b) for unbalanced transport"
        )


def _check_scores_shape(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() < 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores: expected a tensor of shape (..., n, m), got {shape}")
    if scores.shape[-1] < 1 or scores.shape[-2] < 1:
        raise ValueError(f"scores: expected n, m >= 1, got shape {tuple(scores.shape)}")


def _check_scores_values(scores: torch.Tensor, shard: Shard | None = None) -> None:
    top = scores.detach().amax()  # NaN if any entry is NaN: one pass, one sync
    if shard is not None:  # every rank decides alike (a raise on one rank only would hang)
        top = shard.max(torch.nan_to_num(top, nan=math.inf))
    top = float(top)
    if math.isnan(top) or top == math.inf:
        raise ValueError("scores: expected finite values or -inf (excluded pairs), got NaN/+inf")


def solve(
    scores: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    problem: Problem | str = "balanced",
    rho: float | tuple[float, float] | None = None,
    bound: float | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    **options: Any,
) -> SinkhornOutput:
    r"""Coupling of ``scores`` under a named constraint set (see :mod:`otcl.ot.problem`).

    ``problem`` is a :class:`Problem`, or a name of :data:`~otcl.ot.CONSTRAINTS` completed by
    ``rho`` (for ``"unbalanced"``) and the marginals ``a``, ``b``; ``options`` are
    :class:`Sinkhorn`'s. ``"mass"`` (total mass only) has the closed form
    :math:`P = \text{mass} \cdot \mathrm{softmax}_{ij}(S)`.
    """
    if isinstance(problem, str):
        problem = Problem.from_name(problem, rho, a=a, b=b)
    elif rho is not None or a is not None or b is not None:
        raise ValueError("rho, a, b: expected them inside the Problem when a Problem is given")
    return Sinkhorn(**options)(scores, problem, bound=bound, init=init)


def _mass_plan(scores: torch.Tensor, mass: float, shard: Shard | None = None) -> SinkhornOutput:
    r"""Closed form of the total-mass problem: :math:`\log P = S - \mathrm{LSE}(S) + \log m`."""
    with torch.autocast(device_type=scores.device.type, enabled=False):
        S = scores if scores.dtype == torch.float64 else scores.float()
        if shard is None:
            lse = torch.logsumexp(S.flatten(-2), dim=-1)
        else:
            lse = shard.logsumexp_all(S)
        f = (math.log(mass) - lse).unsqueeze(-1).expand(*S.shape[:-1])
        g = torch.zeros(S.shape[:-2] + S.shape[-1:], dtype=S.dtype, device=S.device)
        zero = torch.zeros(S.shape[:-2], dtype=S.dtype, device=S.device)
        log_plan = S + f.unsqueeze(-1)
    rows = None if shard is None else S.shape[-2] * shard.world
    return SinkhornOutput(
        f, g, S, 1, True, zero, zero, "log", stored_log_plan=log_plan, shard=shard, rows_total=rows
    )
