"""Encoders, fusion over the present modalities, and the training objectives with DMM."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from otcl.losses import build
from otcl.losses.dmm import vse_hinge
from otcl.pipelines.multimodal.models import SequenceEncoder, build_model
from otcl.pipelines.multimodal.objectives import MultimodalObjective


def _model(data, **kw):
    torch.manual_seed(0)
    shapes = {m: data.shape(m) for m in data.modalities}
    return build_model(shapes, data.kinds, hidden=8, latent=6, width=2, **kw)


def _batch(data, n=8):
    return {m: v[:n] for m, v in data.train.items()}


@pytest.mark.parametrize("fusion", ["mean", "attention"])
def test_joint_is_built_from_the_present_modalities_only(make_data, fusion):
    data = make_data()
    model = _model(data, fusion=fusion).eval()
    x = _batch(data)
    z = model.encode(x)
    assert list(z) == ["vec", "seq", "img"] and all(v.shape == (8, 6) for v in z.values())
    torch.testing.assert_close(z["vec"].norm(dim=1), torch.ones(8))
    joint = model(x)
    if fusion == "mean":
        torch.testing.assert_close(joint, F.normalize(sum(z.values()) / 3, dim=1))
    # a dropped modality changes nothing else: the latents of the others are the same
    part = model.encode({"vec": x["vec"], "seq": None, "img": x["img"]})
    assert list(part) == ["vec", "img"]
    torch.testing.assert_close(part["img"], z["img"])
    # one present modality: the joint is its own latent, whatever the fusion
    torch.testing.assert_close(model({"seq": x["seq"]}), z["seq"])


def test_model_input_errors(make_data):
    data = make_data()
    model = _model(data)
    x = _batch(data)
    with pytest.raises(ValueError, match="every modality is missing"):
        model({"vec": None})
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        model({**x, "audio": x["vec"]})
    with pytest.raises(ValueError, match="different batch sizes"):
        model({"vec": x["vec"], "seq": x["seq"][:3]})
    with pytest.raises(ValueError, match="fusion: expected one of mean, attention"):
        _model(data, fusion="max")
    with pytest.raises(ValueError, match="seq_arch"):
        SequenceEncoder(3, 4, 4, arch="lstm")


def test_conv_sequence_encoder_is_time_shift_tolerant_shape():
    enc = SequenceEncoder(3, 5, 4, arch="conv")
    assert enc(torch.randn(2, 7, 3)).shape == (2, 4)


def test_objectives_are_sums_of_the_loss_over_their_pairs(make_data):
    data = make_data()
    model = _model(data)
    x = _batch(data)
    loss = build("gca-uot", layout="cross")
    z = model.encode(x)
    joint = model.fuse(z)
    pairwise = sum(loss(z[a], z[b]) for a, b in combinations(z, 2))
    to_joint = sum(loss(v, joint) for v in z.values())
    torch.testing.assert_close(MultimodalObjective(loss, "pairwise")(model, x), pairwise)
    torch.testing.assert_close(MultimodalObjective(loss, "joint")(model, x), to_joint)
    torch.testing.assert_close(MultimodalObjective(loss, "both")(model, x), pairwise + to_joint)


def test_missing_modality_at_training_time_is_an_error(make_data):
    data = make_data()
    model = _model(data)
    x = _batch(data)
    obj = MultimodalObjective(build("infonce", layout="cross"))
    with pytest.raises(ValueError, match="modality 'seq' is missing at training time"):
        obj(model, {"vec": x["vec"], "img": x["img"]})
    with pytest.raises(ValueError, match="objective: expected one of"):
        MultimodalObjective(build("infonce"), "triplets")


def test_dmm_with_lambda_one_is_the_clean_hinge_to_the_joint(make_data):
    """lam = 1: the mixed inputs are the inputs, so the DMM term is GMC's hinge on clean latents."""
    data = make_data()
    model = _model(data).eval()  # eval: BatchNorm of the image CNN uses running stats both times
    x = _batch(data)
    dmm = build("dmm", base="infonce", layout="cross", lam_range=(1.0, 1.0), warmup=0, margin=0.2)
    out = MultimodalObjective(dmm, "joint", dmm_mix="input").terms(model, x)
    z = model.encode(x)
    joint = model.fuse(z)
    expect = sum(vse_hinge(v, joint, 0.2) for v in z.values()) / 3
    torch.testing.assert_close(out["dmm"], expect)
    torch.testing.assert_close(out["align"], sum(dmm.base(v, joint) for v in z.values()))
    # pairwise: anchors a != b toward each positive z_b, averaged over positives
    out = MultimodalObjective(dmm, "pairwise", dmm_mix="input").terms(model, x)
    per_b = [sum(vse_hinge(z[a], z[b], 0.2) for a in z if a != b) / 2 for b in z]
    torch.testing.assert_close(out["dmm"], sum(per_b) / 3)


def test_dmm_mixing_mixes_each_modality_alone_with_gradients(make_data):
    data = make_data()
    model = _model(data)
    x = _batch(data)
    dmm = build("dmm", base="infonce", layout="cross", lam_range=(0.6, 0.6), warmup=0, seed=0)
    out = MultimodalObjective(dmm, "joint", dmm_mix="input").terms(model, x)
    # the term equals the hinge of the re-encoded, per-modality mixed inputs (reversed partner)
    z = model.encode(x)
    joint = model.fuse(z)
    zt = model.encode({m: 0.6 * v + 0.4 * v.flip(0) for m, v in x.items()})
    expect = sum(vse_hinge(v, joint, 0.12) for v in zt.values()) / 3
    torch.testing.assert_close(out["dmm"], expect)
    model.zero_grad()
    out["dmm"].backward()
    assert all(p.grad is not None for p in model.encoders["img"].parameters() if p.requires_grad)
    emb = MultimodalObjective(dmm, "joint", dmm_mix="embedding").terms(model, x)
    z = model.encode(x)
    joint = model.fuse(z)
    mixed = {m: 0.6 * v + 0.4 * v.flip(0) for m, v in z.items()}
    expect = sum(vse_hinge(v, joint, 0.12) for v in mixed.values()) / 3
    torch.testing.assert_close(emb["dmm"], expect)
    # the ramp: weight e / (e + e0) at epoch e, nothing (and no extra pass) at epoch 0
    ramp = build("dmm", base="infonce", layout="cross", warmup=12)
    assert "dmm" not in MultimodalObjective(ramp).terms(model, x)
    ramp.set_epoch(12)
    assert "dmm" in MultimodalObjective(ramp).terms(model, x)
    with pytest.raises(ValueError, match="both_views: does not apply"):
        MultimodalObjective(build("dmm", base="infonce", both_views=True))
