"""The fast paths equal the reference paths.

* the hand-written unrolled backwards (exp domain: rank-2T kernel gradient; log domain:
  recomputation) vs plain autograd through the Sinkhorn loop (``fused_backward(False)``);
* every named loss, default settings, fp32: values and gradients to 1e-5;
* the fused cross-entropy divergence vs its explicit formula.
"""

from __future__ import annotations

import math

import pytest
import torch

import otcl
from otcl.losses import divergences
from otcl.ot.sinkhorn import fused_backward

PROBLEMS = [(None, None), (0.5, 2.0), (None, 0.3), (None, 0.0), (0.0, None)]


def _run(S, a, b, W, fused, **kw):
    S1, a1, b1 = (t.clone().requires_grad_() for t in (S, a, b))
    init = kw.pop("init", None)
    if init is not None:
        init = tuple(t.clone().requires_grad_() for t in init)
    with fused_backward(fused):
        out = otcl.ot.sinkhorn(S1, a1, b1, init=init, **kw)
    # a loss using the plan and (gauge-dependent) potentials directly
    loss = (out.plan * W).sum() + 0.3 * out.f.sum() + (out.g**2).sum()
    loss.backward()
    grads = [S1.grad, a1.grad, b1.grad]
    if init is not None:
        grads += [t.grad for t in init]
    return out, grads


def _assert_same(x, y, tol, floor=1e-12):
    """max |x - y| <= tol * max(max |y|, floor)."""
    if x is None or y is None:  # an unused input: None in autograd, zeros in the fused path
        assert all(t is None or t.abs().max() == 0 for t in (x, y))
        return
    x, y = x.detach(), y.detach()
    scale = max(float(y.abs().max()), floor)
    assert float((x - y).abs().max()) <= tol * scale, (x, y)


@pytest.mark.parametrize("rho", PROBLEMS)
@pytest.mark.parametrize("domain", ["exp", "log"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_sinkhorn_equals_autograd(rho, domain, dtype):
    g = torch.Generator().manual_seed(0)
    S = 2 * torch.randn(3, 20, 16, generator=g, dtype=dtype)
    S[:, 0, 1] = float("-inf")
    a = torch.rand(20, generator=g, dtype=dtype) + 0.1  # shared (broadcast) row marginal
    b = torch.rand(3, 16, generator=g, dtype=dtype) + 0.1  # batched column marginal
    a, b = a / a.sum(), b / b.sum(-1, keepdim=True)
    W = torch.randn(3, 20, 16, generator=g, dtype=dtype)
    init = (0.1 * torch.randn(3, 20, dtype=dtype), 0.1 * torch.randn(3, 16, dtype=dtype))
    kw = dict(iters=12, rho_a=rho[0], rho_b=rho[1], domain=domain, init=init)
    out_f, gr_f = _run(S, a, b, W, True, **dict(kw))
    out_r, gr_r = _run(S, a, b, W, False, **dict(kw))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    fast = (out_f.f, out_f.g, out_f.log_plan.exp())
    for x, y in zip(fast, (out_r.f, out_r.g, out_r.log_plan.exp()), strict=True):
        _assert_same(x, y, tol)
    for x, y in zip(
        (out_f.row_error, out_f.col_error), (out_r.row_error, out_r.col_error), strict=True
    ):  # marginal errors, near zero: absolute tolerance
        _assert_same(x, y, tol, floor=0.1)
    assert out_f.n_iters == out_r.n_iters and out_f.domain == out_r.domain == domain
    for x, y in zip(gr_f, gr_r, strict=True):
        _assert_same(x, y, tol)


@pytest.mark.parametrize("domain", ["exp", "log"])
def test_fused_early_stop_matches(domain):
    torch.manual_seed(1)
    S = torch.randn(30, 30, dtype=torch.float64)
    a = b = torch.full((30,), 1 / 30, dtype=torch.float64)
    W = torch.randn(30, 30, dtype=torch.float64)
    kw = dict(iters=500, tol=1e-9, check_every=5, domain=domain)
    out_f, gr_f = _run(S, a, b, W, True, **dict(kw))
    out_r, gr_r = _run(S, a, b, W, False, **dict(kw))
    assert out_f.converged and out_r.converged
    assert out_f.n_iters == out_r.n_iters < 500
    for x, y in zip(gr_f, gr_r, strict=True):
        _assert_same(x, y, 1e-10)


def test_errors_from_scaling_vectors_match_plan():
    """Exp-domain marginal errors are computed from u, v and two matvecs; check vs the plan."""
    torch.manual_seed(2)
    S = torch.randn(2, 12, 9)
    for grad in ("unrolled", "detach", "implicit"):
        out = otcl.ot.sinkhorn(S, iters=3, rho_a=1.0, grad=grad, domain="exp")
        P = out.plan
        torch.testing.assert_close(out.row_error, (P.sum(-1) - 1 / 12).abs().sum(-1))
        torch.testing.assert_close(out.col_error, (P.sum(-2) - 1 / 9).abs().sum(-1))


def _loss_and_grads(name, z1, z2, fused, **params):
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    fn = otcl.losses.build(name, **params)
    with fused_backward(fused):
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
def test_every_loss_fast_path_equals_reference(name, params):
    """fp32, N=64, d=32: loss values and gradients of the default (unrolled) mode unchanged."""
    torch.manual_seed(3)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    fast = _loss_and_grads(name, z1, z2, True, **params)
    ref = _loss_and_grads(name, z1, z2, False, **params)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        _assert_same(x, y, 1e-5)


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_scores_nan_or_posinf_rejected(bad):
    S = torch.zeros(4, 4)
    S[1, 2] = bad
    with pytest.raises(ValueError, match="scores"):
        otcl.ot.sinkhorn(S, iters=2)


def test_fused_backward_context_restores():
    import importlib

    mod = importlib.import_module("otcl.ot.sinkhorn")
    assert mod._FUSED[0]
    with pytest.raises(RuntimeError), fused_backward(False):
        assert not mod._FUSED[0]
        raise RuntimeError
    assert mod._FUSED[0]


# -- vector-only divergences, lazy plan, fused uniformity penalty ------------------------------
@pytest.mark.parametrize("rho", PROBLEMS)
def test_row_lse_equals_logsumexp_with_gradients(rho):
    """row_lse = LSE_j(S_ij + g_j) of the fused exp solve: value and gradients vs autograd."""
    g = torch.Generator().manual_seed(5)
    S = 2 * torch.randn(18, 15, generator=g)
    S[0, 1] = float("-inf")
    W = torch.randn(18, generator=g)
    kw = dict(iters=9, rho_a=rho[0], rho_b=rho[1], domain="exp")
    S1, S2 = S.clone().requires_grad_(), S.clone().requires_grad_()
    out = otcl.ot.sinkhorn(S1, **kw)
    assert out.row_lse is not None
    (out.row_lse * W).sum().add(out.f.sum()).backward()
    with fused_backward(False):
        ref = otcl.ot.sinkhorn(S2, **kw)
    assert ref.row_lse is None
    lse = torch.logsumexp(S2 + ref.g.unsqueeze(-2), dim=-1)
    (lse * W).sum().add(ref.f.sum()).backward()
    _assert_same(out.row_lse, lse, 1e-5)
    _assert_same(S1.grad, S2.grad, 1e-5)


def test_lazy_log_plan_follows_grad_mode_and_is_assignable():
    S = torch.randn(6, 5, requires_grad=True)
    out = otcl.ot.sinkhorn(S, iters=3, domain="exp")
    assert out._log_plan is None  # not built by the exp solve
    with torch.no_grad():  # built lazily, with autograd as it was during the solve
        lp = out.log_plan
    assert lp.requires_grad
    ref = out.f.unsqueeze(-1) + S + out.g.unsqueeze(-2)
    torch.testing.assert_close(lp, ref, rtol=0, atol=0)
    with torch.no_grad():
        out2 = otcl.ot.sinkhorn(S, iters=3, domain="exp")
    assert not out2.log_plan.requires_grad
    out.log_plan = lp.detach()
    assert not out.log_plan.requires_grad


@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize("name", ["gca-ince", "gca-rince", "gca-uot", "iot"])
def test_vector_divergences_equal_plan_formulas(name, layout):
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
            out.row_lse = None
        ce = divergences.plan_cross_entropy(out, None, pos)
        ri = divergences.plan_rince(out, None, pos, q=0.6, lam=0.01)
        (ce + ri).backward()
        vals.append((ce.detach(), ri.detach(), a.grad))
    for x, y in zip(*vals, strict=True):
        _assert_same(x, y, 1e-5)


@pytest.mark.parametrize("detach_mean", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniformity_penalty_equals_autograd_reference(detach_mean, dtype):
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
    _assert_same(va, vb, tol)
    _assert_same(a.grad, b.grad, tol)
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
def test_implicit_and_detach_fast_paths_equal_reference(name, grad):
    """Exp-domain implicit/detach: K reused for row_lse and the adjoint plan; same as the
    reference (log-plan divergences, plan by exp) to 1e-5 in fp32."""
    torch.manual_seed(8)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    fast = _loss_and_grads(name, z1, z2, True, iters=30, grad=grad)
    ref = _loss_and_grads(name, z1, z2, False, iters=30, grad=grad)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        _assert_same(x, y, 1e-5)


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
def test_iot_uni_vector_penalty_equals_plan_penalty(params):
    """iot-uni's uniformity term from the potentials (no plan) equals the plan formula."""
    torch.manual_seed(9)
    z1 = torch.randn(48, 16)
    z2 = z1 + 0.05 * torch.randn(48, 16) if "temperature" in params else torch.randn(48, 16)
    fast = _loss_and_grads("iot-uni", z1, z2, True, iters=20, **params)
    ref = _loss_and_grads("iot-uni", z1, z2, False, iters=20, **params)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        _assert_same(x, y, 1e-5)
    # the penalty alone (lam_uni large) also agrees
    big = dict(params, lam_uni=50.0)
    fast = _loss_and_grads("iot-uni", z1, z2, True, iters=20, **big)
    ref = _loss_and_grads("iot-uni", z1, z2, False, iters=20, **big)
    assert math.isclose(float(fast[0]), float(ref[0]), rel_tol=1e-5, abs_tol=1e-6)
    for x, y in zip(fast[1:], ref[1:], strict=True):
        _assert_same(x, y, 1e-5)
