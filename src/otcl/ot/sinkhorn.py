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

This module holds the solver (:class:`Sinkhorn`, :func:`sinkhorn`, :func:`solve`); its result
:class:`SinkhornOutput` lives in :mod:`otcl.ot.sinkhorn_output`, the iterations in
:mod:`otcl.ot.sinkhorn_iterations` and the hand-written backwards in
:mod:`otcl.ot.sinkhorn_backward` (all importable from here as before).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_choice, check_int_at_least, check_marginal, check_nonneg
from .distributed import Shard
from .geometry import Geometry
from .implicit import implicit_potentials
from .problem import Problem
from .sinkhorn_backward import _FusedExpSinkhorn, _FusedLogSinkhorn, _RowLSE
from .sinkhorn_iterations import EXP_SAFE_BOUND as EXP_SAFE_BOUND
from .sinkhorn_iterations import (
    _choose_domain,
    _col_sum,
    _exp_iterate,
    _exp_plan_sums,
    _log_iterate,
    _log_marginal,
)
from .sinkhorn_iterations import _moved as _moved
from .sinkhorn_output import SinkhornOutput

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
                        K, v = trace["K"], trace["v"][-1]
                        kv, row_sum, col_sum = _exp_plan_sums(trace, shard)
                        sums = row_sum, col_sum
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
