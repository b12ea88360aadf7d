"""
The losses' fast paths equal their references: vector-only divergences (``RowView``) vs the
log-plan formulas, the fused cross-entropy, the uniformity penalty's closed-form backward, and
every loss's default (fused) solver vs the autograd reference.
"""

from __future__ import annotations

import math

import pytest
import torch

import otcl
from otcl.losses import divergences


def _loss_and_grads(name, z1, z2, fused, **params):
    """Loss and gradients with the fused solver or the autograd reference (the parameters that
    do not apply to ``name`` are left out)."""
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    drop = otcl.losses.inapplicable_params(name, params)
    fn = otcl.losses.build(name, **{k: v for k, v in params.items() if k not in drop})
    if not fused:  # the reference solver, also where the parameter does not apply (closed forms)
        fn.backward = "autograd"
    loss = fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


LOSS_CASES = [
    {},
    {"layout": "cross"},
    {"iters": 20, "temperature": 0.1},
    {"domain": "log"},
]


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in otcl.losses.available()
        if issubclass(otcl.losses.get(n), otcl.losses.OTContrastiveLoss)
    ],
)
@pytest.mark.parametrize("params", LOSS_CASES, ids=["default", "cross", "t0.1-20it", "log"])
def test_every_loss_fast_path_equals_reference(name, params, assert_same):
    """fp32, N=64, d=32: loss values and gradients of the default (unrolled) mode unchanged."""
    torch.manual_seed(3)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    fast = _loss_and_grads(name, z1, z2, True, **params)
    ref = _loss_and_grads(name, z1, z2, False, **params)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        assert_same(x, y, 1e-5)


def test_fused_cross_entropy_equals_formula():
    torch.manual_seed(4)
    lp = torch.randn(10, 12, dtype=torch.float64)
    lp[torch.arange(10), torch.arange(10)] = float("-inf")
    pos = torch.randint(10, 12, (10,))
    x = lp.clone().requires_grad_()
    divergences.cross_entropy(x, None, pos).backward()
    y = lp.clone().requires_grad_()
    log_p = y - torch.logsumexp(y, dim=-1, keepdim=True)
    (-log_p.gather(-1, pos[:, None]).mean()).backward()
    torch.testing.assert_close(x.grad, y.grad)
    torch.testing.assert_close(
        divergences.cross_entropy(lp, None, pos), -log_p.gather(-1, pos[:, None]).mean()
    )


@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize("name", ["gca-ince", "gca-rince", "gca-uot", "iot"])
def test_vector_divergences_equal_plan_formulas(name, layout, assert_same):
    """plan_cross_entropy / plan_rince on row_lse equal the log-plan formulas (fp32, 1e-5)."""
    torch.manual_seed(6)
    z1, z2 = torch.randn(40, 16), torch.randn(40, 16)
    loss = otcl.losses.build(name, iters=20, layout=layout)
    pos = otcl.ot.geometry.positive_index(40, layout)
    vals = []
    for fast in (True, False):
        a = z1.clone().requires_grad_()
        out = loss.coupling(a, z2)
        assert out.row_lse is not None
        if not fast:  # the log-plan formulas of the same solve
            out = out.replace(row_lse=None)
        ce = divergences.plan_cross_entropy(out, None, pos)
        ri = divergences.plan_rince(out, None, pos, q=0.6, lam=0.01)
        (ce + ri).backward()
        vals.append((ce.detach(), ri.detach(), a.grad))
    for x, y in zip(*vals, strict=True):
        assert_same(x, y, 1e-5)


@pytest.mark.parametrize("detach_mean", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniformity_penalty_equals_autograd_reference(detach_mean, dtype, assert_same):
    from otcl.losses.iot import _uniformity_reference, uniformity_penalty

    torch.manual_seed(7)
    lp = 3 * torch.randn(50, 47, dtype=dtype) - 8
    lp.fill_diagonal_(float("-inf"))
    lp[3, 9] = float("-inf")
    neg = (torch.rand(50, 47) > 0.2) & torch.isfinite(lp)
    W = torch.tensor(1.7, dtype=dtype)
    a, b = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    va = uniformity_penalty(a, neg, detach_mean=detach_mean)
    vb = _uniformity_reference(b, neg, detach_mean=detach_mean)
    (W * va).backward()
    (W * vb).backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert_same(va, vb, tol)
    assert_same(a.grad, b.grad, tol)
    assert float(a.grad[~neg & torch.isfinite(lp)].abs().max()) > 0  # mass terms reach all


@pytest.mark.parametrize("grad", ["implicit", "detach"])
@pytest.mark.parametrize(
    "name",
    [
        n
        for n in otcl.losses.available()
        if issubclass(otcl.losses.get(n), otcl.losses.OTContrastiveLoss)
    ],
)
def test_implicit_and_detach_fast_paths_equal_reference(name, grad, assert_same):
    """Exp-domain implicit/detach: K reused for row_lse and the adjoint plan; same as the
    reference (log-plan divergences, plan by exp) to 1e-5 in fp32."""
    torch.manual_seed(8)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    fast = _loss_and_grads(name, z1, z2, True, iters=30, grad=grad)
    ref = _loss_and_grads(name, z1, z2, False, iters=30, grad=grad)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        assert_same(x, y, 1e-5)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"layout": "cross"},
        {"self_pair": "max_cost"},
        {"detach_mean": True},
        {"temperature": 0.05},  # aligned views: the positives hold most of the plan's mass
    ],
    ids=["default", "cross", "max_cost", "detach_mean", "t0.05-aligned"],
)
def test_iot_uni_vector_penalty_equals_plan_penalty(params, assert_same):
    """iot-uni's uniformity term from the potentials (no plan) equals the plan formula."""
    torch.manual_seed(9)
    z1 = torch.randn(48, 16)
    z2 = z1 + 0.05 * torch.randn(48, 16) if "temperature" in params else torch.randn(48, 16)
    fast = _loss_and_grads("iot-uni", z1, z2, True, iters=20, **params)
    ref = _loss_and_grads("iot-uni", z1, z2, False, iters=20, **params)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        assert_same(x, y, 1e-5)
    # the penalty alone (lam_uni large) also agrees
    big = dict(params, lam_uni=50.0)
    fast = _loss_and_grads("iot-uni", z1, z2, True, iters=20, **big)
    ref = _loss_and_grads("iot-uni", z1, z2, False, iters=20, **big)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        assert_same(x, y, 1e-5)
