"""Entropic optimal-transport couplings on score matrices.

Three parts, in the spirit of OTT-JAX:

* :mod:`otcl.ot.geometry` -- embeddings -> scores (log-kernel), layouts and masks;
* :mod:`otcl.ot.problem` -- marginals and constraint sets (balanced, semi-relaxed, unbalanced, mass);
* :mod:`otcl.ot.sinkhorn` -- the solver, returning a :class:`SinkhornOutput`.
"""

from .geometry import LAYOUTS, SIMILARITIES, Geometry, pair_scores, positive_index, similarity
from .problem import CONSTRAINTS, Problem
from .sinkhorn import DOMAINS, GRAD_MODES, SinkhornOutput, sinkhorn, solve

__all__ = [
    "CONSTRAINTS",
    "DOMAINS",
    "GRAD_MODES",
    "LAYOUTS",
    "SIMILARITIES",
    "Geometry",
    "Problem",
    "SinkhornOutput",
    "pair_scores",
    "positive_index",
    "similarity",
    "sinkhorn",
    "solve",
]
