"""InfoNCE / NT-Xent / CLIP / SupCon: the row-constrained member, against closed forms and references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from otcl.losses import (
    OTContrastiveLoss,
    build,
)
from tests.conftest import np_cos_all, np_pos


# -- InfoNCE ---------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_infonce_equals_closed_form_nt_xent(t, make_pairs):
    z1, z2 = make_pairs(n=6)
    n = z1.shape[0]
    sim = np_cos_all(z1, z2)
    pos = np_pos(n)
    ref = 0.0
    for i in range(2 * n):
        others = [sim[i, k] / t for k in range(2 * n) if k != i]
        ref += -(sim[i, pos[i]] / t - logsumexp(others))
    ref /= 2 * n
    assert float(build("infonce", temperature=t)(z1, z2)) == pytest.approx(ref, abs=1e-10)


def test_infonce_cross_equals_clip_reference(make_pairs):
    z1, z2 = make_pairs(n=6)
    a = z1 / z1.norm(dim=1, keepdim=True)
    b = z2 / z2.norm(dim=1, keepdim=True)
    logits = (a @ b.T / 0.2).numpy()
    idx = np.arange(len(logits))
    row = -(logits[idx, idx] - logsumexp(logits, axis=1)).mean()
    col = -(logits[idx, idx] - logsumexp(logits, axis=0)).mean()
    got = build("infonce", temperature=0.2, layout="cross")(z1, z2)
    assert float(got) == pytest.approx(0.5 * (row + col), abs=1e-10)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_infonce_fast_path_equals_generic_coupling(layout, make_pairs):
    z1, z2 = make_pairs(n=6)
    fast = build("infonce", layout=layout)(z1, z2)
    generic = OTContrastiveLoss(constraint="rows", layout=layout)(z1, z2)
    torch.testing.assert_close(fast, generic)
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    torch.testing.assert_close(
        build("infonce", layout=layout)(z1, z2, labels=y),
        OTContrastiveLoss(constraint="rows", layout=layout)(z1, z2, labels=y),
    )


@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_single_row_normalisation_of_iot_and_gca_is_infonce(layout, make_pairs):
    z1, z2 = make_pairs(n=6, seed=1)
    ref = build("infonce", layout=layout, temperature=0.3)(z1, z2)
    iot_row = build("iot", relax="row", layout=layout, temperature=0.3)(z1, z2)
    gca_row = build("gca-ince", constraint="rows", layout=layout, temperature=0.3)(z1, z2)
    torch.testing.assert_close(iot_row, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gca_row, ref, rtol=0, atol=1e-12)


def test_supervised_labels_match_supcon_reference(make_pairs):
    z1, z2 = make_pairs(n=6, seed=2)
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    t = 0.5
    sim = np_cos_all(z1, z2) / t
    yy = np.concatenate([y.numpy(), y.numpy()])
    ref = 0.0
    for i in range(12):
        others = [k for k in range(12) if k != i]
        lse = logsumexp(sim[i, others])
        positives = [k for k in others if yy[k] == yy[i]]
        ref += -np.mean([sim[i, k] - lse for k in positives])
    ref /= 12
    assert float(build("infonce", temperature=t)(z1, z2, labels=y)) == pytest.approx(ref, abs=1e-10)


def test_infonce_faithful_mode_reproduces_official_hs_ince(make_pairs):
    z1, z2 = make_pairs(n=6, seed=5)
    n = z1.shape[0]
    C = 1 - np.clip(np_cos_all(z1, z2), 1e-7, None)
    np.fill_diagonal(C, C.max())
    logp = -C / 0.5 - logsumexp(-C / 0.5, axis=1, keepdims=True)
    ref = -logp[np.arange(2 * n), np_pos(n)].mean()
    got = build("infonce", self_pair="max_cost", clip_min=1e-7)(z1, z2)
    assert float(got) == pytest.approx(ref, abs=1e-10)
