"""``negatives=``: extra candidates (sampled negatives) appended as columns, in every loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import otcl
from otcl.losses import build
from otcl.losses.pair_losses import min_triplet, vse_hinge

ALL = otcl.losses.available()


def _cos(x, y):
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def test_infonce_cross_with_negatives_equals_reference(make_pairs):
    z1, z2 = make_pairs(n=5, d=4, seed=3)
    extra = torch.randn(7, 4, dtype=z1.dtype, generator=torch.Generator().manual_seed(1))
    t = 0.3
    fwd = F.cross_entropy(_cos(z1, torch.cat([z2, extra])) / t, torch.arange(5))
    bwd = F.cross_entropy(_cos(z2, z1) / t, torch.arange(5))  # view-2 anchors: no extra
    got = build("infonce", temperature=t, layout="cross")(z1, z2, negatives=extra)
    torch.testing.assert_close(got, 0.5 * (fwd + bwd), rtol=1e-12, atol=1e-12)
    one = build("infonce", temperature=t, layout="cross", symmetric=False)
    torch.testing.assert_close(one(z1, z2, negatives=extra), fwd, rtol=1e-12, atol=1e-12)


def test_infonce_simclr_with_negatives_equals_reference(make_pairs):
    z1, z2 = make_pairs(n=4, d=3, seed=4)
    extra = torch.randn(3, 3, dtype=z1.dtype, generator=torch.Generator().manual_seed(2))
    z = torch.cat([z1, z2])
    logits = _cos(z, torch.cat([z, extra])) / 0.5
    logits[torch.arange(8), torch.arange(8)] = float("-inf")
    ref = F.cross_entropy(logits, torch.cat([torch.arange(4) + 4, torch.arange(4)]))
    torch.testing.assert_close(build("infonce")(z1, z2, negatives=extra), ref)


def test_balanced_coupling_with_negatives_matches_pot(make_pairs):
    """gca-ince in the cross layout with K extra columns: the balanced N x (N + K) plan with
    uniform marginals 1/N, 1/(N + K) (POT sinkhorn_log), then InfoNCE on its rows."""
    pot = pytest.importorskip("ot")
    z1, z2 = make_pairs(n=5, d=4, seed=5)
    extra = torch.randn(3, 4, dtype=z1.dtype, generator=torch.Generator().manual_seed(3))
    eps = 0.5
    S = (_cos(z1, torch.cat([z2, extra])) / eps).numpy()
    a, b = np.full(5, 1 / 5), np.full(8, 1 / 8)
    P = pot.sinkhorn(a, b, -S * eps, eps, method="sinkhorn_log", numItermax=10000, stopThr=1e-14)
    fwd = -np.log(P[np.arange(5), np.arange(5)] / P.sum(1)).mean()
    loss = build("gca-ince", layout="cross", symmetric=False, iters=3000, tol=1e-13)
    torch.testing.assert_close(loss(z1, z2, negatives=extra), torch.tensor(fwd, dtype=z1.dtype))


def test_labels_never_make_an_extra_candidate_positive(make_pairs):
    z1, z2 = make_pairs(n=4, d=3, seed=6)
    extra = torch.randn(2, 3, dtype=z1.dtype)
    labels = torch.tensor([0, 1, 0, 1])
    loss = build("gca-ince", layout="cross", symmetric=False)
    geo = loss.pair_geometry(z1, z2, extra)
    tgt, _ = otcl.losses.targets.prepare_target(geo, labels, None, z1.dtype)
    assert tgt.shape == (4, 6) and (tgt[:, 4:] == 0).all()
    torch.testing.assert_close(tgt.sum(-1), torch.ones(4, dtype=z1.dtype))
    assert torch.isfinite(loss(z1, z2, labels=labels, negatives=extra))
    with pytest.raises(ValueError, match=r"target: expected a \(4, 6\) tensor .* 2 extra"):
        loss(z1, z2, target=torch.eye(4, dtype=z1.dtype), negatives=extra)


def test_dcl_with_negatives_counts_them_as_negatives(make_pairs):
    z1, z2 = make_pairs(n=4, d=3, seed=7, noise=0.5)
    extra = torch.randn(3, 3, dtype=z1.dtype, generator=torch.Generator().manual_seed(4))
    t = 0.5
    s = _cos(z1, torch.cat([z2, extra])) / t
    ref = []
    for i in range(4):
        negs = [j for j in range(7) if j != i]
        ng = torch.logsumexp(s[i, negs], 0)
        ng = torch.maximum(ng, torch.tensor(math.log(6) - 1 / t, dtype=z1.dtype))
        ref.append(torch.logaddexp(s[i, i], ng) - s[i, i])
    got = build("dcl", tau_plus=0.0, layout="cross", symmetric=False)(z1, z2, negatives=extra)
    torch.testing.assert_close(got, torch.stack(ref).mean())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_every_loss_takes_negatives_with_finite_gradients(name, layout):
    torch.manual_seed(8)
    z1 = torch.randn(6, 4, requires_grad=True)
    z2 = torch.randn(6, 4, requires_grad=True)
    extra = torch.randn(5, 4, requires_grad=True)
    params = {"layout": layout} if name != "dmm" else {"layout": layout, "warmup": 0.0}
    loss = build(name, **params)(z1, z2, negatives=extra)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (z1, z2, extra):
        assert torch.isfinite(t.grad).all()
    assert extra.grad.abs().sum() > 0  # the extra candidates are in the loss


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(3, 5), r"negatives: expected shape \(K, 4\) or \(4, K, 4\)"),
        (torch.randn(3), r"negatives: expected a tensor of shape \(K, d\) or \(4, K, d\)"),
        (torch.randn(3, 2, 4), r"negatives: expected shape \(K, 4\) or \(4, K, 4\)"),
        (torch.zeros(3, 4, dtype=torch.long), "negatives: expected a floating-point tensor"),
        (torch.full((3, 4), float("nan")), "negatives: expected finite values"),
        (torch.randn(0, 4), r"negatives: expected at least one extra candidate"),
    ],
)
@pytest.mark.parametrize("name", ["infonce", "gca-uot", "ot-hard"])
def test_bad_negatives_raise(name, bad, match):
    with pytest.raises(ValueError, match=match):
        build(name, layout="cross")(torch.randn(4, 4), torch.randn(4, 4), negatives=bad)


# -- DMM and its pair losses ----------------------------------------------------------------
def test_dmm_forwards_negatives_to_base_and_pair_loss(make_pairs):
    z1, z2 = make_pairs(n=6, d=4, seed=9, noise=0.5)
    extra = torch.randn(3, 4, dtype=z1.dtype)
    off = otcl.losses.build("dmm", layout="cross", weight=0.0)
    ref = build("infonce", layout="cross")(z1, z2, negatives=extra)
    torch.testing.assert_close(off(z1, z2, negatives=extra), ref)
    dmm = otcl.losses.build("dmm", layout="cross", warmup=0.0, lam_range=(0.7, 0.7))
    mixed = dmm.mix_embeddings(z1)
    total = dmm(z1, z2, mixed=mixed, negatives=extra)
    term = vse_hinge(mixed.z, z2, 0.7 * 0.2, extra)
    torch.testing.assert_close(total, ref + term)


def test_min_triplet_with_per_anchor_negatives_equals_loop():
    g = torch.Generator().manual_seed(10)
    a, p = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    neg = torch.randn(5, 4, 3, generator=g)
    ref = torch.stack(
        [
            torch.relu(
                1.5 + (a[i] - p[i]).norm() - min((a[i] - neg[i, k]).norm() for k in range(4))
            )
            for i in range(5)
        ]
    ).mean()
    torch.testing.assert_close(min_triplet(a, p, 1.5, neg), ref)
    shared = torch.randn(4, 3, generator=g)  # (K, d): the same negatives for every anchor
    torch.testing.assert_close(
        min_triplet(a, p, 1.5, shared), min_triplet(a, p, 1.5, shared.expand(5, 4, 3))
    )
    with pytest.raises(ValueError, match=r"negatives: expected shape \(K, 3\)"):
        min_triplet(a, p, 1.0, torch.randn(4, 4, 3))


def test_vse_hinge_with_negatives_equals_loop():
    g = torch.Generator().manual_seed(11)
    a, p, n = (torch.randn(k, 3, generator=g, dtype=torch.float64) for k in (4, 4, 2))
    s, sn = _cos(a, p), _cos(a, n)
    m, total = 0.3, 0.0
    for i in range(4):
        for j in range(4):
            if i != j:
                total += torch.relu(m + s[i, j] - s[i, i]) + torch.relu(m + s[i, j] - s[j, j])
        for k in range(2):
            total += torch.relu(m + sn[i, k] - s[i, i])
    torch.testing.assert_close(vse_hinge(a, p, m, n), total / (4 * 6))
    torch.testing.assert_close(vse_hinge(a, p, m), vse_hinge(a, p, m, None))


@pytest.mark.parametrize("name", ["infonce", "gca-uot", "hcl"])
def test_per_anchor_negatives_are_their_flattened_columns(name, make_pairs):
    """(N, K, d) per-anchor negatives = the N K candidates as shared columns."""
    z1, z2 = make_pairs(n=4, d=3, seed=12)
    per = torch.randn(4, 2, 3, dtype=z1.dtype)
    loss = build(name, layout="cross")
    torch.testing.assert_close(
        loss(z1, z2, negatives=per), loss(z1, z2, negatives=per.reshape(8, 3))
    )
