r"""The *problem*: the marginals and how strictly the coupling must meet them.

A coupling problem on scores :math:`S \in \mathbb{R}^{n\times m}` (the log-kernel, e.g.
similarity / eps) is

.. math::

    \max_{P \ge 0}\; \langle P, S\rangle + H(P)
        - \rho_a\, \mathrm{KL}(P\mathbf 1 \,\|\, a) - \rho_b\, \mathrm{KL}(P^\top \mathbf 1 \,\|\, b),
    \qquad H(P) = -\sum_{ij} P_{ij}(\log P_{ij} - 1),

with :math:`\mathrm{KL}(x\|a) = \sum_i x_i\log(x_i/a_i) - x_i + a_i`. Each side is one of

* **hard** (``rho=None``): the marginal is a constraint (:math:`\rho=\infty`);
* **relaxed** (``0 < rho < inf``): KL penalty of strength ``rho`` (unbalanced OT);
* **free** (``rho=0``): no constraint at all on that side.

A :class:`Problem` holds the marginals ``a``, ``b`` (uniform when ``None``) and the strengths
``rho_a``, ``rho_b``; ``mass`` instead asks for the total mass only. The named constraint sets of
the contrastive losses (:meth:`Problem.from_name`):

===============  =================  ======================================================
name             (rho_a, rho_b)     what it is
===============  =================  ======================================================
``balanced``     (None, None)       Sinkhorn: rows and columns (IOT, GCA-INCE)
``rows``         (None, 0)          semi-relaxed: rows only, closed form row-softmax (InfoNCE)
``cols``         (0, None)          semi-relaxed: columns only, closed form column-softmax
``unbalanced``   (rho, rho)         KL-relaxed marginals (GCA-UOT, POT ``sinkhorn_unbalanced``)
``mass``         --                 total mass only: ``mass * softmax`` over all entries
                                    (IOT ``relax="both"``)
===============  =================  ======================================================

In units of the cost :math:`C = -\varepsilon S`, ``rho`` is POT's ``reg_m / reg`` and the
scaling exponent is OTT's :math:`\tau = \rho / (1 + \rho)`.

Example:
    >>> import torch
    >>> from otcl.ot import Problem, Sinkhorn
    >>> problem = Problem(rho_a=1.0, rho_b=1.0)           # unbalanced, uniform marginals
    >>> out = Sinkhorn(iters=50)(torch.randn(4, 5), problem)
    >>> problem.constraint
    'unbalanced'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_choice, check_nonneg, check_positive

__all__ = ["Problem", "CONSTRAINTS", "exponent"]

CONSTRAINTS = ("balanced", "rows", "cols", "unbalanced", "mass")


def exponent(rho: float | None) -> float:
    """Scaling exponent :math:`\\tau = \\rho/(1+\\rho)` of one marginal (1 for hard, 0 for free)."""
    if rho is None or math.isinf(rho):
        return 1.0
    return rho / (1.0 + rho)


@dataclass(frozen=True, eq=False)
class Problem:
    """Marginals and their relaxation: what the coupling must satisfy (immutable).

    Args:
        a: (n,) or (..., n) row marginal, non-negative with a positive sum; ``None`` = uniform
            :math:`1/n`. Checked against the scores by the solver.
        b: (m,) or (..., m) column marginal; ``None`` = uniform :math:`1/m`.
        rho_a: KL strength on the row marginal (``None`` = hard, ``0`` = free).
        rho_b: KL strength on the column marginal.
        mass: total mass only (the ``"mass"`` set: :math:`P = \\text{mass}\\cdot
            \\mathrm{softmax}_{ij}(S)`); excludes ``a``, ``b``, ``rho_a``, ``rho_b``.
    """

    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    rho_a: float | None = None
    rho_b: float | None = None
    mass: float | None = None

    def __post_init__(self) -> None:
        for name in ("rho_a", "rho_b"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_nonneg(name, value))
        if self.mass is not None:
            object.__setattr__(self, "mass", check_positive("mass", self.mass))
            given = [n for n in ("a", "b", "rho_a", "rho_b") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"{given[0]}: the 'mass' problem fixes only the total mass, expected no "
                    f"marginal or relaxation, got {', '.join(given)}"
                )

    @classmethod
    def from_name(
        cls,
        constraint: str,
        rho: float | tuple[float, float] | None = None,
        *,
        a: torch.Tensor | None = None,
        b: torch.Tensor | None = None,
        mass: float = 1.0,
    ) -> Problem:
        """The problem of a named constraint set (see the module table).

        ``rho`` (one strength or a pair ``(rho_a, rho_b)``) is required by ``"unbalanced"`` and
        refused by the others; ``mass`` is used by ``"mass"`` only.
        """
        check_choice("constraint", constraint, CONSTRAINTS)
        if rho is not None and constraint != "unbalanced":
            raise ValueError(
                f"rho: applies only to the 'unbalanced' constraint, got constraint={constraint!r}"
            )
        if constraint == "mass":
            return cls(a=a, b=b, mass=mass)
        if constraint == "balanced":
            return cls(a, b, None, None)
        if constraint == "rows":
            return cls(a, b, None, 0.0)
        if constraint == "cols":
            return cls(a, b, 0.0, None)
        if rho is None:
            raise ValueError(
                "rho: the 'unbalanced' constraint needs rho > 0 (KL strength), got None"
            )
        ra, rb = rho if isinstance(rho, tuple) else (rho, rho)
        return cls(a, b, check_positive("rho", ra), check_positive("rho", rb))

    @property
    def constraint(self) -> str:
        """The name of this problem's constraint set (``"unbalanced"`` for any other relaxation)."""
        if self.mass is not None:
            return "mass"
        sides = (self.rho_a, self.rho_b)
        named = {(None, None): "balanced", (None, 0.0): "rows", (0.0, None): "cols"}
        return named.get(sides, "unbalanced")

    @property
    def tau_a(self) -> float:
        """Scaling exponent of the row marginal."""
        return exponent(self.rho_a)

    @property
    def tau_b(self) -> float:
        """Scaling exponent of the column marginal."""
        return exponent(self.rho_b)

    @property
    def closed_form(self) -> bool:
        """Whether one update solves it exactly (a free side, or total mass only)."""
        return self.mass is not None or self.tau_a == 0.0 or self.tau_b == 0.0

    def replace(self, **changes: Any) -> Problem:
        """A copy with some fields changed (the problem itself is immutable)."""
        return dataclasses.replace(self, **changes)
