r"""A streaming InfoNCE baseline: the Inf-CL recipe in plain PyTorch.

Inf-CL (Wang et al., 2024, arXiv 2410.17243) computes InfoNCE with O(n) loss memory: the forward
keeps only the per-row log-sum-exp of the scores, tile by tile; the backward recomputes each tile
and forms its softmax from the stored log-sum-exps:

.. math::

    \mathcal L = \frac1n\sum_i \big(\mathrm{LSE}_j S_{ij} - S_{i,p(i)}\big),\qquad
    \bar S_{ij} = \frac1n\big(\mathrm{softmax}_j(S_{i\cdot}) - 1[j = p(i)]\big),

:math:`\bar x = \bar S y / \varepsilon`, :math:`\bar y = \bar S^\top x / \varepsilon`: one score
pass forward, one score pass and two gradient products backward. It is the fair large-batch
baseline for the streamed OT losses (``benchmarks/streaming.py``): the same tiles, the same
per-pass work, no Sinkhorn. Self-contained (no otcl solver code), so it is also an independent
reference for ``build("infonce", geometry="streaming")``, which it equals.
"""

from __future__ import annotations

import torch

from .._validation import check_choice, check_int_at_least, check_positive
from ..ot.geometry import LAYOUTS, unit_rows

__all__ = ["streaming_infonce"]


def _tile(x, y, r0, r1, temperature, mask_self):
    """Scores of rows r0:r1 (1/eps inside the product, self-pairs masked by index)."""
    s = torch.addmm(
        x.new_empty(()).expand(r1 - r0, y.shape[0]), x[r0:r1], y.T, beta=0, alpha=1 / temperature
    )
    if mask_self:
        s[torch.arange(r1 - r0), torch.arange(r0, r1)] = float("-inf")
    return s


class _TiledInfoNCE(torch.autograd.Function):
    """Mean over rows of LSE_j(S_ij) - S_ip, S = x y^T / t (self-pairs masked when asked)."""

    @staticmethod
    def forward(ctx, x, y, pos, temperature, tile, mask_self):
        n = x.shape[0]
        lse = x.new_empty(n)
        for r0 in range(0, n, tile):
            r1 = min(r0 + tile, n)
            s = _tile(x, y, r0, r1, temperature, mask_self)
            lse[r0:r1] = torch.logsumexp(s, dim=-1)
        s_pos = (x * y[pos]).sum(-1) / temperature
        ctx.save_for_backward(x, y, pos, lse)
        ctx.temperature, ctx.tile, ctx.mask_self = temperature, tile, mask_self
        return (lse - s_pos).mean()

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        x, y, pos, lse = ctx.saved_tensors
        t, tile, n = ctx.temperature, ctx.tile, x.shape[0]
        scale = float(grad) / (n * t)
        gx, gy = torch.zeros_like(x), torch.zeros_like(y)
        for r0 in range(0, n, tile):
            r1 = min(r0 + tile, n)
            s = _tile(x, y, r0, r1, t, ctx.mask_self)
            p = s.sub_(lse[r0:r1].unsqueeze(-1)).exp_()  # the tile's softmax
            gx[r0:r1].addmm_(p, y, alpha=scale)  # scale = grad / (n t)
            gy.addmm_(p.T, x[r0:r1], alpha=scale)
        gx -= scale * y[pos]  # the positives' one-hot part, O(n d)
        gy.index_add_(0, pos, -scale * x)
        return gx, gy, None, None, None, None


def streaming_infonce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.5,
    layout: str = "simclr",
    tile_size: int = 1024,
    symmetric: bool = True,
    backend: str = "torch",
) -> torch.Tensor:
    """InfoNCE / NT-Xent (cosine similarity) with O(n) loss memory: tiles of ``tile_size`` rows.

    Args:
        z1, z2: (N, d) the two views.
        temperature: eps > 0.
        layout: ``"simclr"`` (2N x 2N, self-pairs masked) or ``"cross"`` (N x N; averaged over
            both directions with ``symmetric``, as CLIP).
        tile_size: rows per tile (>= 1).
        backend: ``"torch"`` (the tiles above) or ``"triton"`` (the fused kernels of
            :mod:`otcl.ot.triton_tiles`, float32: one launch per pass, ``otcl[triton]``).
    Returns:
        scalar, equal to ``build("infonce", temperature=..., layout=...)(z1, z2)``.
    """
    check_choice("layout", layout, LAYOUTS)
    check_int_at_least("tile_size", tile_size, 1)
    check_choice("backend", backend, ("torch", "triton"))
    t = check_positive("temperature", temperature)
    a, b = unit_rows(z1), unit_rows(z2)
    if a.dtype not in (torch.float32, torch.float64):
        a, b = a.float(), b.float()
    n = a.shape[0]
    idx = torch.arange(n, device=a.device)
    if backend == "triton":
        return _triton_infonce(a, b, t, layout, symmetric)
    if layout == "simclr":
        x = torch.cat([a, b])
        return _TiledInfoNCE.apply(x, x, torch.cat([idx + n, idx]), t, tile_size, True)
    loss = _TiledInfoNCE.apply(a, b, idx, t, tile_size, False)
    if symmetric:
        loss = 0.5 * (loss + _TiledInfoNCE.apply(b, a, idx, t, tile_size, False))
    return loss


def _triton_infonce(a, b, t, layout, symmetric):
    from ..ot.triton_tiles import row_lse

    a, b = a.float(), b.float()
    if layout == "simclr":
        x = torch.cat([a, b])
        n = a.shape[0]
        pos = torch.cat([torch.arange(n) + n, torch.arange(n)]).to(x.device)
        return (row_lse(x, x, t, mask_self=True) - (x * x[pos]).sum(-1) / t).mean()
    s_pos = (a * b).sum(-1) / t
    loss = (row_lse(a, b, t) - s_pos).mean()
    if symmetric:
        loss = 0.5 * (loss + (row_lse(b, a, t) - s_pos).mean())
    return loss
