"""Geometry: scores of a batch, its layout, the negatives, and extra candidate columns."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from otcl.ot import Sinkhorn, negative_mask, pair_scores, positive_index


def test_pair_scores_layouts_positives_and_negatives(make_pairs):
    z1, z2 = make_pairs(n=4, d=3)
    g = pair_scores(z1, z2, temperature=0.5)
    assert g.scores.shape == (8, 8) and torch.isinf(g.scores.diagonal()).all()
    assert g.pos.tolist() == [4, 5, 6, 7, 0, 1, 2, 3] and g.bound == 2.0
    neg = g.negatives()
    assert neg.sum(-1).tolist() == [6] * 8  # 2N - 2: not self, not the positive
    c = pair_scores(z1, z2, temperature=0.5, layout="cross")
    assert c.scores.shape == (4, 4) and c.pos.tolist() == [0, 1, 2, 3]
    assert c.negatives().sum(-1).tolist() == [3] * 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.scores = g.scores * 2  # type: ignore[misc]


def test_negative_mask_with_labels_and_extra_columns():
    labels = torch.tensor([0, 1, 0])
    m = negative_mask(3, "simclr", labels=labels, n_extra=2)
    assert m.shape == (6, 8)
    y = torch.cat([labels, labels])
    for i in range(6):
        for j in range(8):
            expected = j >= 6 or (j != i and j != (i + 3) % 6 and y[i] != y[j])
            assert bool(m[i, j]) == expected, (i, j)
    assert negative_mask(3, "cross", n_extra=1)[:, 3].all()


def test_extra_candidates_are_appended_columns(make_pairs):
    z1, z2 = make_pairs(n=4, d=3, seed=1)
    extra = torch.randn(5, 3, dtype=z1.dtype)
    c = pair_scores(z1, z2, temperature=0.2, layout="cross", negatives=extra)
    ref = F.normalize(z1, dim=-1) @ F.normalize(torch.cat([z2, extra]), dim=-1).T / 0.2
    torch.testing.assert_close(c.scores, ref)
    assert c.n_extra == 5 and c.negatives()[:, 4:].all()
    t = c.transposed()  # view-2 anchors: the square block only
    torch.testing.assert_close(t.scores, ref[:, :4].T)
    s = pair_scores(z1, z2, temperature=0.2, negatives=extra)  # simclr: 2N x (2N + K)
    assert s.scores.shape == (8, 13) and torch.isinf(s.scores[:, :8].diagonal()).all()
    assert torch.isfinite(s.scores[:, 8:]).all()
    with pytest.raises(ValueError, match="layout: transposed\\(\\) applies to the 'cross' layout"):
        s.transposed()


def test_solver_accepts_a_geometry_and_uses_its_bound(make_pairs):
    z1, z2 = make_pairs(n=6, d=4, seed=2)
    geo = pair_scores(z1, z2, temperature=0.1)  # |S| <= 10: exp domain from the bound alone
    out = Sinkhorn(iters=20)(geo)
    ref = Sinkhorn(iters=20)(geo.scores, bound=geo.bound)
    assert out.domain == "exp"
    torch.testing.assert_close(out.plan, ref.plan, rtol=0, atol=0)


def test_positive_index_layouts():
    assert positive_index(3, "cross").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="layout"):
        positive_index(3, "grid")
