"""The result of a dense Sinkhorn solve: :class:`SinkhornOutput` (potentials, plan, errors).

Returned by :class:`~otcl.ot.sinkhorn.Sinkhorn` and re-exported by :mod:`otcl.ot.sinkhorn`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .distributed import Shard

__all__ = ["SinkhornOutput"]


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
