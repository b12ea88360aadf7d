"""The OT composition (OTContrastiveLoss) for every member: gradients, precision, domains."""

from __future__ import annotations

import pytest
import torch

import otcl
from otcl.losses import build
from otcl.ot import SinkhornOutput
from tests.conftest import OT_FAMILY


# -- gradients, precision ---------------------------------------------------------------------
@pytest.mark.parametrize("name", OT_FAMILY)
@pytest.mark.parametrize("grad", ["unrolled", "implicit"])
@pytest.mark.parametrize("domain", ["log", "exp"])
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_gradcheck_every_loss(name, grad, domain, layout, make_pairs, build_applicable):
    """Every loss, gradient mode and solver arithmetic against finite differences (where the
    loss has a solver: the closed-form members take none of these options). Implicit gradients
    are those of the converged plan, so the solve runs to convergence there."""
    z1, z2 = make_pairs(n=3, d=2, seed=16)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    kw = {"iters": 3} if grad == "unrolled" else {"iters": 3000, "tol": 1e-15}
    loss = build_applicable(name, layout=layout, grad=grad, domain=domain, temperature=0.7, **kw)
    assert torch.autograd.gradcheck(
        lambda a, b: loss(a, b), (z1, z2), eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize("name", OT_FAMILY)
@pytest.mark.parametrize("domain", ["log", "exp"])
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_detach_mode_is_the_gradient_with_frozen_potentials(
    name, domain, layout, make_pairs, build_applicable
):
    """grad="detach": the exact gradient of the loss with the potentials (f, g) held at their
    values (the same function, re-evaluated with frozen potentials, passes gradcheck)."""
    z1, z2 = make_pairs(n=3, d=2, seed=20)
    kw = dict(layout=layout, grad="detach", domain=domain, temperature=0.7, iters=3)
    loss = build_applicable(name, **kw)
    solve_fn = loss.solve
    frozen: list = []

    def record(geom, bound=None):
        out = solve_fn(geom, bound)
        frozen.append((out.f.detach(), out.g.detach()))
        return out

    loss.solve = record
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    g_detach = torch.autograd.grad(loss(a, b), (a, b))
    calls = [0]

    def replay(geom, bound=None):
        scores = geom.scores
        f, g = frozen[calls[0] % len(frozen)]
        calls[0] += 1
        zero = scores.new_zeros(())
        log_plan = f.unsqueeze(-1) + scores + g.unsqueeze(-2)
        return SinkhornOutput(f, g, scores, 1, True, zero, zero, stored_log_plan=log_plan)

    loss.solve = replay
    if not frozen:  # infonce's fused path has no potentials: detach changes nothing
        assert name == "infonce"
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    g_frozen = torch.autograd.grad(loss(a, b), (a, b))
    for x, y in zip(g_detach, g_frozen, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a_, b_: loss(a_, b_),
        (z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)),
    )


@pytest.mark.parametrize("name", otcl.losses.available())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [0.05, 1.0])
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_autocast_half_precision_is_finite(name, dtype, eps, layout):
    """Every loss (hard-negative ones and DMM included) under bf16/fp16 autocast, eps in
    [0.05, 1]: finite float32 loss and finite encoder gradients."""
    torch.manual_seed(17)
    enc = torch.nn.Linear(8, 16)
    x1, x2 = torch.randn(32, 8), torch.randn(32, 8)
    params = {"temperature": eps, "layout": layout}
    if name == "dmm":  # with the DMM term switched on
        params = {"warmup": 0.0, "base_params": params}
    loss_fn = build(name, **params)
    with torch.autocast("cpu", dtype=dtype):
        z1, z2 = enc(x1), enc(x2)
        assert z1.dtype == dtype
        loss = loss_fn(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


@pytest.mark.parametrize("name", OT_FAMILY)
def test_loss_decreases_when_positives_align(name, make_pairs):
    z1, z2 = make_pairs(n=8, d=16, seed=18)
    loss = build(name)
    aligned = loss(z1, z1 + 0.01 * z2)
    random = loss(z1, z2)
    assert float(aligned) < float(random)


@pytest.mark.parametrize("name", OT_FAMILY)
def test_exp_and_log_domain_give_the_same_loss_and_gradient(name, make_pairs, build_applicable):
    z1, z2 = make_pairs(n=16, d=8, seed=19, dtype=torch.float32)
    grads = []
    values = []
    for domain in ("log", "exp"):
        a = z1.clone().requires_grad_(True)
        loss = build_applicable(name, domain=domain, temperature=0.1)(a, z2)
        loss.backward()
        values.append(loss.detach())
        grads.append(a.grad)
    torch.testing.assert_close(values[0], values[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
