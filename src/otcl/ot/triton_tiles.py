r"""Triton kernels for the streamed tile passes (optional: ``pip install otcl[triton]``).

The PyTorch tiles of :mod:`otcl.ot.streaming` are the default and the reference; these kernels
fuse a pass over the scores into one launch, with the tile never leaving on-chip memory:

* :func:`row_lse` -- :math:`\mathrm{LSE}_j(S_{ij} + g_j)`, :math:`S = x y^\top/\varepsilon`
  (self-pairs masked in the ``simclr`` layout), each program a block of rows looping over column
  blocks with a running maximum (the online log-sum-exp). The column log-sum-exp
  :math:`\mathrm{LSE}_i(S_{ij} + f_i)` of the Sinkhorn column update is the same kernel on
  :math:`(y, x)` (:func:`col_lse`): :math:`S^\top = y x^\top/\varepsilon` and the self-pair mask is
  symmetric.
* its backward, as Inf-CL's: one kernel per gradient side, each recomputing the tiles of its
  block and forming the softmax from the saved log-sum-exps, so that no program writes another
  one's rows (no atomics): :math:`\bar x_i = \sum_j h_i P_{ij} y_j/\varepsilon` (row blocks) and
  :math:`\bar y_j = \sum_i h_i P_{ij} x_i/\varepsilon`, :math:`\bar g_j = \sum_i h_i P_{ij}`
  (column blocks), :math:`P_{ij} = e^{S_{ij} + g_j - \ell_i}`.

:func:`row_lse` is differentiable (``torch.autograd.Function``); :func:`streaming_sinkhorn_log`
runs the log-domain Sinkhorn iterations on these kernels (two launches per iteration). Both
equal the PyTorch streamed passes (``tests/ot/test_triton_tiles.py``, run on the CPU under
Triton's interpreter, ``TRITON_INTERPRET=1``; skipped, with the reason, without Triton).
"""

# pyright: reportInvalidTypeForm=false
# (Triton's JIT DSL is not statically typable: kernels take ``tl.constexpr`` annotations and are
# launched as ``kernel[grid](...)``, so the optional modules are typed ``Any`` below.)
from __future__ import annotations

import math
from typing import Any

import torch

triton: Any
tl: Any
try:  # an optional dependency: the module imports without it, its functions then refuse
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None
    tl = None

__all__ = ["HAVE_TRITON", "col_lse", "row_lse", "streaming_sinkhorn_log"]

HAVE_TRITON = triton is not None


def _need() -> None:
    if not HAVE_TRITON:
        raise ImportError("triton: the Triton kernels need `pip install otcl[triton]`")


if HAVE_TRITON:

    @triton.jit
    def _load_rows(P, idx, ks, n, d):
        """Rows ``idx`` of the (n, d) row-major matrix at ``P``, zero past n rows or d columns."""
        return tl.load(
            P + idx[:, None] * d + ks[None, :],
            mask=(idx[:, None] < n) & (ks[None, :] < d),
            other=0.0,
        )

    @triton.jit
    def _score_tile(
        xb, Y, G, rows, c0, ks, m, d, inv_eps,
        HAS_G: tl.constexpr, MASK_SELF: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        """The column block ``c0`` of a row block's scores: ``(y block, S + g, kept)``, with
        ``kept`` the real columns (and, ``MASK_SELF``, not the rows' own)."""
        cols = c0 + tl.arange(0, BN)
        yb = _load_rows(Y, cols, ks, m, d)
        s = tl.dot(xb, tl.trans(yb)) * inv_eps
        if HAS_G:
            s += tl.load(G + cols, mask=cols < m, other=0.0)[None, :]
        ok = cols[None, :] < m
        if MASK_SELF:
            ok = ok & (rows[:, None] != cols[None, :])
        return yb, s, ok

    @triton.jit
    def _lse_fwd(
        X, Y, G, OUT, n, m, d, inv_eps,
        HAS_G: tl.constexpr, MASK_SELF: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        rows = pid * BM + tl.arange(0, BM)
        ks = tl.arange(0, BD)
        xb = _load_rows(X, rows, ks, n, d)
        top = tl.full((BM,), float("-inf"), tl.float32)
        total = tl.zeros((BM,), tl.float32)
        for c0 in range(0, m, BN):
            _, s, ok = _score_tile(xb, Y, G, rows, c0, ks, m, d, inv_eps, HAS_G, MASK_SELF, BN)
            s = tl.where(ok, s, float("-inf"))
            new = tl.maximum(top, tl.max(s, 1))
            safe = tl.where(new == float("-inf"), 0.0, new)
            total = total * tl.exp(top - safe) + tl.sum(tl.exp(s - safe[:, None]), 1)
            top = new
        safe = tl.where(top == float("-inf"), 0.0, top)
        tl.store(OUT + rows, tl.log(total) + safe, mask=rows < n)

    @triton.jit
    def _lse_bwd_rows(
        X, Y, G, LSE, H, GX, n, m, d, inv_eps,
        HAS_G: tl.constexpr, MASK_SELF: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        rows = pid * BM + tl.arange(0, BM)
        ks = tl.arange(0, BD)
        rmask = rows < n
        xb = _load_rows(X, rows, ks, n, d)
        lse = tl.load(LSE + rows, mask=rmask, other=0.0)
        h = tl.load(H + rows, mask=rmask, other=0.0)
        acc = tl.zeros((BM, BD), tl.float32)
        for c0 in range(0, m, BN):
            yb, s, ok = _score_tile(xb, Y, G, rows, c0, ks, m, d, inv_eps, HAS_G, MASK_SELF, BN)
            ok = ok & rmask[:, None]
            p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0) * h[:, None]
            acc += tl.dot(p, yb)
        tl.store(
            GX + rows[:, None] * d + ks[None, :],
            acc * inv_eps,
            mask=rmask[:, None] & (ks[None, :] < d),
        )

    @triton.jit
    def _lse_bwd_cols(
        X, Y, G, LSE, H, GY, GG, n, m, d, inv_eps,
        HAS_G: tl.constexpr, MASK_SELF: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        cols = pid * BN + tl.arange(0, BN)
        ks = tl.arange(0, BD)
        cmask = cols < m
        yb = _load_rows(Y, cols, ks, m, d)
        gcol = tl.zeros((BN,), tl.float32)
        if HAS_G:
            gcol = tl.load(G + cols, mask=cmask, other=0.0)
        acc = tl.zeros((BN, BD), tl.float32)
        gsum = tl.zeros((BN,), tl.float32)
        for r0 in range(0, n, BM):
            rows = r0 + tl.arange(0, BM)
            rmask = rows < n
            xb = _load_rows(X, rows, ks, n, d)
            lse = tl.load(LSE + rows, mask=rmask, other=0.0)
            h = tl.load(H + rows, mask=rmask, other=0.0)
            s = tl.dot(xb, tl.trans(yb)) * inv_eps + gcol[None, :]
            ok = rmask[:, None] & cmask[None, :]
            if MASK_SELF:
                ok = ok & (rows[:, None] != cols[None, :])
            p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0) * h[:, None]
            acc += tl.dot(tl.trans(p), xb)
            gsum += tl.sum(p, 0)
        tl.store(
            GY + cols[:, None] * d + ks[None, :],
            acc * inv_eps,
            mask=cmask[:, None] & (ks[None, :] < d),
        )
        tl.store(GG + cols, gsum, mask=cmask)


def _blocks(d: int) -> tuple[int, int, int]:
    return 32, 32, max(16, triton.next_power_of_2(d))


def _lse_launch(x, y, g, inv_eps, mask_self):
    n, d = x.shape
    m = y.shape[0]
    bm, bn, bd = _blocks(d)
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    g_arg = g if g is not None else out  # a placeholder pointer when HAS_G is off
    _lse_fwd[(triton.cdiv(n, bm),)](
        x, y, g_arg, out, n, m, d, inv_eps, HAS_G=g is not None, MASK_SELF=mask_self,
        BM=bm, BN=bn, BD=bd,
    )  # fmt: skip
    return out


class _RowLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, g, inv_eps, mask_self):
        x, y = x.contiguous(), y.contiguous()
        g = None if g is None else g.contiguous()
        out = _lse_launch(x, y, g, inv_eps, mask_self)
        ctx.save_for_backward(x, y, g if g is not None else out.new_empty(0), out)
        ctx.inv_eps, ctx.mask_self, ctx.has_g = inv_eps, mask_self, g is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        x, y, g, lse = ctx.saved_tensors
        n, d = x.shape
        m = y.shape[0]
        bm, bn, bd = _blocks(d)
        h = grad.contiguous().float()
        g_arg = g if ctx.has_g else lse
        flags = dict(HAS_G=ctx.has_g, MASK_SELF=ctx.mask_self, BM=bm, BN=bn, BD=bd)
        gx = torch.empty_like(x)
        _lse_bwd_rows[(triton.cdiv(n, bm),)](x, y, g_arg, lse, h, gx, n, m, d, ctx.inv_eps, **flags)
        gy = torch.empty_like(y)
        gg = torch.empty(m, dtype=torch.float32, device=x.device)
        _lse_bwd_cols[(triton.cdiv(m, bn),)](
            x, y, g_arg, lse, h, gy, gg, n, m, d, ctx.inv_eps, **flags
        )
        return gx, gy, (gg if ctx.has_g else None), None, None


def row_lse(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
    g: torch.Tensor | None = None,
    *,
    mask_self: bool = False,
) -> torch.Tensor:
    r"""(n,) :math:`\mathrm{LSE}_j(x_i\cdot y_j/\varepsilon + g_j)` in one fused kernel,
    differentiable in ``x``, ``y`` and ``g`` (float32; ``mask_self``: the diagonal is left out,
    the ``simclr`` layout with ``y`` the rows' own views first)."""
    _need()
    if x.dtype != torch.float32 or y.dtype != torch.float32:
        raise ValueError(f"x, y: the Triton kernels take float32, got {x.dtype} and {y.dtype}")
    return _RowLSE.apply(x, y, g, 1.0 / temperature, bool(mask_self))


def col_lse(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
    f: torch.Tensor | None = None,
    *,
    mask_self: bool = False,
) -> torch.Tensor:
    r"""(m,) :math:`\mathrm{LSE}_i(x_i\cdot y_j/\varepsilon + f_i)`: :func:`row_lse` of the
    transposed problem."""
    return row_lse(y, x, temperature, f, mask_self=mask_self)


def streaming_sinkhorn_log(
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
    *,
    iters: int,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    mask_self: bool = False,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Log-domain Sinkhorn potentials ``(f, g)`` with uniform marginals on the kernels (no
    gradient): :math:`f \leftarrow \tau_a(\log a - \mathrm{LSE}_j(S + g))`,
    :math:`g \leftarrow \tau_b(\log b - \mathrm{LSE}_i(S + f))`, two launches per iteration.
    Equals :func:`otcl.ot.streaming_sinkhorn.streaming_solve`'s potentials."""
    _need()
    n, m = x.shape[0], y.shape[0]
    log_a, log_b = -math.log(n), -math.log(m)
    if init is None:
        f = torch.zeros(n, dtype=torch.float32, device=x.device)
        g = torch.zeros(m, dtype=torch.float32, device=x.device)
    else:
        f, g = init[0].float(), init[1].float()
    with torch.no_grad():
        for _ in range(iters):
            if tau_a > 0:
                f = tau_a * (log_a - row_lse(x, y, temperature, g, mask_self=mask_self))
            if tau_b > 0:
                g = tau_b * (log_b - col_lse(x, y, temperature, f, mask_self=mask_self))
            if tau_a == 0 or tau_b == 0:
                break
    return f, g
