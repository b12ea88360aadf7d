r"""Streamed row reductions of the scores: log-sum-exps and weighted sums, differentiable.

:func:`row_reduce` gives, per row, :math:`\mathrm{LSE}_j(S_{ij} + g_j + w_{ij})` or
:math:`\sum_j W_{ij}(S_{ij} + g_j)` over the tiles of a
:class:`~otcl.ot.streaming.StreamingGeometry` (one pass forward, one backward): the row
log-sum-exps of a plan with fixed potentials, the targets' terms of the losses, the closed-form
row solve (InfoNCE), the negatives' terms of IOT's uniformity and of ``ot-hard``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._validation import check_choice
from .streaming import StreamingGeometry, TileSpec

__all__ = ["row_reduce"]


class _RowReduce(torch.autograd.Function):
    r"""Per-row reduction of :math:`S + g` over a tile weight: ``"lse"``:
    :math:`\mathrm{LSE}_j(S_{ij} + g_j + w_{ij})`; ``"sum"``: :math:`\sum_j W_{ij}(S_{ij} + g_j)`.

    Backward: :math:`\bar S_{ij} = h_i\,\mathrm{softmax}_j(\cdot)` or :math:`h_i W_{ij}`,
    :math:`\bar g_j = \sum_i \bar S_{ij}` (this rank's rows), one pass.
    """

    @staticmethod
    def forward(ctx, x, y, g, spec, weight, kind):
        n = x.shape[0]
        out = x.new_empty(n)
        for r0, r1 in spec.blocks(n):
            S = spec.scores(x, y, r0, r1)
            if g is not None:
                S.add_(g)
            w = None if weight is None else weight(r0, r1)
            if kind == "lse":
                out[r0:r1] = torch.logsumexp(S if w is None else S.add_(w), dim=-1)
            else:
                out[r0:r1] = torch.where(w != 0, w * S, torch.zeros_like(S)).sum(-1)
        ctx.spec, ctx.weight, ctx.kind = spec, weight, kind
        ctx.has_g = g is not None
        ctx.save_for_backward(x, y, g if g is not None else x.new_empty(0), out)
        return out

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        x, y, g, out = ctx.saved_tensors
        spec, weight, kind = ctx.spec, ctx.weight, ctx.kind
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_g = ctx.has_g and ctx.needs_input_grad[2]
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        gg = torch.zeros(y.shape[0], dtype=x.dtype, device=x.device) if need_g else None
        for r0, r1 in spec.blocks(x.shape[0]):
            w = None if weight is None else weight(r0, r1)
            h = grad[r0:r1].unsqueeze(-1)
            if kind == "lse":
                S = spec.scores(x, y, r0, r1)
                if ctx.has_g:
                    S.add_(g)
                if w is not None:
                    S.add_(w)
                top = out[r0:r1]  # a row with nothing to sum (-inf) has no gradient
                top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
                tile = S.sub_(top.unsqueeze(-1)).exp_().mul_(h)
            else:
                assert w is not None  # a "sum" reduction always has its weights
                tile = torch.where(w != 0, w * h, torch.zeros_like(w))
            if gg is not None:
                gg += tile.sum(0)
            if need_x or need_y:
                spec.backprop(x, y, r0, r1, tile, gx, gy)
        return gx, gy, gg, None, None, None


def row_reduce(
    geom: StreamingGeometry,
    g: torch.Tensor | None = None,
    *,
    weight: Callable[[int, int], torch.Tensor] | None = None,
    kind: str = "lse",
    spec: TileSpec | None = None,
) -> torch.Tensor:
    r"""(n,) per-row :math:`\mathrm{LSE}_j(S_{ij} + g_j + w_{ij})` (``kind="lse"``, ``weight``
    returns log-weights, ``-inf`` = left out) or :math:`\sum_j W_{ij}(S_{ij} + g_j)`
    (``kind="sum"``, ``weight`` returns the weights), streamed, differentiable in the embeddings
    and ``g``. ``spec``: other scores of the same point clouds (default: the geometry's)."""
    check_choice("kind", kind, ("lse", "sum"))
    if kind == "sum" and weight is None:
        raise ValueError("weight: kind='sum' needs a weight tile function, got None")
    spec = geom.spec if spec is None else spec
    return _RowReduce.apply(geom.x, geom.y, g, spec, weight, kind)
