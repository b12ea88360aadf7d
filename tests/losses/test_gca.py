"""GCA (rince, gca-ince, gca-rince, gca-uot) against the official code's formulas and limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from otcl.losses import (
    build,
)
from tests.conftest import np_cos_all, np_pos


# -- GCA --------------------------------------------------------------------------------------
def _official_gca_ince(z1, z2, eps=0.5, iters=10):
    """Official CIFAR gca_ince in numpy (self-pair at max cost, clipped cosines, exp domain)."""
    n = z1.shape[0]
    C = 1 - np.clip(np_cos_all(z1, z2), 1e-7, None)
    np.fill_diagonal(C, C.max())
    K = np.exp(-C / eps)
    u, v = np.ones(2 * n), np.ones(2 * n)
    for _ in range(iters):
        u = 1 / (K @ v)
        v = 1 / (K.T @ u)
    P = u[:, None] * K * v[None, :]
    logp = np.log(P) - np.log(P.sum(1, keepdims=True))
    return -logp[np.arange(2 * n), np_pos(n)].mean()


def test_gca_ince_faithful_mode_reproduces_official_code(make_pairs):
    z1, z2 = make_pairs(n=6, seed=4)
    ref = _official_gca_ince(z1, z2)
    got = build("gca-ince", self_pair="max_cost", clip_min=1e-7)(z1, z2)
    assert float(got) == pytest.approx(ref, abs=1e-10)


def test_gca_ince_equals_masked_sinkhorn_reference(make_pairs):
    z1, z2 = make_pairs(n=6, seed=6)
    n = z1.shape[0]
    S = np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    f, g = np.zeros(2 * n), np.zeros(2 * n)
    loga = np.full(2 * n, -np.log(2 * n))
    for _ in range(7):
        f = loga - logsumexp(S + g[None], axis=1)
        g = loga - logsumexp(S + f[:, None], axis=0)
    logp = S + g[None] - logsumexp(S + g[None], axis=1, keepdims=True)
    ref = -logp[np.arange(2 * n), np_pos(n)].mean()
    assert float(build("gca-ince", iters=7)(z1, z2)) == pytest.approx(ref, abs=1e-10)


def _np_rince(s, pos, q, lam):
    vals = []
    for i in range(s.shape[0]):
        row = s[i][np.isfinite(s[i])]
        vals.append(-np.exp(q * s[i, pos[i]]) / q + (lam * np.exp(row).sum()) ** q / q)
    return np.mean(vals)


@pytest.mark.parametrize("q,lam", [(0.6, 0.01), (1.0, 0.5), (0.2, 2.0)])
def test_rince_equals_closed_form(q, lam, make_pairs):
    z1, z2 = make_pairs(n=6, seed=7)
    S = np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    ref = _np_rince(S, np_pos(6), q, lam)
    assert float(build("rince", q=q, lam=lam)(z1, z2)) == pytest.approx(ref, abs=1e-10)


def test_rince_tends_to_infonce_plus_log_lam_as_q_goes_to_zero(make_pairs):
    z1, z2 = make_pairs(n=6, seed=8)
    nce = float(build("infonce")(z1, z2))
    r = float(build("rince", q=1e-7, lam=0.3)(z1, z2))
    assert r == pytest.approx(nce + math.log(0.3), abs=1e-5)


def test_gca_rince_with_row_constraint_is_rince(make_pairs):
    z1, z2 = make_pairs(n=6, seed=9)
    unit = build("rince")
    unit.marginals = "unit"  # not a parameter of rince (it does not depend on it): as gca-rince's
    torch.testing.assert_close(build("gca-rince", constraint="rows")(z1, z2), unit(z1, z2))
    torch.testing.assert_close(unit(z1, z2), build("rince")(z1, z2))


def test_gca_rince_equals_column_reweighted_reference(make_pairs):
    z1, z2 = make_pairs(n=6, seed=10)
    n2, q, lam = 12, 0.6, 0.01
    S = np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    f, g = np.zeros(n2), np.zeros(n2)
    for _ in range(10):  # unit marginals
        f = -logsumexp(S + g[None], axis=1)
        g = -logsumexp(S + f[:, None], axis=0)
    ref = _np_rince(S + g[None], np_pos(6), q, lam)  # log(K v) = S + g
    assert float(build("gca-rince")(z1, z2)) == pytest.approx(ref, abs=1e-10)


def test_gca_uot_equals_reference_implementation(make_pairs):
    z1, z2 = make_pairs(n=6, seed=11)
    n2, eps, rho, q, lam, w_kl, w_r = 12, 0.5, 0.2, 0.6, 0.01, 1.0, 0.02
    S = np_cos_all(z1, z2) / eps
    np.fill_diagonal(S, -np.inf)
    K = np.exp(S)
    a = np.full(n2, 1 / n2)
    fi = rho / (rho + eps)
    u, v = a.copy(), a.copy()
    for _ in range(10):
        u = (a / (K @ v)) ** fi
        v = (a / (K.T @ u)) ** fi
    P = u[:, None] * K * v[None]
    pos = np_pos(6)
    logp = np.log(P[np.arange(n2), pos]) - np.log(P.sum(1))
    ce = -logp.mean()
    with np.errstate(divide="ignore"):
        r = _np_rince(np.log(K * v[None]), pos, q, lam)
    ref = w_kl * ce + w_r * r
    assert float(build("gca-uot")(z1, z2)) == pytest.approx(ref, abs=1e-9)


def test_gca_uot_tends_to_gca_ince_as_rho_grows(make_pairs):
    z1, z2 = make_pairs(n=6, seed=12)
    ince = build("gca-ince")(z1, z2)
    uot = build("gca-uot", rho=1e7, w_rince=0.0)(z1, z2)
    assert float(uot) == pytest.approx(float(ince), abs=1e-5)


def test_gca_rince_implicit_uses_the_symmetric_gauge(make_pairs):
    """The RINCE term on K v depends on the gauge (f + k, g - k) of balanced potentials; at the
    fixed point (grad="implicit") it is evaluated with sum f = sum g, i.e. u = v for the
    symmetric simclr kernel, so that the value and its implicit gradient match (gradcheck
    above). The unrolled iterations keep the paper's v^(t)."""
    z1, z2 = make_pairs(n=6, seed=21)
    kw = {"iters": 3000, "tol": 1e-15}
    n2, q, lam = 12, 0.6, 0.01
    S = np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    f, g = np.zeros(n2), np.zeros(n2)
    for _ in range(1000):  # unit marginals, to convergence
        f = -logsumexp(S + g[None], axis=1)
        g = -logsumexp(S + f[:, None], axis=0)
    h = 0.5 * (f + g)  # the symmetric solution: P = diag(e^h) K diag(e^h)
    np.testing.assert_allclose(f - f.mean(), g - g.mean(), atol=1e-10)
    sym = _np_rince(S + h[None], np_pos(6), q, lam)
    it = _np_rince(S + g[None], np_pos(6), q, lam)
    assert float(build("gca-rince", grad="implicit", **kw)(z1, z2)) == pytest.approx(sym, abs=1e-9)
    assert float(build("gca-rince", grad="unrolled", **kw)(z1, z2)) == pytest.approx(it, abs=1e-9)
