r"""The one vocabulary every otcl loss is written in.

A loss is a pipeline of five interchangeable parts::

    similarity (cosine / dot, temperature eps)        -> otcl.ot.pair_scores      -> Geometry
      -> layout ("simclr" 2N x 2N, or "cross" N x N)
      -> coupling: constraint set + solver            -> otcl.ot.Problem, Sinkhorn -> SinkhornOutput
      -> target plan (identity / labels= / target=)    -> otcl.losses.targets
      -> divergence (cross-entropy or RINCE)           -> otcl.losses.divergences
      (+ extra terms, e.g. IOT's uniformity)

:class:`OTContrastiveLoss` composes them; the named losses (``infonce``, ``iot``, ``gca-uot``,
...) are presets of it (they change :attr:`~OTContrastiveLoss.defaults`), and any new
combination is one constructor call away, or ``build("ot", ...)`` by name::

    loss = OTContrastiveLoss(constraint="unbalanced", rho=0.5, divergence="rince")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._validation import check_bool, check_nonneg, check_positive, flat_negatives
from ..ot.distributed import Shard, current_shard
from ..ot.geometry import LAYOUTS, SIMILARITIES, Geometry, pair_scores
from ..ot.problem import CONSTRAINTS, Problem
from ..ot.sinkhorn import BACKWARDS, DOMAINS, GRAD_MODES, Sinkhorn, SinkhornOutput
from ..ot.streaming_sinkhorn import StreamingOutput
from . import divergences
from .contrastive import ContrastiveLoss, check_batch
from .divergences import RowView
from .geometry_choice import (
    DEFAULT_MEMORY_BUDGET,
    GEOMETRIES,
    STREAMS,
    batch_tile_rows,
    check_memory_budget,
)
from .ot_settings import (
    DIVERGENCES,
    ITERATIVE,
    MARGINALS,
    RINCE_DIVERGENCE,
    SCALED_MARGINALS,
    SELF_PAIRS,
    UNBALANCED,
    UNROLLED,
    check_prob_open,
)
from .params import CROSS, SIMCLR, choice, int_at_least, number, optional, param
from .registry import register
from .solve_parts import column_weights, symmetric_gauge, warm_start, weighted_problem
from .streaming import (
    check_streamable,
    solve_direction,
    streaming_forward,
    streaming_options,
    streaming_pair_scores,
)
from .targets import prepare_target

__all__ = ["OTContrastiveLoss", "DIVERGENCES"]


@register("ot")
class OTContrastiveLoss(ContrastiveLoss):
    r"""Contrastive loss :math:`d(P_{tgt} \,\|\, P_\theta)` with :math:`P_\theta` an entropic coupling.

    .. math::

        \mathcal L = d\big(P_{tgt} \,\|\, P_\theta\big),\qquad
        P_\theta = \arg\max_{P \in B}\ \langle P, S\rangle + H(P),\qquad
        S_{ij} = \mathrm{sim}(z_i, z_j)/\varepsilon,

    with :math:`B` the constraint set (rows: InfoNCE; rows and columns: Sinkhorn; KL-relaxed:
    unbalanced OT) and :math:`d` the row-wise cross-entropy (KL) or RINCE: the inverse-OT view of
    Shi et al. (ICML 2023) and the generalized alignment of Chen et al. (NeurIPS 2024).
    Registered as ``"ot"``: every combination of the parts by name.

    Each parameter is declared once below (default, check, and the rule under which it
    applies: :mod:`otcl.losses.params`). Every argument left at ``None`` takes the loss's default
    (:attr:`defaults`); an argument given where it does not apply raises ``ValueError``
    (:attr:`applies_when`).

    Args:
        temperature: eps > 0, the softmax temperature = entropic regularisation (0.5).
        layout: ``"simclr"`` (2N x 2N, self-pairs masked, positives i <-> i+N) or ``"cross"``
            (N x N between the views, as CLIP).
        similarity: ``"cosine"`` (default) or ``"dot"``.
        constraint: ``"rows"`` (InfoNCE), ``"balanced"`` (Sinkhorn), ``"unbalanced"``
            (KL-relaxed), ``"cols"`` or ``"mass"``; see :mod:`otcl.ot.problem`.
        iters: Sinkhorn iterations (row + column update) of the iterative sets (10).
        rho: KL strength of the relaxed marginals for ``"unbalanced"``, in cost units (GCA's
            ``relax_item``, POT's ``reg_m``); the solver receives ``rho / temperature``.
        divergence: ``"ce"`` (KL / soft cross-entropy) or ``"rince"``.
        q, lam: RINCE exponent in (0, 1] and weight > 0 (``divergence="rince"``; 0.6, 0.01).
        marginals: ``"uniform"`` (a = b = 1/n) or ``"unit"`` (a = b = 1, as GCA's code); it
            matters only where the loss is not invariant to scaling the marginals.
        symmetric: in the ``"cross"`` layout, average the loss of the coupling of S and of S^T
            (CLIP's symmetric loss; True).
        grad: gradient mode of the solver (``"unrolled"``, ``"implicit"``, ``"detach"``).
        domain: solver arithmetic (``"auto"``, ``"log"``, ``"exp"``).
        backward: ``grad="unrolled"`` differentiation: ``"fused"`` (hand-written, default) or
            ``"autograd"`` (through the loop: the reference).
        tol: early-stop tolerance of the solver (syncs with the host); 0 (default) = always
            ``iters`` iterations.
        self_pair: ``"mask"`` (default) or ``"max_cost"`` (official GCA/IOT code), simclr only.
        clip_min: clamp cosine similarities from below (official GCA code: 1e-7); off by default.
        check_inputs: refuse NaN/Inf embeddings and, for cosine similarity, zero rows (one
            host sync per call; True).
        gather_distributed: under ``torch.distributed`` with several ranks, couple the global
            batch: every rank gathers the others' embeddings (with gradients) as columns and
            keeps its own rows (:mod:`otcl.ot.distributed`); the value is the global loss and
            each rank's embeddings get its exact gradient (False: each rank's local batch).
        geometry: ``"dense"`` (default: the n x m scores are stored), ``"streaming"`` (only the
            embeddings are stored; every pass recomputes tiles of ``tile_size`` rows: the same
            value and gradient in O(N d + tile_size m) memory, :mod:`otcl.ot.streaming`) or
            ``"auto"`` (streams when the dense matrices would pass ``memory_budget``); see
            :mod:`otcl.losses.geometry_choice`.
        tile_size: rows per tile of the streaming geometry (None: the largest tile that fits
            ``memory_budget``).
        memory_budget: bytes (2 GiB): the working memory of a streamed tile, and the dense
            size above which ``"auto"`` streams.

    Call:
        ``loss(z1, z2, labels=None, target=None, *, negatives=None) -> scalar``, with ``z1``,
        ``z2`` (N, d), ``labels`` (N,) integer classes (supervised positives), ``target`` (n, m)
        a custom non-negative target plan (n = 2N for simclr, N for cross; m = n + K), and
        ``negatives`` (K, d) extra candidates appended as columns (never positives), or
        (N, K, d) per anchor (e.g. a recommender's sampled items per user), which are appended
        as N K shared columns. ``col_prior`` (m,): the probability with which each column was
        sampled (e.g. item popularity for in-batch negatives); the coupling then corrects for
        it (:meth:`prior_weights`: row-constrained, the logQ correction).

    Example:
        >>> import torch
        >>> loss_fn = OTContrastiveLoss(constraint="unbalanced", rho=0.5, divergence="rince")
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
    """

    temperature: float = param(default=0.5, check=check_positive, kw_only=False)
    layout: str = param(default="simclr", check=choice(LAYOUTS))
    similarity: str = param(default="cosine", check=choice(SIMILARITIES))
    constraint: str = param(default="rows", check=choice(CONSTRAINTS))
    iters: int = param(default=10, check=int_at_least(1), applies=ITERATIVE)
    rho: float | None = param(default=None, check=optional(check_positive), applies=UNBALANCED)
    divergence: str = param(default="ce", check=choice(DIVERGENCES))
    q: float = param(default=0.6, check=check_prob_open, applies=RINCE_DIVERGENCE)
    lam: float = param(default=0.01, check=check_positive, applies=RINCE_DIVERGENCE)
    marginals: str = param(default="uniform", check=choice(MARGINALS), applies=SCALED_MARGINALS)
    symmetric: bool = param(default=True, check=check_bool, applies=CROSS)
    grad: str = param(default="unrolled", check=choice(GRAD_MODES), applies=ITERATIVE)
    domain: str = param(default="auto", check=choice(DOMAINS), applies=ITERATIVE)
    backward: str = param(default="fused", check=choice(BACKWARDS), applies=ITERATIVE & UNROLLED)
    tol: float = param(default=0.0, check=check_nonneg, applies=ITERATIVE)
    self_pair: str = param(default="mask", check=choice(SELF_PAIRS), applies=SIMCLR)
    clip_min: float | None = param(default=None, check=optional(number))
    check_inputs: bool = param(default=True, check=check_bool)
    gather_distributed: bool = param(default=False, check=check_bool)
    geometry: str = param(default="dense", check=choice(GEOMETRIES))
    tile_size: int | None = param(default=None, check=optional(int_at_least(1)), applies=STREAMS)
    memory_budget: float = param(
        default=DEFAULT_MEMORY_BUDGET, check=check_memory_budget, applies=STREAMS
    )

    # -- parameters ------------------------------------------------------------------------
    def configure(self) -> None:
        if self.constraint != "unbalanced":
            self.rho = None
        elif self.rho is None:
            raise ValueError("rho: constraint='unbalanced' needs rho > 0, got None")
        if self.geometry != "dense":
            check_streamable(self)  # refuse, in one line, what streaming cannot serve

    def streaming_terms(self) -> dict[str, float] | None:
        """The weights of this loss's terms on a streaming geometry (:mod:`otcl.losses.streaming`:
        ``"ce"``, ``"rince"``, ``"uniformity"``), or None if a subclass changed the terms
        without saying how they stream."""
        if not self._terms_from(OTContrastiveLoss):
            return None
        return {self.divergence: 1.0}

    def _terms_from(self, owner: type) -> bool:
        """Whether the term hooks are ``owner``'s (the class whose streaming_terms applies)."""
        cls = type(self)
        return all(
            getattr(cls, hook) is getattr(owner, hook)
            for hook in ("divergence_value", "extra_terms")
        )

    def tile_rows(self, z1: torch.Tensor, negatives: torch.Tensor | None) -> int | None:
        """Rows per tile of this batch on the streaming geometry, or None for the dense path
        (``geometry="dense"``, or ``"auto"`` under the memory budget)."""
        shard = self.shard() if self.geometry != "dense" else None
        return batch_tile_rows(self, z1, negatives, 1 if shard is None else shard.world)

    @classmethod
    def uses_rince(cls, settings: Mapping[str, Any]) -> bool:
        """Whether the loss evaluates RINCE under ``settings`` (where ``q``, ``lam`` apply)."""
        return settings["divergence"] == "rince"

    # -- parts -----------------------------------------------------------------------------
    def problem(self, n: int, m: int, device: torch.device | None = None) -> Problem:
        """The coupling problem of an (n, m) score matrix (``rho`` in solver units)."""
        if self.constraint == "mass":
            # total mass only: unit marginals mean total mass n (the plan's shape is unchanged)
            return Problem(mass=float(n) if self.marginals == "unit" else 1.0)
        a = b = None
        if self.marginals == "unit":  # a = 1; b = 1 on a square plan (same total mass n)
            a = torch.ones(n, device=device)
            b = torch.full((m,), n / m, device=device)
        rho = None if self.rho is None else self.rho / self.temperature
        return Problem.from_name(self.constraint, rho, a=a, b=b)

    def weighted_problem(
        self,
        problem: Problem,
        n: int,
        m: int,
        w_rows: torch.Tensor | None,
        w_cols: torch.Tensor | None,
    ) -> Problem:
        """``problem`` with its row / column marginals multiplied by weights of mean 1 (the
        total masses, hence the balance of a balanced problem, are unchanged)."""
        return weighted_problem(problem, n, m, w_rows, w_cols, unit=self.marginals == "unit")

    def solver(self) -> Sinkhorn:
        """The solver with this loss's options."""
        return Sinkhorn(
            iters=self.iters,
            tol=self.tol or None,
            grad=self.grad,
            domain=self.domain,
            backward=self.backward,
            check_values=self.check_inputs,  # the scores come from checked (or trusted) inputs
        )

    def pair_geometry(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        negatives: torch.Tensor | None = None,
        shard: Shard | None = None,
    ) -> Geometry:
        """The scores of a batch (see :func:`otcl.ot.pair_scores`)."""
        return pair_scores(
            z1,
            z2,
            temperature=self.temperature,
            layout=self.layout,
            similarity_kind=self.similarity,
            self_pair=self.self_pair,
            clip_min=self.clip_min,
            negatives=negatives,
            shard=shard,
        )

    def solve(
        self,
        scores: torch.Tensor | Geometry,
        bound: float | None = None,
        weights: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> SinkhornOutput:
        """The model plan :math:`P_\\theta` of a score matrix (or of a geometry, whose rows may
        be one rank's share of the global batch's).

        ``weights``: ``(w_rows, w_cols)``, (n,) / (m,) positive weights of mean 1 (or None)
        that multiply the loss's row / column marginals (see :meth:`forward`'s ``col_prior``;
        the scores must already hold their logarithms).
        """
        S = scores.scores if isinstance(scores, Geometry) else scores
        n = scores.n_rows if isinstance(scores, Geometry) else S.shape[-2]
        m = S.shape[-1]
        problem = self.problem(n, m, S.device)
        if weights is not None:
            problem = self.weighted_problem(problem, n, m, *weights)
        init = warm_start(problem, S.shape[-2], m, S.device)
        out = self.solver()(scores, problem, bound=bound, init=init)
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
        return symmetric_gauge(out)

    def divergence_value(
        self,
        out: SinkhornOutput,
        target: torch.Tensor | None,
        pos: torch.Tensor | None,
        rows: RowView | None,
    ) -> torch.Tensor:
        """The divergence :math:`d(P_{tgt}\\|P_\\theta)` of one direction.

        ``rows`` is the solve's :class:`~otcl.losses.divergences.RowView` when the vector-only
        path applies (identity target, exp-domain solve), else None (then ``out`` holds its
        log-plan).
        """
        if self.divergence == "ce":
            return divergences.plan_cross_entropy(out, target, pos, rows)
        return divergences.plan_rince(out, target, pos, rows, q=self.q, lam=self.lam)

    def extra_terms(
        self,
        out: SinkhornOutput,
        target: torch.Tensor | None,
        pos: torch.Tensor | None,
        rows: RowView | None,
        geom: Geometry,
    ) -> torch.Tensor | None:
        """Hook for additional terms (e.g. IOT's uniformity); None = nothing to add.

        ``geom`` is the direction's geometry (layout, and the global row indices when the rows
        are one rank's share: a term over the whole plan then returns this rank's share, see
        :mod:`otcl.ot.distributed`).
        """
        return None

    def direction_loss(
        self,
        geom: Geometry,
        target: torch.Tensor | None,
        pos: torch.Tensor | None,
        weights: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """The loss of one direction: solve, then divergence (+ extra terms).

        Each solve computes its :class:`~otcl.losses.divergences.RowView` (vector-only path)
        or forms its log-plan once, and every term reads it. ``weights``: see :meth:`solve`.
        """
        out = self.solve(geom, weights=weights) if weights is not None else self.solve(geom)
        rows = divergences.row_view(out, target, pos)
        if rows is None:
            out = out.with_log_plan()
        value = self.divergence_value(out, target, pos, rows)
        extra = self.extra_terms(out, target, pos, rows, geom)
        return value if extra is None else value + extra

    # -- call ------------------------------------------------------------------------------
    def _check_call(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        negatives: torch.Tensor | None,
        shard: Shard | None = None,
    ) -> None:
        check_batch(z1, z2, negatives, self.similarity, self.check_inputs, shard)

    def shard(self) -> Shard | None:
        """This rank's share of the global batch (``gather_distributed`` under
        ``torch.distributed`` with several ranks), else None."""
        return current_shard() if self.gather_distributed else None

    def coupling(
        self, z1: torch.Tensor, z2: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> SinkhornOutput | StreamingOutput:
        """The model plan :math:`P_\\theta` of a batch (first direction; for diagnostics; this
        rank's rows with ``gather_distributed``)."""
        shard = self.shard()
        self._check_call(z1, z2, negatives, shard)
        negatives = flat_negatives(negatives)
        tile = self.tile_rows(z1, negatives)
        if tile is not None:  # the potentials only; the plan block by block (plan_block)
            options = streaming_options(self, tile)
            geo = streaming_pair_scores(z1, z2, negatives=negatives, shard=shard, **options)
            return solve_direction(self, geo)
        return self.solve(self.pair_geometry(z1, z2, negatives, shard))

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        *,
        negatives: torch.Tensor | None = None,
        col_prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See the class docstring (``Call``)."""
        tile = self.tile_rows(z1, negatives)
        if tile is not None and col_prior is not None:
            if self.geometry == "streaming":
                raise ValueError(
                    "col_prior: the streaming geometry takes no column prior; use "
                    "geometry='dense' (or 'auto', which then computes densely)"
                )
            tile = None  # "auto": the dense path, the one that takes a column prior
        if tile is not None:
            terms = self.streaming_terms()
            kw: dict[str, Any] = dict(tile_size=tile, terms=terms)
            return streaming_forward(self, z1, z2, labels, target, negatives, **kw)
        shard = self.shard()
        self._check_call(z1, z2, negatives, shard)
        negatives = flat_negatives(negatives)
        if shard is not None and isinstance(labels, torch.Tensor) and labels.dim() == 1:
            labels = shard.gather_constant(labels)  # the global batch's classes
        geo = self.pair_geometry(z1, z2, negatives, shard)
        dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
        tgt, pos = prepare_target(geo, labels, target, dtype)
        w = None if col_prior is None else self.prior_weights(col_prior, geo, shard)
        if w is None:
            loss = self.direction_loss(geo, tgt, pos)
        else:  # the kernel's reference measure and the columns' marginal: w
            fwd = geo.replace(scores=geo.scores + w.log().to(geo.scores), bound=None)
            loss = self.direction_loss(fwd, tgt, pos, (None, w))
        if self.layout == "cross" and self.symmetric:
            # view-2 anchors against view 1 (the square block: extra candidates are no anchors)
            rev = geo.transposed() if shard is None else self.pair_geometry(z2, z1, None, shard)
            target_t = None if target is None else target[:, : geo.n_pairs].transpose(0, 1)
            tgt_t, pos_t = prepare_target(rev, labels, target_t, dtype)
            if w is None:
                loss = 0.5 * (loss + self.direction_loss(rev, tgt_t, pos_t))
            else:  # the same coupling seen from view 2: the weights are on its rows
                wr = w[: geo.n_pairs] / w[: geo.n_pairs].mean()
                rev = rev.replace(scores=rev.scores + wr.log().to(rev.scores)[:, None], bound=None)
                loss = 0.5 * (loss + self.direction_loss(rev, tgt_t, pos_t, (wr, None)))
        return loss if shard is None else shard.total(loss)

    def prior_weights(
        self, col_prior: torch.Tensor, geo: Geometry, shard: Shard | None
    ) -> torch.Tensor:
        r"""Column weights :math:`w_j \propto 1/q_j` (mean 1) of a column prior ``q`` (m,)
        (the logQ correction; see :func:`otcl.losses.solve_parts.column_weights`)."""
        return column_weights(col_prior, geo, shard, self.constraint, self.loss_name())

    def extra_repr(self) -> str:
        keys = ["temperature", "layout", "constraint", "iters", "rho", "divergence"]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
