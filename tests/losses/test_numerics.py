"""Numerics at the edges: every loss stays finite from temperature 1e-3 to 1e3 (float32 and
bfloat16 inputs), RINCE in log space is exact where it is representable, and embeddings of any
finite norm (or zero) are handled."""

from __future__ import annotations

import math

import pytest
import torch

import otcl
from otcl.losses import build
from otcl.losses.divergences import rince_rows

ALL = otcl.losses.available()
TEMPERATURES = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3]


def _aligned(dtype, seed=0, n=12, d=8):
    """Close positive pairs: the case where small temperatures overflow (s_pos / t ~ 1 / t)."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g)
    z2 = z1 + 0.1 * torch.randn(n, d, generator=g)
    return z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_every_loss_is_finite_over_the_temperature_sweep(name, dtype, layout):
    for t in TEMPERATURES:
        z1, z2 = _aligned(dtype)
        params = {"temperature": t, "layout": layout}
        if name == "dmm":  # with the DMM term on
            params = {"warmup": 0.0, "base_params": params}
        loss = build(name, **params)(z1, z2)
        loss.backward()
        assert torch.isfinite(loss), (name, t)
        assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all(), (name, t)


def _direct_rince(log_pos, lse, q, lam):
    return (-(q * log_pos).exp() / q + (lam * lse.exp()) ** q / q).mean()


def test_rince_rows_is_exact_where_representable():
    g = torch.Generator().manual_seed(1)
    log_pos = torch.randn(20, generator=g, dtype=torch.float64) * 10
    lse = log_pos + torch.rand(20, generator=g, dtype=torch.float64) * 5
    for q, lam in [(0.6, 0.01), (1.0, 0.5), (0.2, 2.0)]:
        torch.testing.assert_close(
            rince_rows(log_pos, lse, q, lam), _direct_rince(log_pos, lse, q, lam)
        )
        torch.testing.assert_close(
            rince_rows(log_pos.float(), lse.float(), q, lam),
            _direct_rince(log_pos, lse, q, lam).float(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_rince_beyond_float32_is_the_scaled_value_with_the_same_direction():
    """t = 5e-3: exponents up to q/t = 120 overflow float32 (e^88) but not float64. The float32
    value is RINCE times e^{-(c* - 60)}, and its gradient has RINCE's direction."""
    z1, z2 = _aligned(torch.float64, seed=2)
    loss64 = build("rince", temperature=5e-3)
    ref = loss64(z1, z2)
    (g_ref,) = torch.autograd.grad(ref, z1)
    a, b = z1.detach().float().requires_grad_(), z2.detach().float()
    got = build("rince", temperature=5e-3)(a, b)
    (g_got,) = torch.autograd.grad(got, a)
    assert torch.isfinite(got) and torch.isfinite(g_got).all()
    scale = float(got.detach()) / float(ref.detach())
    assert 0 < scale < 1e-10  # scaled down: the true value is ~e^120
    # the same direction of descent: g_got = scale * g_ref (up to float32 rounding)
    torch.testing.assert_close(
        g_got.double(), scale * g_ref, rtol=1e-3, atol=1e-6 * scale * float(g_ref.abs().max())
    )
    # and the scale is the documented constant e^{-(c* - 60)}
    geo = loss64.pair_geometry(z1.detach(), z2.detach())
    s = geo.scores
    q = loss64.q
    top = max(
        float((q * s.gather(1, geo.pos[:, None])).max()),
        float(q * (torch.logsumexp(s, 1) + math.log(loss64.lam)).max()),
    )
    assert math.isclose(scale, math.exp(-(top - 60.0)), rel_tol=1e-3)


@pytest.mark.parametrize("name", [n for n in ALL if n != "dmm"])
def test_huge_norms_are_cosine_invariant(name):
    """Cosine losses do not depend on the norms: rows of norm ~1e20 (whose squares overflow
    float32) give the same value as the unit rows."""
    z1, z2 = _aligned(torch.float32, seed=3)
    z1, z2 = z1.detach(), z2.detach()
    loss = build(name)
    torch.testing.assert_close(loss(z1 * 1e20, z2 * 3e19), loss(z1, z2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_zero_row_is_refused_with_its_index(name):
    z1, z2 = _aligned(torch.float32, seed=4)
    z1 = z1.detach().clone()
    z1[3] = 0.0
    with pytest.raises(
        ValueError, match=r"z1: expected rows of nonzero norm .* zero rows at \[3\]"
    ):
        build(name)(z1, z2)


def test_zero_row_without_the_check_is_finite_and_documented():
    """check_inputs=False: a zero row is a zero vector (cosine 0 with everything)."""
    z1, z2 = _aligned(torch.float32, seed=5)
    z1 = z1.detach().clone()
    z1[0] = 0.0
    z1.requires_grad_()
    loss = build("gca-uot", check_inputs=False)(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all()


def test_dot_similarity_keeps_zero_rows():
    z1, z2 = _aligned(torch.float32, seed=6)
    z1 = z1.detach().clone()
    z1[0] = 0.0  # a zero row is a valid input to a dot product
    assert torch.isfinite(build("infonce", similarity="dot")(z1, z2))


def test_uniformity_penalty_of_a_near_permutation_plan_is_finite():
    """Tiny temperature, cross layout: the negatives' mass underflows; the penalty is the tiny
    true value (both the plan path and the potentials path), with finite gradients."""
    from otcl.losses.iot import _uniformity_reference, uniformity_penalty

    lp = torch.full((6, 6), -2000.0, dtype=torch.float64)
    lp.fill_diagonal_(0.0)
    lp = lp + 0.1 * torch.randn(6, 6, dtype=torch.float64)
    neg = ~torch.eye(6, dtype=torch.bool)
    x = lp.clone().requires_grad_()
    val = uniformity_penalty(x, neg)
    val.backward()
    assert torch.isfinite(val) and 0 <= float(val.detach()) < 1e-300
    assert torch.isfinite(x.grad).all()
    moderate = lp.clamp_min(-30.0)
    torch.testing.assert_close(
        uniformity_penalty(moderate, neg), _uniformity_reference(moderate, neg)
    )
