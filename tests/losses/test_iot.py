"""IOT-CL: the uniformity penalty and the relaxations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from otcl.losses import build, domain_target, uniformity_penalty
from tests.conftest import np_cos_all, np_pos


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


def test_iot_uni_is_iot_plus_weighted_uniformity(make_pairs):
    z1, z2 = make_pairs(n=6, seed=13)
    loss = build("iot-uni", lam_uni=0.7)
    base = build("iot")(z1, z2)
    out = loss.coupling(z1, z2)
    n2 = out.log_plan.shape[0]
    neg = torch.ones(n2, n2, dtype=torch.bool)
    neg.fill_diagonal_(False)
    neg[torch.arange(n2), torch.tensor(np_pos(6))] = False
    expected = base + 0.7 * uniformity_penalty(out.log_plan, neg)
    torch.testing.assert_close(loss(z1, z2), expected)


def test_iot_relax_both_is_one_batch_partition_function(make_pairs):
    z1, z2 = make_pairs(n=6, seed=14)
    S = np_cos_all(z1, z2) / 0.5
    np.fill_diagonal(S, -np.inf)
    logp = S - logsumexp(S)
    logp_row = logp - logsumexp(logp, axis=1, keepdims=True)  # row-normalised plan
    ref = -logp_row[np.arange(12), np_pos(6)].mean()
    assert float(build("iot", relax="both")(z1, z2)) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_uniformity_without_negatives_is_zero(layout, make_pairs):
    """A target that covers every pair leaves no negatives: the penalty is 0, not NaN."""
    z1, z2 = make_pairs(n=6, d=3, seed=4)
    z1.requires_grad_()
    t = domain_target(torch.arange(6) % 3, 0.3, 0.1, layout=layout).double()
    with_uni = build("iot-uni", layout=layout)(z1, z2, target=t)
    (g,) = torch.autograd.grad(with_uni, z1)
    torch.testing.assert_close(with_uni, build("iot", layout=layout)(z1, z2, target=t))
    assert torch.isfinite(g).all()
