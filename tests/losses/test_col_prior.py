"""A column prior (the sampling distribution of the candidates) in the OT losses: the logQ
correction of Yi et al. (RecSys 2019) as the row-constrained case, balanced / unbalanced
couplings against POT, a uniform prior changes nothing, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otcl.losses import build

F64 = torch.float64


def _prior(m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(m, generator=g, dtype=F64) + 0.05
    return q / q.sum()


def _cos(z1, z2, t):
    return F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / t


def test_row_constrained_is_the_logq_corrected_infonce(make_pairs):
    z1, z2 = make_pairs(n=9, d=5, seed=1)
    q = _prior(9)
    t = 0.3
    loss = build("infonce", temperature=t, layout="cross", symmetric=False)
    s = _cos(z1, z2, t)
    logq = -torch.log_softmax(s - q.log()[None, :], dim=1).diagonal().mean()  # Yi et al.
    assert loss(z1, z2, col_prior=q).item() == pytest.approx(logq.item(), rel=1e-12)
    # both directions: the reverse has the items as rows, where the prior only scales a row
    sym = build("infonce", temperature=t, layout="cross")
    plain_t = -torch.log_softmax(s.T, dim=1).diagonal().mean()
    assert sym(z1, z2, col_prior=q).item() == pytest.approx(0.5 * (logq + plain_t).item(), 1e-12)


def test_row_constrained_with_extra_negatives(make_pairs):
    z1, z2 = make_pairs(n=6, d=4, seed=2)
    neg = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    q = _prior(9, seed=3)
    t = 0.5
    loss = build("infonce", temperature=t, layout="cross", symmetric=False)
    s = _cos(z1, torch.cat([z2, neg]), t)
    ref = -torch.log_softmax(s - q.log()[None, :], dim=1)[:, :6].diagonal().mean()
    assert loss(z1, z2, negatives=neg, col_prior=q).item() == pytest.approx(ref.item(), 1e-12)


@pytest.mark.parametrize("name", ["infonce", "gca-ince", "gca-uot", "iot", "rince", "gca-rince"])
def test_a_uniform_prior_changes_nothing(make_pairs, name):
    z1, z2 = make_pairs(n=7, d=4, seed=4)
    loss = build(name, layout="cross")
    q = torch.full((7,), 1 / 7, dtype=F64)
    a, b = loss(z1, z2), loss(z1, z2, col_prior=q)
    assert b.item() == pytest.approx(a.item(), rel=1e-10, abs=1e-12)


def _pot_row_ce(plan: np.ndarray) -> float:
    return float(-np.mean(np.log(np.diag(plan) / plan.sum(1))))


def test_balanced_prior_sets_the_column_marginal_against_pot(make_pairs):
    ot = pytest.importorskip("ot")
    z1, z2 = make_pairs(n=8, d=5, seed=6)
    q = _prior(8, seed=7)
    t = 0.5
    loss = build("gca-ince", temperature=t, layout="cross", symmetric=False, iters=2000)
    w = (1 / q) / (1 / q).mean()
    s = (_cos(z1, z2, t) + w.log()[None, :]).numpy()
    a, b = np.full(8, 1 / 8), (w / 8).numpy()
    plan = ot.sinkhorn(a, b, -s, 1.0, numItermax=20000, stopThr=1e-13)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-9)
    assert loss(z1, z2, col_prior=q).item() == pytest.approx(_pot_row_ce(plan), rel=1e-6)


def test_unbalanced_prior_against_pot(make_pairs):
    ot = pytest.importorskip("ot")
    z1, z2 = make_pairs(n=8, d=5, seed=8)
    q = _prior(8, seed=9)
    t, rho = 0.5, 0.7
    loss = build(
        "ot",
        temperature=t,
        layout="cross",
        symmetric=False,
        constraint="unbalanced",
        rho=rho,
        iters=3000,
    )
    w = (1 / q) / (1 / q).mean()
    s = (_cos(z1, z2, t) + w.log()[None, :]).numpy()
    a, b = np.full(8, 1 / 8), (w / 8).numpy()
    plan = ot.sinkhorn_unbalanced(
        a, b, -s, 1.0, rho / t, reg_type="entropy", numItermax=30000, stopThr=1e-14
    )
    assert loss(z1, z2, col_prior=q).item() == pytest.approx(_pot_row_ce(plan), rel=1e-6)


def test_prior_gradients_flow_and_dmm_passes_it_on(make_pairs):
    z1, z2 = make_pairs(n=6, d=4, seed=10)
    z1.requires_grad_(True)
    q = _prior(6, seed=11)
    base = build("gca-uot", layout="cross")
    base(z1, z2, col_prior=q).backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
    dmm = build("dmm", base="infonce", base_params={"layout": "cross"}, pair_loss="hinge")
    plain = build("infonce", layout="cross")
    with torch.no_grad():  # weight 0 at epoch 0: the DMM wrapper is its base
        assert dmm(z1, z2, col_prior=q).item() == pytest.approx(plain(z1, z2, col_prior=q).item())
        assert dmm(z1, z2).item() != pytest.approx(dmm(z1, z2, col_prior=q).item())


def test_bad_priors(make_pairs):
    z1, z2 = make_pairs(n=5, d=3, seed=12)
    loss = build("infonce", layout="cross")
    with pytest.raises(ValueError, match=r"col_prior: expected shape \(5,\)"):
        loss(z1, z2, col_prior=torch.full((4,), 0.25, dtype=F64))
    with pytest.raises(ValueError, match="col_prior: expected positive finite probabilities"):
        loss(z1, z2, col_prior=torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0], dtype=F64))
    mass = build("iot", layout="cross", relax="both")
    with pytest.raises(ValueError, match="col_prior: iot .constraint='mass'. has no column"):
        mass(z1, z2, col_prior=torch.full((5,), 0.2, dtype=F64))


def test_prior_takes_the_dense_geometry(make_pairs):
    z1, z2 = make_pairs(n=6, d=4, seed=13)
    q = _prior(6, seed=14)
    dense = build("gca-uot", layout="cross", geometry="dense")(z1, z2, col_prior=q)
    auto = build("gca-uot", layout="cross", geometry="auto", tile_size=2)(z1, z2, col_prior=q)
    assert auto.item() == pytest.approx(dense.item(), rel=1e-12)
    streaming = build("gca-uot", layout="cross", geometry="streaming", tile_size=2)
    with pytest.raises(ValueError, match="col_prior: the streaming geometry takes no column"):
        streaming(z1, z2, col_prior=q)
