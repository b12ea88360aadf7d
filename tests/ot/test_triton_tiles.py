"""The Triton tile kernels equal the PyTorch streamed passes (under Triton's interpreter on CPU).

Skipped, with the reason, where Triton is not installed (``pip install otcl[triton]``).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the CPU interpreter
triton = pytest.importorskip("triton", reason="Triton is not installed (pip install otcl[triton])")

from otcl.ot import Problem  # noqa: E402
from otcl.ot.streaming import streaming_pair_scores  # noqa: E402
from otcl.ot.streaming_sinkhorn import row_reduce, streaming_solve  # noqa: E402
from otcl.ot.triton_tiles import col_lse, row_lse, streaming_sinkhorn_log  # noqa: E402

N, D = 21, 5  # 42 simclr rows: blocks of 32 leave a remainder; d padded to 16


def _pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, D, generator=g)
    return z1, z1 + torch.randn(N, D, generator=g)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_row_lse_and_its_gradients(layout):
    z1, z2 = _pairs()
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    geo = streaming_pair_scores(a, b, temperature=0.3, layout=layout, tile_size=8)
    g = torch.randn(geo.shape[1], generator=torch.Generator().manual_seed(1)).requires_grad_()
    w = torch.randn(geo.shape[0], generator=torch.Generator().manual_seed(2))
    ref = (row_reduce(geo, g) * w).sum()
    ref_grads = torch.autograd.grad(ref, (a, b, g))
    a2, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    g2 = g.detach().clone().requires_grad_()
    geo2 = streaming_pair_scores(a2, b2, temperature=0.3, layout=layout, tile_size=8)
    got = (row_lse(geo2.x, geo2.y, 0.3, g2, mask_self=layout == "simclr") * w).sum()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for x, y in zip(torch.autograd.grad(got, (a2, b2, g2)), ref_grads, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_sinkhorn_potentials_on_the_kernels():
    z1, z2 = _pairs(3)
    geo = streaming_pair_scores(z1, z2, temperature=0.5, tile_size=8)
    for prob, taus in ((Problem(), (1.0, 1.0)), (Problem(rho_a=1.0, rho_b=1.0), (0.5, 0.5))):
        ref = streaming_solve(geo, prob, iters=10, domain="log", grad="detach")
        f, g = streaming_sinkhorn_log(
            geo.x, geo.y, 0.5, iters=10, tau_a=taus[0], tau_b=taus[1], mask_self=True
        )
        torch.testing.assert_close(f, ref.f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, ref.g, rtol=1e-5, atol=1e-5)
    lse = col_lse(geo.x, geo.y, 0.5, f, mask_self=True)
    assert torch.isfinite(lse).all()


def test_float64_is_refused():
    z1, z2 = _pairs()
    with pytest.raises(ValueError, match="^x, y: the Triton kernels take float32"):
        row_lse(z1.double(), z2.double(), 0.5)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_streaming_infonce_on_the_kernels(layout):
    from otcl.losses import build
    from otcl.losses.streaming_infonce import streaming_infonce

    z1, z2 = _pairs(4)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ref = build("infonce", layout=layout, temperature=0.2)(a, b)
    ref_grads = torch.autograd.grad(ref, (a, b))
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    got = streaming_infonce(a, b, temperature=0.2, layout=layout, backend="triton")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for x, y in zip(torch.autograd.grad(got, (a, b)), ref_grads, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
