"""Tests of ``otcl.diagnostics``: effective negatives, weighted similarity, alignment/uniformity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import otcl
from otcl import diagnostics as dg
from otcl.losses import DMM, build

KEYS = {
    "neg_eff",
    "neg_eff_frac",
    "neg_sim_weighted",
    "neg_sim_uniform",
    "neg_sim_gap",
    "pos_sim",
    "alignment",
    "uniformity",
}


@pytest.mark.parametrize("layout,m", [("simclr", 30), ("cross", 15)])
def test_uniform_weights_give_all_negatives(layout, m, make_pairs):
    z1, z2 = make_pairs(n=16, d=8, dtype=torch.float32, noise=0.8)
    for loss in (None, build("infonce", layout=layout), build("dcl", layout=layout)):
        out = dg.batch_diagnostics(z1, z2, loss, layout=layout)
        assert set(out) == KEYS and all(isinstance(v, float) for v in out.values())
        assert out["neg_eff"] == pytest.approx(m, rel=1e-5)
        assert out["neg_eff_frac"] == pytest.approx(1.0, rel=1e-5)
        assert out["neg_sim_gap"] == pytest.approx(0.0, abs=1e-6)


def test_effective_negatives_hand_built():
    w = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.7, 0.1, 0.1, 0.1]]
    )
    ess = dg.effective_negatives(w)
    p = np.array([0.7, 0.1, 0.1, 0.1])
    expected = [1.0, 2.0, 4.0, math.exp(-(p * np.log(p)).sum())]
    torch.testing.assert_close(ess, torch.tensor(expected, dtype=torch.float32))
    # a mask drops entries; an empty row gives 0
    neg = torch.tensor([[True, True, False, False]] * 3 + [[False] * 4])
    torch.testing.assert_close(dg.effective_negatives(w, neg), torch.tensor([1.0, 2.0, 2.0, 0.0]))


def test_hcl_hardness_is_monotone_in_beta(make_pairs):
    """Softmax weights: entropy falls and the weighted similarity rises as beta grows."""
    z1, z2 = make_pairs(n=16, d=8, dtype=torch.float32, noise=0.8, seed=1)
    stats = [dg.batch_diagnostics(z1, z2, build("hcl", beta=b)) for b in (0.0, 0.5, 1.0, 2.0, 4.0)]
    ess = [s["neg_eff"] for s in stats]
    sims = [s["neg_sim_weighted"] for s in stats]
    assert ess[0] == pytest.approx(30.0, rel=1e-5)
    assert all(a > b for a, b in zip(ess, ess[1:], strict=False))
    assert all(a < b for a, b in zip(sims, sims[1:], strict=False))
    assert stats[-1]["neg_sim_gap"] > 0
    # the uniform reference and the view statistics do not depend on the weights
    for s in stats[1:]:
        for k in ("neg_sim_uniform", "pos_sim", "alignment", "uniformity"):
            assert s[k] == stats[0][k]


def test_weighted_similarity_matches_manual(make_pairs):
    z1, z2 = make_pairs(n=6, d=8, dtype=torch.float32, noise=0.8, seed=2)
    loss = build("ot-hard", eps=0.3, iters=500, tol=1e-8)
    out = dg.batch_diagnostics(z1, z2, loss)
    w, neg = loss.negative_weights(z1, z2)
    x = torch.cat([F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)])
    sim = x @ x.T
    manual_w = (w * sim).sum(-1).mean()
    manual_u = (torch.where(neg, sim, 0.0).sum(-1) / neg.sum(-1)).mean()
    assert out["neg_sim_weighted"] == pytest.approx(float(manual_w), abs=1e-6)
    assert out["neg_sim_uniform"] == pytest.approx(float(manual_u), abs=1e-6)
    assert out["neg_eff"] < 10.0  # fewer than the 10 negatives: OT concentrates the weights
    # explicit weights override the loss; DMM delegates to its base
    same = dg.batch_diagnostics(z1, z2, weights=w)
    assert same["neg_eff"] == pytest.approx(out["neg_eff"], rel=1e-6)
    wrapped = dg.batch_diagnostics(z1, z2, DMM(loss))
    assert wrapped["neg_eff"] == pytest.approx(out["neg_eff"], rel=1e-6)
    assert dg.batch_diagnostics(z1, z2, DMM("infonce"))["neg_eff"] == pytest.approx(10.0, rel=1e-6)


def test_plan_source_for_ot_losses(make_pairs):
    z1, z2 = make_pairs(n=6, d=8, dtype=torch.float32, noise=0.8, seed=4)
    loss = build("infonce", temperature=0.2)
    out = dg.batch_diagnostics(z1, z2, loss, source="plan")
    # infonce's plan is the row softmax of s/t: restricted to the negatives it is softmax over them
    x = torch.cat([F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)])
    sim = x @ x.T
    neg = dg.negative_mask(6, "simclr")
    w = torch.softmax(torch.where(neg, sim / 0.2, float("-inf")), -1)
    assert out["neg_eff"] == pytest.approx(float(dg.effective_negatives(w).mean()), rel=1e-5)
    assert out["neg_sim_weighted"] == pytest.approx(float((w * sim).sum(-1).mean()), abs=1e-6)
    assert dg.batch_diagnostics(z1, z2, loss, source="uniform")["neg_eff"] == pytest.approx(10.0)
    iot = dg.batch_diagnostics(z1, z2, build("gca-ince"), source="plan")
    assert 1.0 < iot["neg_eff"] < 10.0
    with pytest.raises(ValueError, match="source"):
        dg.batch_diagnostics(z1, z2, build("hcl"), source="plan")
    with pytest.raises(ValueError, match="source"):
        dg.batch_diagnostics(z1, z2, loss, source="coupling")


def test_alignment_closed_forms():
    z = torch.randn(5, 3)
    assert float(dg.alignment(z, 2 * z)) == pytest.approx(0.0, abs=1e-6)
    assert float(dg.alignment(z, -z)) == pytest.approx(4.0, rel=1e-6)  # |a - (-a)|^2 = 4
    assert float(dg.alignment(z, -z, alpha=1.0)) == pytest.approx(2.0, rel=1e-6)
    e = torch.eye(3)
    # orthogonal unit vectors: |e_i - e_j|^2 = 2
    assert float(dg.alignment(e, e.roll(1, 0))) == pytest.approx(2.0, rel=1e-6)


def test_uniformity_reference_and_bounds():
    z = torch.randn(12, 4, generator=torch.Generator().manual_seed(3))
    zn = F.normalize(z, dim=-1).numpy().astype(np.float64)
    d2 = ((zn[:, None] - zn[None]) ** 2).sum(-1)
    iu = np.triu_indices(12, 1)
    ref = np.log(np.mean(np.exp(-2.0 * d2[iu])))
    assert float(dg.uniformity(z)) == pytest.approx(ref, abs=1e-5)
    assert float(dg.uniformity(torch.ones(4, 3))) == pytest.approx(0.0, abs=1e-6)
    anti = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(dg.uniformity(anti, t=2.0)) == pytest.approx(-8.0, rel=1e-6)


def test_diagnostics_module_exported_and_logging_ready(make_pairs):
    assert otcl.diagnostics is dg
    z1, z2 = make_pairs(n=16, d=8, dtype=torch.float32, noise=0.8)
    z1.requires_grad_(True)
    out = dg.batch_diagnostics(z1, z2, build("hcl"))
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


def test_bad_input(make_pairs):
    z1, z2 = make_pairs(n=16, d=8, dtype=torch.float32, noise=0.8)
    with pytest.raises(ValueError, match="weights"):
        dg.batch_diagnostics(z1, z2, weights=torch.ones(5, 5))
    with pytest.raises(ValueError, match="weights"):
        dg.batch_diagnostics(z1, z2, weights=-torch.ones(32, 32))
    with pytest.raises(ValueError, match="layout"):
        dg.batch_diagnostics(z1, z2, layout="grid")
    with pytest.raises(ValueError, match="z1, z2"):
        dg.batch_diagnostics(z1, z2[:3])
    with pytest.raises(ValueError, match="alpha"):
        dg.alignment(z1, z2, alpha=0.0)
    with pytest.raises(ValueError, match="z"):
        dg.uniformity(z1[:1])
    with pytest.raises(ValueError, match="t"):
        dg.uniformity(z1, t=-1.0)
