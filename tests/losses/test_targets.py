"""Target plans: identity, labels, domain blocks, and bad targets/labels."""

from __future__ import annotations

import pytest
import torch

import otcl
from otcl.losses import (
    build,
    domain_target,
    label_target,
)
from tests.conftest import OT_FAMILY, np_pos


@pytest.mark.parametrize("name", OT_FAMILY)
def test_distinct_labels_equal_identity_target(name, make_pairs):
    z1, z2 = make_pairs(n=6, seed=3)
    loss = build(name)
    torch.testing.assert_close(loss(z1, z2, labels=torch.arange(6)), loss(z1, z2))
    eye_target = torch.zeros(12, 12, dtype=torch.float64)
    eye_target[torch.arange(12), torch.tensor(np_pos(6))] = 1.0
    torch.testing.assert_close(loss(z1, z2, target=eye_target), loss(z1, z2))


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


def test_domain_target_runs_in_every_loss(make_pairs):
    z1, z2 = make_pairs(n=6, seed=15)
    t = domain_target(torch.tensor([0, 0, 1, 1, 2, 2]), alpha=0.3, beta=0.0)
    for name in OT_FAMILY:
        assert torch.isfinite(build(name)(z1, z2, target=t))


@pytest.mark.parametrize("name", otcl.losses.available())
def test_bad_target_and_labels_raise_value_error_for_every_loss(name, make_pairs):
    z1, z2 = make_pairs(n=4, d=3)
    loss = build(name)
    with pytest.raises(ValueError, match="target: .*got"):
        loss(z1, z2, target=torch.ones(3, 3))
    with pytest.raises(ValueError, match="labels: expected a 1-D tensor of length N=4, got"):
        loss(z1, z2, labels=torch.arange(3))


def test_bad_target_and_labels_raise_value_error(make_pairs):
    z1, z2 = make_pairs(n=6)
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


# -- domain blocks -------------------------------------------------------------------------
def _domain_reference(dom, W, layout, scale):
    """P_tgt by loops over (i, j): I + W[D_i, D_j] per pair (pair) or per block mass (block)."""
    n_pairs = len(dom)
    d = list(dom) * 2 if layout == "simclr" else list(dom)
    n = len(d)
    pos = [(i + n_pairs) % n for i in range(n)] if layout == "simclr" else list(range(n))
    t = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        t[i, pos[i]] += 1.0
        cands = [j for j in range(n) if not (layout == "simclr" and j == i)]
        if scale == "block":
            cands = [j for j in cands if j != pos[i]]
        for j in cands:
            members = sum(1 for k in cands if d[k] == d[j])
            t[i, j] += W[d[i]][d[j]] / (members if scale == "block" else 1)
    return t / t.sum(1, keepdim=True)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize("scale", ["pair", "block"])
def test_domain_target_matches_the_loop_reference(layout, scale):
    dom = [0, 2, 1, 0, 2, 2, 1]
    W = [[0.4, 0.1, 0.1], [0.1, 0.4, 0.1], [0.1, 0.1, 0.4]]
    got = domain_target(torch.tensor(dom), 0.4, 0.1, layout, scale=scale).double()
    torch.testing.assert_close(got, _domain_reference(dom, W, layout, scale))
    # an asymmetric (D, D) matrix of block weights
    B = [[0.0, 0.3, 0.0], [0.2, 0.5, 0.0], [1.0, 0.0, 0.1]]
    got = domain_target(torch.tensor(dom), layout=layout, blocks=torch.tensor(B), scale=scale)
    torch.testing.assert_close(got.double(), _domain_reference(dom, B, layout, scale))


def test_domain_target_block_scale_is_batch_size_free():
    t0 = domain_target(torch.tensor([0, 1, 0, 1]), 0.0, 0.0, scale="block")
    torch.testing.assert_close(t0, otcl.losses.identity_target(4))  # alpha = beta = 0
    for n in (8, 16, 64):  # every block of row 0 has members
        dom = torch.arange(n) % 4
        t = domain_target(dom, alpha=0.5, beta=0.25, scale="block")
        same = (dom.repeat(2)[:, None] == dom.repeat(2)[None, :]).float()
        pos = otcl.ot.geometry.positive_index(n, "simclr")
        row0 = t[0] * 2.25  # 1 (positive) + 0.5 (own block) + 3 x 0.25 (other blocks)
        assert float(row0[pos[0]]) == pytest.approx(1.0)
        assert float((row0 * same[0]).sum() - row0[pos[0]]) == pytest.approx(0.5)
        assert float((row0 * (1 - same[0])).sum()) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.1}, r"alpha: expected a finite number >= 0, got -0.1"),
        ({"beta": float("nan")}, r"beta: expected a finite number >= 0, got nan"),
        ({"alpha": "x"}, r"alpha: expected a number >= 0"),
        ({"num_domains": 2}, r"domains: expected ids in \[0, 2\) for a target of 2 domains"),
        ({"blocks": torch.ones(2, 2)}, r"domains: expected ids in \[0, 2\)"),
        ({"blocks": torch.ones(3, 2)}, r"blocks: expected a \(D, D\) tensor"),
        ({"blocks": -torch.ones(3, 3)}, r"blocks: expected finite weights >= 0"),
        ({"blocks": torch.ones(3, 3), "alpha": 0.1}, r"blocks: expected either alpha/beta"),
        ({"blocks": torch.ones(3, 3), "num_domains": 4}, r"num_domains: 4 does not match"),
        ({"num_domains": 0}, r"num_domains: expected an integer >= 1"),
        ({"scale": "row"}, r"scale"),
    ],
)
def test_domain_target_bad_values_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        domain_target(torch.tensor([0, 1, 2, 2]), **kwargs)


def test_domain_target_bad_domains():
    with pytest.raises(ValueError, match="domains: expected a 1-D tensor of integer domain ids"):
        domain_target(torch.tensor([0.0, 1.0]), 0.1, 0.0)
    with pytest.raises(ValueError, match=r"domains: expected ids in \[0, 3\).*got ids -1..2"):
        domain_target(torch.tensor([-1, 2]), 0.1, 0.0, num_domains=3)


@pytest.mark.parametrize("name", ["dcl", "hcl", "ot-hard", "infonce", "gca-uot"])
@pytest.mark.parametrize(
    "labels,got",
    [
        (torch.arange(16).reshape(8, 2), r"got shape \(8, 2\)$"),
        (torch.arange(7), r"got shape \(7\)$"),
        (torch.tensor(3), r"got shape \(\)$"),
        (list(range(8)), "got list$"),
    ],
)
def test_labels_of_the_wrong_shape_give_the_shape_not_the_values(name, labels, got):
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"^labels: expected a 1-D .*tensor of length N=8, " + got):
        otcl.losses.build(name)(z1, z2, labels=labels)
