r"""The *problem*: marginals and how strictly the coupling must meet them.

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

This covers the constraint sets used by contrastive losses:

===============  =================  ======================================================
name             (rho_a, rho_b)     what it is
===============  =================  ======================================================
``balanced``     (None, None)       Sinkhorn: rows and columns (IOT, GCA-INCE)
``rows``         (None, 0)          semi-relaxed: rows only, closed form row-softmax (InfoNCE)
``cols``         (0, None)          semi-relaxed: columns only, closed form column-softmax
``unbalanced``   (rho, rho)         KL-relaxed marginals (GCA-UOT, POT ``sinkhorn_unbalanced``)
``mass``         --                 total mass only: softmax over all entries (IOT relax="both")
===============  =================  ======================================================

In units of the cost :math:`C = -\varepsilon S`, ``rho`` is POT's ``reg_m / reg`` and the
scaling exponent is OTT's :math:`\tau = \rho / (1 + \rho)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._validation import check_choice, check_nonneg

__all__ = ["Problem", "CONSTRAINTS", "exponent"]

CONSTRAINTS = ("balanced", "rows", "cols", "unbalanced", "mass")


def exponent(rho: float | None) -> float:
    """Scaling exponent :math:`\\tau = \\rho/(1+\\rho)` of one marginal (1 for hard, 0 for free)."""
    if rho is None or math.isinf(rho):
        return 1.0
    return rho / (1.0 + rho)


@dataclass(frozen=True)
class Problem:
    """How a coupling must meet its marginals.

    Args:
        constraint: one of :data:`CONSTRAINTS`.
        rho_a: KL strength on the row marginal (``None`` = hard, ``0`` = free).
        rho_b: KL strength on the column marginal.
        mass: total mass for ``constraint="mass"``.
    """

    constraint: str = "balanced"
    rho_a: float | None = None
    rho_b: float | None = None
    mass: float = 1.0

    @classmethod
    def from_name(cls, constraint: str, rho: float | tuple[float, float] | None = None) -> Problem:
        """Build a problem from a constraint name; ``rho`` is used by ``"unbalanced"`` only."""
        check_choice("constraint", constraint, CONSTRAINTS)
        if constraint == "balanced":
            return cls("balanced", None, None)
        if constraint == "rows":
            return cls("rows", None, 0.0)
        if constraint == "cols":
            return cls("cols", 0.0, None)
        if constraint == "mass":
            return cls("mass")
        if rho is None:
            raise ValueError(
                "rho: the 'unbalanced' constraint needs rho > 0 (KL strength), got None"
            )
        ra, rb = rho if isinstance(rho, tuple) else (rho, rho)
        return cls("unbalanced", check_nonneg("rho", ra), check_nonneg("rho", rb))

    @property
    def tau_a(self) -> float:
        return exponent(self.rho_a)

    @property
    def tau_b(self) -> float:
        return exponent(self.rho_b)
