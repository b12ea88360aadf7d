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
