"""Tests of the hard-negative losses ``dcl``, ``hcl`` and ``ot-hard``.

References are independent re-derivations of the official code's formulas (exp form, explicit
masks) and POT's Sinkhorn; all in float64 unless stated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import otcl
from otcl.losses import DCL, HCL, OTHard, build

torch.set_default_dtype(torch.float32)


def _official(z1, z2, t, tau_plus, weights="uniform", beta=0.0, q=None, labels=None):
    """Official DCL / HCL / HCL-OT estimator in its exp form (simclr layout)."""
    out1, out2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    out = torch.cat([out1, out2])
    b = z1.shape[0]
    neg_all = torch.exp(out @ out.T / t)
    mask = torch.ones(2 * b, 2 * b, dtype=torch.bool)
    for i in range(2 * b):
        mask[i, i] = False
        mask[i, (i + b) % (2 * b)] = False
    if labels is not None:
        lab = torch.cat([labels, labels])
        mask &= lab.unsqueeze(0) != lab.unsqueeze(1)
    pos = torch.exp((out1 * out2).sum(-1) / t)
    pos = torch.cat([pos, pos])
    rows = []
    for i in range(2 * b):
        neg = neg_all[i][mask[i]]
        n_neg = neg.numel()
        if weights == "uniform":
            reweight = neg.sum()
        elif weights == "hcl":
            imp = (beta * neg.log()).exp()
            reweight = (imp * neg).sum() / imp.mean()
        else:  # constant OT weights Q = n P
            reweight = n_neg * (q[i][mask[i]] * neg).sum()
        ng = (-tau_plus * n_neg * pos[i] + reweight) / (1 - tau_plus)
        ng = torch.clamp(ng, min=n_neg * math.e ** (-1 / t))
        rows.append(-torch.log(pos[i] / (pos[i] + ng)))
    return torch.stack(rows).mean()


# -- reductions ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize("t", [0.5, 0.1, 0.05])
def test_dcl_tau0_equals_infonce(layout, t, make_pairs):
    z1, z2 = make_pairs(noise=0.7)
    z1.requires_grad_(True)
    a = build("infonce", temperature=t, layout=layout)(z1, z2)
    b = build("dcl", temperature=t, tau_plus=0.0, layout=layout)(z1, z2)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(a, z1)[0]
    gb = torch.autograd.grad(b, z1)[0]
    torch.testing.assert_close(gb, ga, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.3])
def test_hcl_beta0_equals_dcl(layout, tau_plus, make_pairs):
    z1, z2 = make_pairs(noise=0.7, seed=1)
    a = build("dcl", temperature=0.3, tau_plus=tau_plus, layout=layout)(z1, z2)
    b = build("hcl", temperature=0.3, tau_plus=tau_plus, beta=0.0, layout=layout)(z1, z2)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


# -- against the official formulas --------------------------------------------------------
@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.6])
def test_dcl_matches_official_formula(tau_plus, make_pairs):
    z1, z2 = make_pairs(noise=0.3, seed=2)
    z1.requires_grad_(True)
    ours = DCL(0.5, tau_plus=tau_plus)(z1, z2)
    ref = _official(z1, z2, 0.5, tau_plus)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours, z1)[0], torch.autograd.grad(ref, z1)[0], rtol=1e-8, atol=1e-12
    )


def test_dcl_clamp_is_active_and_matches(make_pairs):
    # near-identical views and a large prior: the debiased sum goes negative -> clamp
    z1, z2 = make_pairs(noise=0.01, seed=3)
    t, tau = 0.5, 0.9
    out = torch.cat([F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)])
    s = out @ out.T / t
    m = 2 * z1.shape[0] - 2
    raw = torch.exp(s).sum(-1) - math.e**2 - tau * m * torch.exp(s[0, z1.shape[0]])
    assert raw[0] < 0  # the clamp must matter on this example
    torch.testing.assert_close(DCL(t, tau_plus=tau)(z1, z2), _official(z1, z2, t, tau))


@pytest.mark.parametrize("rel", [-1e-15, 0.0, 1e-15, 1e-9])
def test_debiasing_at_the_boundary_has_finite_gradients(rel):
    # orthogonal samples, identical views: s_pos = 1, every negative s = 0, so
    # r = tau M e^{1/t} / (M e^0) = 1 at tau = e^{-1/t}: the debiased sum is exactly 0 there
    t = 0.5
    z1 = torch.eye(2, dtype=torch.float64).requires_grad_(True)
    z2 = torch.eye(2, dtype=torch.float64)
    val = DCL(t, tau_plus=math.exp(-1 / t) * (1 + rel))(z1, z2)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(z1.grad).all()
    torch.testing.assert_close(
        val, _official(z1, z2, t, math.exp(-1 / t) * (1 + rel)), rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("beta,tau_plus", [(1.0, 0.1), (3.0, 0.0), (0.5, 0.3)])
def test_hcl_matches_official_formula(beta, tau_plus, make_pairs):
    z1, z2 = make_pairs(noise=0.7, seed=4)
    z1.requires_grad_(True)
    ours = HCL(0.5, beta=beta, tau_plus=tau_plus)(z1, z2)
    ref = _official(z1, z2, 0.5, tau_plus, weights="hcl", beta=beta)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    # the official weights are differentiated: gradients agree too
    torch.testing.assert_close(
        torch.autograd.grad(ours, z1)[0], torch.autograd.grad(ref, z1)[0], rtol=1e-8, atol=1e-12
    )


def _ot_reference_plan(z1, z2, eps, cost="sqeuclidean", kappa=1.0, labels=None):
    ot = pytest.importorskip("ot")
    out = torch.cat([F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)]).detach().numpy()
    n, b = out.shape[0], z1.shape[0]
    d2 = ((out[:, None, :] - out[None, :, :]) ** 2).sum(-1)
    c = d2 if cost == "sqeuclidean" else np.exp(d2 - kappa)
    for i in range(n):
        c[i, i] = np.inf
        c[i, (i + b) % n] = np.inf
    if labels is not None:
        lab = torch.cat([labels, labels]).numpy()
        c[lab[:, None] == lab[None, :]] = np.inf
    a = np.full(n, 1.0 / n)
    return ot.sinkhorn(a, a, c, eps, numItermax=5000, stopThr=1e-13)


@pytest.mark.parametrize("cost,eps", [("sqeuclidean", 0.7), ("sqeuclidean", 0.3), ("exp", 0.7)])
def test_ot_hard_matches_official_with_pot(cost, eps, make_pairs):
    z1, z2 = make_pairs(noise=0.7, n=10, d=6, seed=5)
    z1.requires_grad_(True)
    plan = _ot_reference_plan(z1, z2, eps, cost)
    q = torch.as_tensor(plan * plan.shape[0])
    loss = OTHard(0.5, eps=eps, cost=cost, tau_plus=0.1, iters=2000, tol=1e-12)
    ours = loss(z1, z2)
    torch.testing.assert_close(
        loss.coupling(z1, z2).plan, torch.as_tensor(plan), rtol=1e-6, atol=1e-10
    )
    ref = _official(z1, z2, 0.5, 0.1, weights="ot", q=q)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10)
    # detached coupling (official): gradients flow only through pos and neg
    torch.testing.assert_close(
        torch.autograd.grad(ours, z1)[0], torch.autograd.grad(ref, z1)[0], rtol=1e-6, atol=1e-9
    )


def test_ot_hard_coupling_marginals_and_support(make_pairs):
    z1, z2 = make_pairs(noise=0.7, n=12, d=6, seed=6, dtype=torch.float32)
    for layout in ("simclr", "cross"):
        loss = OTHard(0.5, eps=0.5, layout=layout, iters=500, tol=1e-7)
        out = loss.coupling(z1, z2)
        p = out.plan
        n = p.shape[0]
        torch.testing.assert_close(p.sum(-1), torch.full((n,), 1.0 / n), rtol=0, atol=1e-6)
        torch.testing.assert_close(p.sum(-2), torch.full((n,), 1.0 / n), rtol=0, atol=1e-6)
        rows = torch.arange(n)
        pos = otcl.ot.positive_index(z1.shape[0], layout)
        assert torch.all(p[rows, pos] == 0)
        if layout == "simclr":
            assert torch.all(p[rows, rows] == 0)
            # P is symmetric (symmetric cost, same marginals)
            torch.testing.assert_close(p, p.T, rtol=0, atol=1e-7)
        w, neg = loss.negative_weights(z1, z2)
        torch.testing.assert_close(w.sum(-1), torch.ones(n), rtol=0, atol=1e-6)
        torch.testing.assert_close(w, n * p, rtol=0, atol=1e-5)


def test_ot_hard_vs_hcl_weights(make_pairs):
    """sqeuclidean cost with eps = 2t/beta: HCL's weights up to the column scaling v_j."""
    t, beta = 0.5, 1.0
    z1, z2 = make_pairs(noise=0.5, n=64, d=128, seed=7, dtype=torch.float32)
    ot_loss = OTHard(t, eps=2 * t / beta, tau_plus=0.1, iters=500, tol=1e-6)
    hcl = HCL(t, beta=beta, tau_plus=0.1)
    w_ot, neg = ot_loss.negative_weights(z1, z2)
    w_h, _ = hcl.negative_weights(z1, z2)
    tv = 0.5 * (w_ot - w_h).abs().sum(-1)
    rel = ((w_ot - w_h).abs() / w_h.clamp_min(1e-30))[neg]
    assert tv.max() < 0.02  # observed 0.0089
    assert rel.max() < 0.1  # observed 0.057
    l_ot, l_h = ot_loss(z1, z2), hcl(z1, z2)
    assert abs(float(l_ot - l_h)) / float(l_h) < 1e-3  # observed 3.6e-4
    # the whole difference is the column potential g = log v: exact up to solver tolerance
    g = ot_loss.coupling(z1, z2).g
    sim = torch.cat([F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)])
    sim = sim @ sim.T
    logits = torch.where(neg, beta * sim / t + g.unsqueeze(0), float("-inf"))
    torch.testing.assert_close(w_ot, torch.softmax(logits, -1), rtol=0, atol=1e-6)


def test_ot_hard_large_eps_is_dcl(make_pairs):
    z1, z2 = make_pairs(noise=0.7, seed=8)
    a = OTHard(0.5, eps=1e6, tau_plus=0.1)(z1, z2)
    b = DCL(0.5, tau_plus=0.1)(z1, z2)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


def test_ot_hard_exp_cost_only_eps_times_exp_kappa_matters(make_pairs):
    z1, z2 = make_pairs(noise=0.7, seed=9)
    w1, _ = OTHard(eps=0.7, cost="exp", kappa=1.0, iters=300, tol=1e-10).negative_weights(z1, z2)
    w2, _ = OTHard(eps=0.7 * math.e, cost="exp", kappa=0.0, iters=300, tol=1e-10).negative_weights(
        z1, z2
    )
    torch.testing.assert_close(w1, w2, rtol=1e-7, atol=1e-10)


def test_cross_layout_symmetric_is_average_of_directions(make_pairs):
    z1, z2 = make_pairs(noise=0.7, seed=10)
    for name, kw in [("ot-hard", {"tol": 1e-10, "iters": 500}), ("hcl", {}), ("dcl", {})]:
        sym = build(name, layout="cross", **kw)(z1, z2)
        one = build(name, layout="cross", symmetric=False, **kw)
        torch.testing.assert_close(sym, 0.5 * (one(z1, z2) + one(z2, z1)), rtol=1e-8, atol=1e-10)


def test_labels_remove_same_class_negatives(make_pairs):
    z1, z2 = make_pairs(noise=0.7, seed=11)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])
    for loss, kw in [
        (DCL(0.5, tau_plus=0.0), {}),
        (HCL(0.5, beta=2.0, tau_plus=0.0), {"beta": 2.0}),
    ]:
        w = "hcl" if kw else "uniform"
        ref = _official(z1, z2, 0.5, 0.0, weights=w, beta=kw.get("beta", 0.0), labels=labels)
        torch.testing.assert_close(loss(z1, z2, labels=labels), ref, rtol=1e-10, atol=1e-12)
    # ot-hard: same-class pairs leave the coupling too (POT reference with +inf cost on them)
    plan = _ot_reference_plan(z1, z2, 0.5, labels=labels)
    loss = OTHard(0.5, eps=0.5, iters=3000, tol=1e-13)
    val = loss(z1, z2, labels=labels)
    torch.testing.assert_close(
        loss.coupling(z1, z2, labels=labels).plan, torch.as_tensor(plan), rtol=1e-6, atol=1e-10
    )
    q = torch.as_tensor(plan * 16)
    ref = _official(z1, z2, 0.5, 0.0, weights="ot", q=q, labels=labels)
    torch.testing.assert_close(val, ref, rtol=1e-8, atol=1e-10)
    # all-distinct labels change nothing
    distinct = torch.arange(8)
    torch.testing.assert_close(
        HCL(0.5, tau_plus=0.0)(z1, z2, labels=distinct), HCL(0.5, tau_plus=0.0)(z1, z2)
    )
    # a class-pure batch: no negatives at all, finite zero loss and gradients
    zz = z1.clone().requires_grad_(True)
    val = OTHard(0.5)(zz, z2, labels=torch.zeros(8, dtype=torch.long))
    val.backward()
    assert val.item() == 0.0 and torch.isfinite(zz.grad).all()


# -- numerics ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kw",
    [
        ("dcl", {"tau_plus": 0.1}),
        ("hcl", {"beta": 10.0, "tau_plus": 0.1}),
        ("ot-hard", {"eps": 0.05, "tau_plus": 0.1}),
        ("ot-hard", {"eps": 0.1, "cost": "exp", "kappa": 0.0, "coupling_grad": "unrolled"}),
    ],
)
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_small_temperature_large_beta_finite(name, kw, layout, make_pairs):
    z1, z2 = make_pairs(noise=0.05, n=32, d=16, seed=12, dtype=torch.float32)
    z1.requires_grad_(True)
    loss = build(name, temperature=0.05, layout=layout, **kw)(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all()
    # bfloat16 embeddings (autocast-style inputs) stay finite too
    zb1, zb2 = z1.detach().bfloat16().requires_grad_(True), z2.bfloat16()
    lb = build(name, temperature=0.05, layout=layout, **kw)(zb1, zb2)
    lb.backward()
    assert torch.isfinite(lb) and torch.isfinite(zb1.grad.float()).all()


# -- gradients -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kw",
    [
        ("dcl", {"tau_plus": 0.2}),
        ("hcl", {"beta": 1.5, "tau_plus": 0.1}),
        ("ot-hard", {"coupling_grad": "unrolled", "iters": 30, "tol": None, "tau_plus": 0.1}),
        ("ot-hard", {"coupling_grad": "unrolled", "cost": "exp", "iters": 30, "tol": None}),
    ],
)
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_gradcheck(name, kw, layout, make_pairs):
    z1, z2 = make_pairs(noise=0.7, n=4, d=3, seed=13)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = build(name, temperature=0.5, layout=layout, **kw)
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (z1, z2), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"coupling_grad": "unrolled", "eps": 0.1, "iters": 30, "tol": None},  # log domain
        {"coupling_grad": "implicit", "eps": 0.7, "iters": 3000, "tol": 1e-14},  # exp domain
    ],
    ids=["unrolled-log", "implicit-exp"],
)
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_ot_hard_gradcheck_log_domain_and_implicit(kw, layout, make_pairs):
    z1, z2 = make_pairs(noise=0.7, n=4, d=3, seed=13)
    loss = OTHard(0.5, tau_plus=0.1, layout=layout, **kw)
    inputs = (z1.clone().requires_grad_(True), z2.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b), inputs, eps=1e-6, atol=1e-6)
    expected = "log" if kw["eps"] < 4 / 30 else "exp"
    out = loss.coupling(z1, z2)
    assert out.domain == expected
    if kw["coupling_grad"] == "implicit":
        assert out.converged


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_ot_hard_detach_is_the_gradient_with_frozen_potentials(layout, monkeypatch, make_pairs):
    """coupling_grad="detach": the exact gradient with the Sinkhorn potentials held constant
    (the plan still depends on the cost), checked against a replay with frozen potentials."""
    import otcl.losses.hard_negatives as hn

    z1, z2 = make_pairs(noise=0.7, n=4, d=3, seed=18)
    loss = OTHard(0.5, eps=0.5, tau_plus=0.1, layout=layout, coupling_grad="detach", iters=50)
    frozen = []

    class Record(otcl.ot.Sinkhorn):
        def __call__(self, scores, problem=None, **kw):
            out = super().__call__(scores, problem, **kw)
            frozen.append((out.f.detach(), out.g.detach()))
            return out

    monkeypatch.setattr(hn, "Sinkhorn", Record)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    g_detach = torch.autograd.grad(loss(a, b), (a, b))
    assert len(frozen) == 1

    class Replay(otcl.ot.Sinkhorn):
        def __call__(self, geom, problem=None, **kw):
            scores = geom.scores
            f, g = frozen[0]
            zero = scores.new_zeros(())
            log_plan = f.unsqueeze(-1) + scores + g.unsqueeze(-2)
            return otcl.ot.SinkhornOutput(
                f, g, scores, 1, True, zero, zero, stored_log_plan=log_plan
            )

    monkeypatch.setattr(hn, "Sinkhorn", Replay)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    g_frozen = torch.autograd.grad(loss(a, b), (a, b))
    for x, y in zip(g_detach, g_frozen, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    inputs = (z1.clone().requires_grad_(True), z2.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda x, y: loss(x, y), inputs, eps=1e-6, atol=1e-6)


def test_ot_hard_constant_coupling_gradient(make_pairs):
    """coupling_grad='none': the gradient of the loss with the plan held fixed (official)."""
    z1, z2 = make_pairs(noise=0.7, n=5, d=4, seed=14)
    z1.requires_grad_(True)
    loss = OTHard(0.5, eps=0.4, tau_plus=0.05, iters=500, tol=1e-12)
    val = loss(z1, z2)
    q = loss.coupling(z1, z2).plan.detach() * 10
    ref = _official(z1, z2, 0.5, 0.05, weights="ot", q=q)
    torch.testing.assert_close(val, ref, rtol=1e-9, atol=1e-12)
    g_ref = torch.autograd.grad(ref, z1)[0]
    torch.testing.assert_close(torch.autograd.grad(val, z1)[0], g_ref, rtol=1e-7, atol=1e-10)
    # differentiating through the coupling gives a different gradient
    z1b = z1.detach().clone().requires_grad_(True)
    unrolled = OTHard(0.5, eps=0.4, tau_plus=0.05, iters=500, tol=1e-12, coupling_grad="unrolled")
    g_unr = torch.autograd.grad(unrolled(z1b, z2), z1b)[0]
    assert (g_unr - g_ref).abs().max() > 1e-4


def test_ot_hard_detach_mode_gradient_through_cost(make_pairs):
    z1, z2 = make_pairs(noise=0.7, n=4, d=3, seed=15)
    z1.requires_grad_(True)
    loss = OTHard(0.5, coupling_grad="detach", iters=200, tol=1e-12)
    g = torch.autograd.grad(loss(z1, z2), z1)[0]
    g_none = torch.autograd.grad(OTHard(0.5, iters=200, tol=1e-12)(z1, z2), z1)[0]
    assert torch.isfinite(g).all() and (g - g_none).abs().max() > 1e-6


# -- registry and bad input ----------------------------------------------------------------
def test_registry():
    names = otcl.losses.available()
    for name in ("dcl", "hcl", "ot-hard"):
        assert name in names
    loss = build("ot-hard", eps=0.3, cost="exp", kappa=1.0, tau_plus=0.05, layout="cross")
    assert isinstance(loss, OTHard) and loss.eps == 0.3 and loss.layout == "cross"
    assert otcl.losses.parameters("hcl")["beta"] == 1.0
    assert otcl.losses.parameters("dcl")["tau_plus"] == 0.1
    assert otcl.losses.parameters("ot-hard")["eps"] == 0.7
    with pytest.raises(ValueError, match="reg"):
        build("ot-hard", reg=0.7)


@pytest.mark.parametrize(
    "name,kw,arg",
    [
        ("dcl", {"tau_plus": 1.0}, "tau_plus"),
        ("dcl", {"tau_plus": -0.1}, "tau_plus"),
        ("dcl", {"temperature": 0.0}, "temperature"),
        ("dcl", {"layout": "grid"}, "layout"),
        ("hcl", {"beta": -1.0}, "beta"),
        ("ot-hard", {"eps": 0.0}, "eps"),
        ("ot-hard", {"cost": "l1"}, "cost"),
        ("ot-hard", {"kappa": float("inf")}, "kappa"),
        ("ot-hard", {"iters": 0}, "iters"),
        ("ot-hard", {"tol": -1.0}, "tol"),
        ("ot-hard", {"coupling_grad": "maybe"}, "coupling_grad"),
    ],
)
def test_bad_parameters(name, kw, arg):
    with pytest.raises(ValueError, match=arg):
        build(name, **kw)


def test_bad_call_inputs(make_pairs):
    z1, z2 = make_pairs(noise=0.7)
    loss = HCL(0.5)
    with pytest.raises(ValueError, match="z1, z2"):
        loss(z1, z2[:5])
    with pytest.raises(ValueError, match="z1"):
        loss(z1[0], z2[0])
    with pytest.raises(ValueError, match="target"):
        loss(z1, z2, target=torch.eye(16))
    with pytest.raises(ValueError, match="tau_plus"):
        loss(z1, z2, labels=torch.arange(8))
    with pytest.raises(ValueError, match="labels"):
        HCL(0.5, tau_plus=0.0)(z1, z2, labels=torch.arange(5))
    with pytest.raises(ValueError, match="labels"):
        HCL(0.5, tau_plus=0.0)(z1, z2, labels=torch.ones(8))
    bad = z1.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="z1"):
        OTHard()(bad, z2)


def test_implicit_mode_if_available(make_pairs):
    pytest.importorskip("otcl.ot.implicit")
    z1, z2 = make_pairs(noise=0.7, n=4, d=3, seed=16)
    z1.requires_grad_(True)
    a = OTHard(0.5, coupling_grad="implicit", iters=300, tol=1e-12)
    b = OTHard(0.5, coupling_grad="unrolled", iters=300, tol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(a(z1, z2), z1)[0],
        torch.autograd.grad(b(z1, z2), z1)[0],
        rtol=1e-5,
        atol=1e-8,
    )


def test_dot_similarity_cost_on_raw_embeddings(make_pairs):
    z1, z2 = make_pairs(noise=0.7, seed=17)
    loss = OTHard(0.5, similarity="dot", eps=5.0, iters=500, tol=1e-12)
    x, y = otcl.ot.layout_embeddings(z1, z2, "simclr")
    sim = loss.pair_geometry(z1, z2).sim
    torch.testing.assert_close(loss.cost_matrix(sim, x, y), torch.cdist(x, y) ** 2)
    out = loss.coupling(z1, z2)
    n = out.plan.shape[0]
    torch.testing.assert_close(out.plan.sum(-1), torch.full((n,), 1.0 / n, dtype=torch.float64))
    # dcl with dot scores: uniform weights on exp(z_i . z_j / t)
    z = torch.cat([z1, z2])
    logits = z @ z.T / 0.5
    ref = []
    for i in range(16):
        p = (i + 8) % 16
        negs = [j for j in range(16) if j not in (i, p)]
        ng = torch.logsumexp(logits[i, negs], 0)
        ng = torch.maximum(ng, torch.tensor(math.log(14) - 2.0, dtype=torch.float64))
        ref.append(torch.logaddexp(logits[i, p], ng) - logits[i, p])
    torch.testing.assert_close(
        DCL(0.5, tau_plus=0.0, similarity="dot")(z1, z2), torch.stack(ref).mean()
    )


def test_hcl_beta_is_saved_in_state_dict(make_pairs):
    """beta may be annealed between epochs (official ``--anneal down``): a checkpoint keeps it."""
    z1, z2 = make_pairs(noise=0.7, seed=19)
    loss = HCL(0.5, beta=2.0)
    loss.beta = 0.75
    restored = HCL(0.5)
    restored.load_state_dict(loss.state_dict())
    assert restored.beta == 0.75
    torch.testing.assert_close(restored(z1, z2), loss(z1, z2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="beta"):
        restored.load_state_dict({"_extra_state": {"beta": -1.0}})
