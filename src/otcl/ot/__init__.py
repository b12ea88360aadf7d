"""Entropic optimal-transport couplings on score matrices.

Three layers, in the spirit of OTT-JAX, and the object each one hands to the next:

* :mod:`otcl.ot.geometry` -- embeddings -> :class:`Geometry` (scores = log-kernel, layout, masks);
* :mod:`otcl.ot.problem` -- :class:`Problem`: the marginals and how strictly they hold
  (balanced, semi-relaxed, unbalanced, total mass);
* :mod:`otcl.ot.sinkhorn` -- :class:`Sinkhorn`, the solver and its options:
  ``Sinkhorn(**options)(geometry, problem) -> SinkhornOutput`` (plan, potentials, convergence).

For batches whose scores do not fit, :mod:`otcl.ot.streaming` holds the embeddings only
(:class:`StreamingGeometry`, :func:`streaming_pair_scores`) and
:func:`~otcl.ot.streaming_sinkhorn.streaming_solve` returns the potentials
(:class:`StreamingOutput`), recomputing tiles of scores in every pass.

:func:`sinkhorn` is the one-call form: ``sinkhorn(scores, a, b, iters=..., rho_a=..., rho_b=...)``.

Example:
    >>> import torch
    >>> from otcl.ot import Problem, Sinkhorn, pair_scores
    >>> geom = pair_scores(torch.randn(8, 4), torch.randn(8, 4), temperature=0.5)
    >>> out = Sinkhorn(iters=20)(geom, Problem.from_name("unbalanced", rho=1.0))
    >>> out.plan.shape
    torch.Size([16, 16])
"""

from .geometry import (
    LAYOUTS,
    SIMILARITIES,
    Geometry,
    layout_embeddings,
    negative_mask,
    pair_scores,
    positive_index,
    similarity,
    unit_rows,
)
from .problem import CONSTRAINTS, Problem
from .sinkhorn import BACKWARDS, DOMAINS, GRAD_MODES, Sinkhorn, SinkhornOutput, sinkhorn, solve
from .streaming import StreamingGeometry, streaming_pair_scores
from .streaming_sinkhorn import StreamingOutput, streaming_solve

__all__ = [
    "BACKWARDS",
    "CONSTRAINTS",
    "DOMAINS",
    "GRAD_MODES",
    "LAYOUTS",
    "SIMILARITIES",
    "Geometry",
    "Problem",
    "Sinkhorn",
    "SinkhornOutput",
    "StreamingGeometry",
    "StreamingOutput",
    "layout_embeddings",
    "negative_mask",
    "pair_scores",
    "positive_index",
    "similarity",
    "sinkhorn",
    "solve",
    "streaming_pair_scores",
    "streaming_solve",
    "unit_rows",
]
