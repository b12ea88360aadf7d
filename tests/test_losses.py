"""Loss values against independent references, identities between losses, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import otcl
from otcl.losses import (
    OTContrastiveLoss,
    build,
    domain_target,
    label_target,
    uniformity_penalty,
)
from otcl.ot import SinkhornOutput

CORE = ["infonce", "iot", "iot-uni", "gca-ince", "gca-rince", "gca-uot", "rince"]


def _z(n=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _np_cos_all(z1, z2):
    z = np.concatenate([z1.numpy(), z2.numpy()])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z @ z.T


def _np_pos(n):
    return np.concatenate([np.arange(n) + n, np.arange(n)])


# -- InfoNCE ---------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_infonce_equals_closed_form_nt_xent(t):
    z1, z2 = _z()
    n = z1.shape[0]
    sim = _np_cos_all(z1, z2)
    pos = _np_pos(n)
    ref = 0.0
    for i in range(2 * n):
        others = [sim[i, k] / t for k in range(2 * n) if k != i]
        ref += -(sim[i, pos[i]] / t - logsumexp(others))
    ref /= 2 * n
    assert float(build("infonce", temperature=t)(z1, z2)) == pytest.approx(ref, abs=1e-10)


def test_infonce_cross_equals_clip_reference():
    z1, z2 = _z()
    a = z1 / z1.norm(dim=1, keepdim=True)
    b = z2 / z2.norm(dim=1, keepdim=True)
    logits = (a @ b.T / 0.2).numpy()
    idx = np.arange(len(logits))
    row = -(logits[idx, idx] - logsumexp(logits, axis=1)).mean()
    col = -(logits[idx, idx] - logsumexp(logits, axis=0)).mean()
    got = build("infonce", temperature=0.2, layout="cross")(z1, z2)
    assert float(got) == pytest.approx(0.5 * (row + col), abs=1e-10)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_infonce_fast_path_equals_generic_coupling(layout):
    z1, z2 = _z()
    fast = build("infonce", layout=layout)(z1, z2)
    generic = OTContrastiveLoss(constraint="rows", layout=layout)(z1, z2)
    torch.testing.assert_close(fast, generic)
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    torch.testing.assert_close(
        build("infonce", layout=layout)(z1, z2, labels=y),
        OTContrastiveLoss(constraint="rows", layout=layout)(z1, z2, labels=y),
    )


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_single_row_normalisation_of_iot_and_gca_is_infonce(layout):
    z1, z2 = _z(seed=1)
    ref = build("infonce", layout=layout, temperature=0.3)(z1, z2)
    iot_row = build("iot", relax="row", layout=layout, temperature=0.3)(z1, z2)
    gca_row = build("gca-ince", constraint="rows", layout=layout, temperature=0.3)(z1, z2)
    torch.testing.assert_close(iot_row, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gca_row, ref, rtol=0, atol=1e-12)


def test_supervised_labels_match_supcon_reference():
    z1, z2 = _z(seed=2)
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    t = 0.5
    sim = _np_cos_all(z1, z2) / t
    yy = np.concatenate([y.numpy(), y.numpy()])
    ref = 0.0
    for i in range(12):
        others = [k for k in range(12) if k != i]
        lse = logsumexp(sim[i, others])
        positives = [k for k in others if yy[k] == yy[i]]
        ref += -np.mean([sim[i, k] - lse for k in positives])
    ref /= 12
    assert float(build("infonce", temperature=t)(z1, z2, labels=y)) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("name", CORE)
def test_distinct_labels_equal_identity_target(name):
    z1, z2 = _z(seed=3)
    loss = build(name)
    torch.testing.assert_close(loss(z1, z2, labels=torch.arange(6)), loss(z1, z2))
    eye_target = torch.zeros(12, 12, dtype=torch.float64)
    eye_target[torch.arange(12), torch.tensor(_np_pos(6))] = 1.0
    torch.testing.assert_close(loss(z1, z2, target=eye_target), loss(z1, z2))


# -- GCA --------------------------------------------------------------------------------------
def _official_gca_ince(z1, z2, eps=0.5, iters=10):
    """Official CIFAR gca_ince in numpy (self-pair at max cost, clipped cosines, exp domain)."""
    n = z1.shape[0]
    C = 1 - np.clip(_np_cos_all(z1, z2), 1e-7, None)
    np.fill_diagonal(C, C.max())
    K = np.exp(-C / eps)
    u, v = np.ones(2 * n), np.ones(2 * n)
    for _ in range(iters):
        u = 1 / (K @ v)
        v = 1 / (K.T @ u)
    P = u[:, None] * K * v[None, :]
    logp = np.log(P) - np.log(P.sum(1, keepdims=True))
    return -logp[np.arange(2 * n), _np_pos(n)].mean()


def test_gca_ince_faithful_mode_reproduces_official_code():
    z1, z2 = _z(seed=4)
    ref = _official_gca_ince(z1, z2)
    got = build("gca-ince", self_pair="max_cost", clip_min=1e-7)(z1, z2)
    assert float(got) == pytest.approx(ref, abs=1e-10)


def test_infonce_faithful_mode_reproduces_official_hs_ince():
    z1, z2 = _z(seed=5)
    n = z1.shape[0]
    C = 1 - np.clip(_np_cos_all(z1, z2), 1e-7, None)
    np.fill_diagonal(C, C.max())
    logp = -C / 0.5 - logsumexp(-C / 0.5, axis=1, keepdims=True)
    ref = -logp[np.arange(2 * n), _np_pos(n)].mean()
    got = build("infonce", self_pair="max_cost", clip_min=1e-7)(z1, z2)
    assert float(got) == pytest.approx(ref, abs=1e-10)


def test_gca_ince_equals_masked_sinkhorn_reference():
    z1, z2 = _z(seed=6)
    n = z1.shape[0]
    S = _np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    f, g = np.zeros(2 * n), np.zeros(2 * n)
    loga = np.full(2 * n, -np.log(2 * n))
    for _ in range(7):
        f = loga - logsumexp(S + g[None], axis=1)
        g = loga - logsumexp(S + f[:, None], axis=0)
    logp = S + g[None] - logsumexp(S + g[None], axis=1, keepdims=True)
    ref = -logp[np.arange(2 * n), _np_pos(n)].mean()
    assert float(build("gca-ince", iters=7)(z1, z2)) == pytest.approx(ref, abs=1e-10)


def _np_rince(s, pos, q, lam):
    vals = []
    for i in range(s.shape[0]):
        row = s[i][np.isfinite(s[i])]
        vals.append(-np.exp(q * s[i, pos[i]]) / q + (lam * np.exp(row).sum()) ** q / q)
    return np.mean(vals)


@pytest.mark.parametrize("q,lam", [(0.6, 0.01), (1.0, 0.5), (0.2, 2.0)])
def test_rince_equals_closed_form(q, lam):
    z1, z2 = _z(seed=7)
    S = _np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    ref = _np_rince(S, _np_pos(6), q, lam)
    assert float(build("rince", q=q, lam=lam)(z1, z2)) == pytest.approx(ref, abs=1e-10)


def test_rince_tends_to_infonce_plus_log_lam_as_q_goes_to_zero():
    z1, z2 = _z(seed=8)
    nce = float(build("infonce")(z1, z2))
    r = float(build("rince", q=1e-7, lam=0.3)(z1, z2))
    assert r == pytest.approx(nce + math.log(0.3), abs=1e-5)


def test_gca_rince_with_row_constraint_is_rince():
    z1, z2 = _z(seed=9)
    torch.testing.assert_close(
        build("gca-rince", constraint="rows")(z1, z2), build("rince", marginals="unit")(z1, z2)
    )
    torch.testing.assert_close(build("rince", marginals="unit")(z1, z2), build("rince")(z1, z2))


def test_gca_rince_equals_column_reweighted_reference():
    z1, z2 = _z(seed=10)
    n2, q, lam = 12, 0.6, 0.01
    S = _np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    f, g = np.zeros(n2), np.zeros(n2)
    for _ in range(10):  # unit marginals
        f = -logsumexp(S + g[None], axis=1)
        g = -logsumexp(S + f[:, None], axis=0)
    ref = _np_rince(S + g[None], _np_pos(6), q, lam)  # log(K v) = S + g
    assert float(build("gca-rince")(z1, z2)) == pytest.approx(ref, abs=1e-10)


def test_gca_uot_equals_reference_implementation():
    z1, z2 = _z(seed=11)
    n2, eps, rho, q, lam, w_kl, w_r = 12, 0.5, 0.2, 0.6, 0.01, 1.0, 0.02
    S = _np_cos_all(z1, z2) / eps
    np.fill_diagonal(S, -np.inf)
    K = np.exp(S)
    a = np.full(n2, 1 / n2)
    fi = rho / (rho + eps)
    u, v = a.copy(), a.copy()
    for _ in range(10):
        u = (a / (K @ v)) ** fi
        v = (a / (K.T @ u)) ** fi
    P = u[:, None] * K * v[None]
    pos = _np_pos(6)
    logp = np.log(P[np.arange(n2), pos]) - np.log(P.sum(1))
    ce = -logp.mean()
    with np.errstate(divide="ignore"):
        r = _np_rince(np.log(K * v[None]), pos, q, lam)
    ref = w_kl * ce + w_r * r
    assert float(build("gca-uot")(z1, z2)) == pytest.approx(ref, abs=1e-9)


def test_gca_uot_tends_to_gca_ince_as_rho_grows():
    z1, z2 = _z(seed=12)
    ince = build("gca-ince")(z1, z2)
    uot = build("gca-uot", rho=1e7, w_rince=0.0)(z1, z2)
    assert float(uot) == pytest.approx(float(ince), abs=1e-5)


# -- IOT --------------------------------------------------------------------------------------
def test_uniformity_penalty_reference_and_zero_case():
    torch.manual_seed(0)
    lp = torch.randn(5, 5, dtype=torch.float64)
    neg = torch.rand(5, 5) > 0.4
    p = (lp - torch.logsumexp(lp.flatten(), 0)).exp().numpy()
    vals = p[neg.numpy()]
    m = vals.mean()
    ref = (m * (np.log(m) - np.log(vals))).sum()
    got = uniformity_penalty(lp, neg)
    assert float(got) == pytest.approx(ref, abs=1e-12)
    assert float(got) > 0
    flat = torch.where(neg, torch.tensor(-1.0, dtype=torch.float64), lp)
    assert abs(float(uniformity_penalty(flat, neg))) < 1e-14


def test_iot_uni_is_iot_plus_weighted_uniformity():
    z1, z2 = _z(seed=13)
    loss = build("iot-uni", lam_uni=0.7)
    base = build("iot")(z1, z2)
    out = loss.coupling(z1, z2)
    n2 = out.log_plan.shape[0]
    neg = torch.ones(n2, n2, dtype=torch.bool)
    neg.fill_diagonal_(False)
    neg[torch.arange(n2), torch.tensor(_np_pos(6))] = False
    expected = base + 0.7 * uniformity_penalty(out.log_plan, neg)
    torch.testing.assert_close(loss(z1, z2), expected)


def test_iot_relax_both_is_one_batch_partition_function():
    z1, z2 = _z(seed=14)
    S = _np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    logp = S - logsumexp(S)
    logp_row = logp - logsumexp(logp, axis=1, keepdims=True)  # row-normalised plan
    ref = -logp_row[np.arange(12), _np_pos(6)].mean()
    assert float(build("iot", relax="both")(z1, z2)) == pytest.approx(ref, abs=1e-10)


# -- targets ----------------------------------------------------------------------------------
def test_target_builders_rows_and_diagonal():
    y = torch.tensor([0, 1, 0, 1])
    t = label_target(y, "simclr")
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    assert float(t.diagonal().abs().sum()) == 0.0
    d = domain_target(torch.tensor([0, 0, 1, 1]), alpha=0.5, beta=0.1)
    torch.testing.assert_close(d.sum(1), torch.ones(8))
    assert float(d.diagonal().abs().sum()) == 0.0
    assert d[0, 4] > d[0, 1] > d[0, 2] > 0  # positive > same domain > other domain


def test_domain_target_runs_in_every_loss():
    z1, z2 = _z(seed=15)
    t = domain_target(torch.tensor([0, 0, 1, 1, 2, 2]), alpha=0.3, beta=0.0)
    for name in CORE:
        assert torch.isfinite(build(name)(z1, z2, target=t))


# -- gradients, precision ---------------------------------------------------------------------
@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("grad", ["unrolled", "implicit"])
@pytest.mark.parametrize("domain", ["log", "exp"])
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_gradcheck_every_loss(name, grad, domain, layout):
    """Every loss, gradient mode and solver arithmetic against finite differences. Implicit
    gradients are those of the converged plan, so the solve runs to convergence there."""
    z1, z2 = _z(n=3, d=2, seed=16)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    kw = {"iters": 3} if grad == "unrolled" else {"iters": 3000, "tol": 1e-15}
    loss = build(name, layout=layout, grad=grad, domain=domain, temperature=0.7, **kw)
    assert torch.autograd.gradcheck(
        lambda a, b: loss(a, b), (z1, z2), eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("domain", ["log", "exp"])
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_detach_mode_is_the_gradient_with_frozen_potentials(name, domain, layout):
    """grad="detach": the exact gradient of the loss with the potentials (f, g) held at their
    values (the same function, re-evaluated with frozen potentials, passes gradcheck)."""
    z1, z2 = _z(n=3, d=2, seed=20)
    loss = build(name, layout=layout, grad="detach", domain=domain, temperature=0.7, iters=3)
    solve_fn = loss.solve
    frozen: list = []

    def record(scores, bound):
        out = solve_fn(scores, bound)
        frozen.append((out.f.detach(), out.g.detach()))
        return out

    loss.solve = record
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    g_detach = torch.autograd.grad(loss(a, b), (a, b))
    calls = [0]

    def replay(scores, bound):
        f, g = frozen[calls[0] % len(frozen)]
        calls[0] += 1
        zero = scores.new_zeros(())
        return SinkhornOutput(f.unsqueeze(-1) + scores + g.unsqueeze(-2), f, g, 1, True, zero, zero)

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


def test_gca_rince_implicit_uses_the_symmetric_gauge():
    """The RINCE term on K v depends on the gauge (f + k, g - k) of balanced potentials; at the
    fixed point (grad="implicit") it is evaluated with sum f = sum g, i.e. u = v for the
    symmetric simclr kernel, so that the value and its implicit gradient match (gradcheck
    above). The unrolled iterations keep the paper's v^(t)."""
    z1, z2 = _z(seed=21)
    kw = {"iters": 3000, "tol": 1e-15}
    n2, q, lam = 12, 0.6, 0.01
    S = _np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    f, g = np.zeros(n2), np.zeros(n2)
    for _ in range(1000):  # unit marginals, to convergence
        f = -logsumexp(S + g[None], axis=1)
        g = -logsumexp(S + f[:, None], axis=0)
    h = 0.5 * (f + g)  # the symmetric solution: P = diag(e^h) K diag(e^h)
    np.testing.assert_allclose(f - f.mean(), g - g.mean(), atol=1e-10)
    sym = _np_rince(S + h[None], _np_pos(6), q, lam)
    it = _np_rince(S + g[None], _np_pos(6), q, lam)
    assert float(build("gca-rince", grad="implicit", **kw)(z1, z2)) == pytest.approx(sym, abs=1e-9)
    assert float(build("gca-rince", grad="unrolled", **kw)(z1, z2)) == pytest.approx(it, abs=1e-9)


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


@pytest.mark.parametrize("name", CORE)
def test_loss_decreases_when_positives_align(name):
    z1, z2 = _z(n=8, d=16, seed=18)
    loss = build(name)
    aligned = loss(z1, z1 + 0.01 * z2)
    random = loss(z1, z2)
    assert float(aligned) < float(random)


# -- registry and bad input ------------------------------------------------------------------
def test_registry_lists_and_builds_core_losses():
    assert set(CORE) <= set(otcl.losses.available())
    for name in CORE:
        assert isinstance(build(name), torch.nn.Module)
    assert otcl.losses.parameters("gca-uot")["rho"] == 0.2


ALL = otcl.losses.available()


def test_unknown_name_and_parameter_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'nope'.*gca-uot"):
        build("nope")
    with pytest.raises(ValueError, match="unknown parameter.*tempreature.*valid:.*temperature"):
        build("infonce", tempreature=0.1)


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameter_lists_the_valid_ones_for_every_loss(name):
    with pytest.raises(ValueError, match="unknown") as err:
        build(name, bogus_parameter=1)
    msg = str(err.value)
    assert "bogus_parameter" in msg and "valid:" in msg
    valid = [k for k in otcl.losses.parameters(name) if k not in ("base", "base_params")]
    assert all(k in msg for k in valid), (msg, valid)
    if name == "dmm":  # the wrapper also lists what its base accepts
        assert "temperature" in msg


@pytest.mark.parametrize(
    "z1,z2,match",
    [
        (torch.randn(4, 3), torch.randn(5, 3), r"z1, z2: expected the same shape .* got \(4, 3\)"),
        (torch.randn(4, 3), torch.randn(4, 2), "z1, z2: expected the same shape"),
        (torch.randn(4), torch.randn(4), r"z1: expected a 2-D tensor .* got shape \(4\)"),
        (torch.randn(2, 4, 3), torch.randn(2, 4, 3), "z1: expected a 2-D tensor"),
        (torch.randn(4, 3), torch.randn(4, 3, 1), "z2: expected a 2-D tensor"),
        (torch.randn(1, 3), torch.randn(1, 3), "z1: expected a batch of at least 2 .* got N=1"),
        (torch.full((4, 3), float("nan")), torch.randn(4, 3), "z1: expected finite .* got 12"),
        (torch.randn(4, 3), torch.full((4, 3), float("inf")), "z2: expected finite"),
        (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), "floating"),
        ([[1.0, 2.0]] * 4, torch.randn(4, 2), "z1: expected a torch.Tensor .* got list"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_embeddings_raise_value_error(name, z1, z2, match):
    with pytest.raises(ValueError, match=match):
        build(name)(z1, z2)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"temperature": 0.0}, "temperature: expected a finite number > 0, got 0.0"),
        ({"temperature": -0.5}, "temperature: expected a finite number > 0, got -0.5"),
        ({"temperature": float("nan")}, "temperature: expected"),
        ({"temperature": "hot"}, "temperature: expected a positive number, got 'hot'"),
        ({"iters": 0}, "iters: expected an integer >= 1, got 0"),
        ({"iters": 2.5}, "iters: expected an integer >= 1, got 2.5"),
        ({"layout": "grid"}, "layout: expected one of 'simclr', 'cross', got 'grid'"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_shared_parameters_raise_value_error_for_every_loss(name, params, match):
    if "iters" in params and "iters" not in otcl.losses.parameters(name) and name != "dmm":
        pytest.skip(f"{name} has no iterations")  # dcl/hcl: closed form
    if name == "dmm":
        params = {"base_params": params}  # forwarded to the base loss
    with pytest.raises(ValueError, match=match):
        build(name, **params)


@pytest.mark.parametrize("name", ALL)
def test_bad_target_and_labels_raise_value_error_for_every_loss(name):
    z1, z2 = _z(n=4, d=3)
    loss = build(name)
    with pytest.raises(ValueError, match="target: .*got"):
        loss(z1, z2, target=torch.ones(3, 3))
    with pytest.raises(ValueError, match="labels: expected a 1-D tensor of length N=4, got"):
        loss(z1, z2, labels=torch.arange(3))


@pytest.mark.parametrize(
    "params,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"iters": 0}, "iters"),
        ({"layout": "grid"}, "layout"),
        ({"q": 0.0}, "q"),
        ({"lam": -1.0}, "lam"),
        ({"rho": -0.5}, "rho"),
        ({"w_kl": 0.0, "w_rince": 0.0}, "w_kl, w_rince: expected at least one weight > 0"),
    ],
)
def test_bad_parameters_raise_value_error(params, match):
    name = "gca-uot"
    with pytest.raises(ValueError, match=match):
        build(name, **params)


def test_bad_target_and_labels_raise_value_error():
    z1, z2 = _z()
    loss = build("gca-ince")
    with pytest.raises(ValueError, match=r"target: expected a \(12, 12\) tensor"):
        loss(z1, z2, target=torch.ones(6, 6))
    with pytest.raises(ValueError, match="target: expected zero mass on the self-pairs"):
        loss(z1, z2, target=torch.ones(12, 12))
    with pytest.raises(ValueError, match="target: expected finite, non-negative"):
        loss(z1, z2, target=-torch.ones(12, 12).fill_diagonal_(0))
    with pytest.raises(ValueError, match="labels: expected a 1-D tensor of length N=6"):
        loss(z1, z2, labels=torch.arange(5))
    with pytest.raises(ValueError, match="at most one"):
        loss(z1, z2, labels=torch.arange(6), target=torch.ones(12, 12))


@pytest.mark.parametrize("name", CORE)
def test_exp_and_log_domain_give_the_same_loss_and_gradient(name):
    z1, z2 = _z(n=16, d=8, seed=19, dtype=torch.float32)
    grads = []
    values = []
    for domain in ("log", "exp"):
        a = z1.clone().requires_grad_(True)
        loss = build(name, domain=domain, temperature=0.1)(a, z2)
        loss.backward()
        values.append(loss.detach())
        grads.append(a.grad)
    torch.testing.assert_close(values[0], values[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
