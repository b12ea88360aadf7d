r"""The one vocabulary every otcl loss is written in.

A loss is a pipeline of five interchangeable parts::

    similarity (cosine / dot, temperature eps)        -> otcl.ot.geometry.pair_scores
      -> layout ("simclr" 2N x 2N, or "cross" N x N)
      -> coupling (constraint set + solver)            -> otcl.ot.solve
      -> target plan (identity / labels= / target=)    -> otcl.losses.targets
      -> divergence (cross-entropy or RINCE)           -> otcl.losses.divergences
      (+ extra terms, e.g. IOT's uniformity)

:class:`OTContrastiveLoss` composes them; the named losses (``infonce``, ``iot``, ``gca-uot``,
...) are presets of it, and any new combination is one constructor call away::

    loss = OTContrastiveLoss(constraint="unbalanced", rho=0.5, divergence="rince")
"""

from __future__ import annotations

import copy
import math

import torch

from .._validation import (
    check_choice,
    check_embeddings,
    check_int_at_least,
    check_nonneg,
    check_positive,
    check_prob,
)
from ..ot.geometry import LAYOUTS, SIMILARITIES, Geometry, pair_scores
from ..ot.problem import CONSTRAINTS, Problem
from ..ot.sinkhorn import DOMAINS, GRAD_MODES, SinkhornOutput, solve
from . import divergences
from .contrastive import ContrastiveLoss
from .targets import prepare_target

__all__ = ["OTContrastiveLoss", "DIVERGENCES"]

DIVERGENCES = ("ce", "rince")


class OTContrastiveLoss(ContrastiveLoss):
    r"""Contrastive loss :math:`d(P_{tgt} \,\|\, P_\theta)` with :math:`P_\theta` an entropic coupling.

    Args:
        temperature: eps > 0, the softmax temperature = entropic regularisation.
        layout: ``"simclr"`` (2N x 2N, self-pairs masked, positives i <-> i+N) or ``"cross"``
            (N x N between the views, as CLIP).
        similarity: ``"cosine"`` (default) or ``"dot"``.
        constraint: ``"rows"`` (InfoNCE), ``"balanced"`` (Sinkhorn), ``"unbalanced"``
            (KL-relaxed), ``"cols"`` or ``"mass"``; see :mod:`otcl.ot.problem`.
        iters: Sinkhorn iterations (row + column update) for iterative constraint sets.
        rho: KL strength of the relaxed marginals for ``"unbalanced"``, in cost units (GCA's
            ``relax_item``, POT's ``reg_m``); the solver receives ``rho / temperature``.
        divergence: ``"ce"`` (KL / soft cross-entropy) or ``"rince"``.
        q, lam: RINCE exponent in (0, 1] and weight > 0 (``divergence="rince"``).
        marginals: ``"uniform"`` (a = b = 1/n) or ``"unit"`` (a = b = 1, as GCA's code).
        symmetric: in the ``"cross"`` layout, average the loss of the coupling of S and of S^T
            (CLIP's symmetric loss). Ignored for ``"simclr"``, whose scores are symmetric.
        grad: gradient mode of the solver (``"unrolled"``, ``"implicit"``, ``"detach"``).
        domain: solver arithmetic (``"auto"``, ``"log"``, ``"exp"``).
        tol: optional early-stop tolerance of the solver (syncs with the host).
        self_pair: ``"mask"`` (default) or ``"max_cost"`` (official GCA/IOT code).
        clip_min: clamp cosine similarities from below (official GCA code: 1e-7); None = off.
        check_inputs: check embeddings for NaN/Inf (one host sync per call).

    Call:
        ``loss(z1, z2, labels=None, target=None) -> scalar``, with ``z1``, ``z2`` (N, d),
        ``labels`` (N,) integer classes (supervised positives), ``target`` (n, n) a custom
        non-negative target plan (n = 2N for simclr, N for cross).
    """

    default_constraint = "rows"

    def __init__(
        self,
        temperature: float = 0.5,
        *,
        layout: str = "simclr",
        similarity: str = "cosine",
        constraint: str | None = None,
        iters: int = 10,
        rho: float | None = None,
        divergence: str = "ce",
        q: float = 0.6,
        lam: float = 0.01,
        marginals: str = "uniform",
        symmetric: bool = True,
        grad: str = "unrolled",
        domain: str = "auto",
        tol: float | None = None,
        self_pair: str = "mask",
        clip_min: float | None = None,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.layout = check_choice("layout", layout, LAYOUTS)
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        constraint = self.default_constraint if constraint is None else constraint
        self.constraint = check_choice("constraint", constraint, CONSTRAINTS)
        self.iters = check_int_at_least("iters", iters, 1)
        if self.constraint == "unbalanced":
            if rho is None:
                raise ValueError("rho: constraint='unbalanced' needs rho > 0, got None")
            check_positive("rho", rho)
        self.rho = None if rho is None else float(rho)
        self.divergence = check_choice("divergence", divergence, DIVERGENCES)
        self.q = check_prob("q", q, open_left=True)
        self.lam = check_positive("lam", lam)
        self.marginals = check_choice("marginals", marginals, ("uniform", "unit"))
        self.symmetric = bool(symmetric)
        self.grad = check_choice("grad", grad, GRAD_MODES)
        self.domain = check_choice("domain", domain, DOMAINS)
        self.tol = None if tol is None else check_nonneg("tol", tol)
        self.self_pair = check_choice("self_pair", self_pair, ("mask", "max_cost"))
        self.clip_min = clip_min
        self.check_inputs = bool(check_inputs)

    # -- parts -----------------------------------------------------------------------------
    def problem(self) -> Problem:
        rho = None if self.rho is None else self.rho / self.temperature
        return Problem.from_name(self.constraint, rho)

    def geometry(self, z1: torch.Tensor, z2: torch.Tensor) -> Geometry:
        return pair_scores(
            z1,
            z2,
            temperature=self.temperature,
            layout=self.layout,
            similarity_kind=self.similarity,
            self_pair=self.self_pair,
            clip_min=self.clip_min,
        )

    def solve(self, scores: torch.Tensor, bound: float | None) -> SinkhornOutput:
        n, m = scores.shape[-2:]
        a = b = None
        problem = self.problem()
        if problem.constraint == "mass":
            # total mass only: unit marginals mean total mass n (the plan's shape is unchanged)
            if self.marginals == "unit":
                problem = Problem("mass", mass=float(n))
        elif self.marginals == "unit":
            a = torch.ones(n, device=scores.device)
            b = torch.ones(m, device=scores.device)
        init = None
        if problem.constraint == "unbalanced":
            # start from v = b as the official GCA-UOT code (u = v = marginal); for balanced
            # problems the starting scale of v cancels after the first row update
            log_b = torch.full((m,), -math.log(m), device=scores.device) if b is None else b.log()
            init = (torch.zeros(n, device=scores.device), log_b)
        out = solve(
            scores,
            a,
            b,
            problem=problem,
            init=init,
            iters=self.iters,
            tol=self.tol,
            grad=self.grad,
            domain=self.domain,
            bound=bound,
        )
        if self.grad == "implicit" and problem.constraint == "balanced":
            out = self.symmetric_gauge(out)
        return out

    @staticmethod
    def symmetric_gauge(out: SinkhornOutput) -> SinkhornOutput:
        r"""Balanced potentials moved to the gauge :math:`\sum_i f_i = \sum_j g_j`.

        The plan determines balanced potentials only up to :math:`(f + k, g - k)`. The plan,
        cross-entropy and IOT's uniformity term do not depend on :math:`k`, but RINCE on
        :math:`K v = e^{S + g}` (``gca-rince``) does. The unrolled iterations carry their own
        gauge (the paper's :math:`v^{(t)}`); at the fixed point (``grad="implicit"``) the losses
        use this one, which is the convention of :mod:`otcl.ot.implicit` (:math:`u = v` for a
        symmetric kernel with equal marginals, as in the simclr layout), so that the value and
        its implicit gradient belong to the same function.
        """
        n, m = out.f.shape[-1], out.g.shape[-1]
        k = (out.g.sum(-1, keepdim=True) - out.f.sum(-1, keepdim=True)) / (n + m)
        shifted = copy.copy(out)
        shifted.f, shifted.g = out.f + k, out.g - k
        shifted.__dict__.pop("_log_pos", None)  # a positives gather cached with the old g
        if out.row_lse is not None:  # LSE_j(S_ij + g_j), if the solver keeps it
            shifted.row_lse = out.row_lse - k
        return shifted

    def divergence_value(
        self, out: SinkhornOutput, target: torch.Tensor | None, pos: torch.Tensor | None
    ) -> torch.Tensor:
        if self.divergence == "ce":
            return divergences.plan_cross_entropy(out, target, pos)
        return divergences.plan_rince(out, target, pos, q=self.q, lam=self.lam)

    def extra_terms(
        self, out: SinkhornOutput, target: torch.Tensor | None, pos: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Hook for additional terms (e.g. IOT's uniformity); None = nothing to add."""
        return None

    def _one_direction(
        self,
        scores: torch.Tensor,
        bound: float | None,
        target: torch.Tensor | None,
        pos: torch.Tensor | None,
    ) -> torch.Tensor:
        out = self.solve(scores, bound)
        value = self.divergence_value(out, target, pos)
        extra = self.extra_terms(out, target, pos)
        return value if extra is None else value + extra

    # -- call ------------------------------------------------------------------------------
    def coupling(self, z1: torch.Tensor, z2: torch.Tensor) -> SinkhornOutput:
        """The model plan :math:`P_\\theta` of a batch (for diagnostics)."""
        check_embeddings(z1, z2, check_values=self.check_inputs)
        geo = self.geometry(z1, z2)
        return self.solve(geo.scores, geo.bound)

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_embeddings(z1, z2, check_values=self.check_inputs)
        n_pairs = z1.shape[0]
        geo = self.geometry(z1, z2)
        dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
        tgt, pos = prepare_target(n_pairs, self.layout, labels, target, z1.device, dtype)
        loss = self._one_direction(geo.scores, geo.bound, tgt, pos)
        if self.layout == "cross" and self.symmetric:
            tgt_t = None if tgt is None else tgt.transpose(0, 1)
            if tgt_t is not None:
                tgt_t = tgt_t / tgt_t.sum(-1, keepdim=True)
            loss = 0.5 * (
                loss + self._one_direction(geo.scores.transpose(0, 1), geo.bound, tgt_t, pos)
            )
        return loss

    def extra_repr(self) -> str:
        keys = ["temperature", "layout", "constraint", "iters", "rho", "divergence"]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
