"""Missing-modality and noise evaluation: subsets, drop vs zero-fill, SNR, ridge probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otcl.pipelines.multimodal.models import build_model
from otcl.pipelines.multimodal.robustness import (
    add_noise,
    encode_all,
    evaluate_robustness,
    joint_of,
    predictor_probe,
    ridge_probe,
    subsets,
)


def _model(data):
    torch.manual_seed(0)
    shapes = {m: data.shape(m) for m in data.modalities}
    return build_model(shapes, data.kinds, hidden=8, latent=6, width=2)


def test_subsets_are_every_non_empty_combination():
    s = subsets(["t", "a", "v"])
    assert s == [("t",), ("a",), ("v",), ("t", "a"), ("t", "v"), ("a", "v"), ("t", "a", "v")]
    assert len(subsets("abcd")) == 15


def test_noise_has_the_requested_snr():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, 50, generator=g) * torch.linspace(0.5, 3, 400).view(-1, 1, 1)
    for snr in (0.0, 10.0, 20.0):
        noisy = add_noise(x, snr, torch.Generator().manual_seed(1))
        noise = noisy - x
        ratio = x.pow(2).mean((1, 2)) / noise.pow(2).mean((1, 2))  # per sample
        assert 10 * torch.log10(ratio).mean() == pytest.approx(snr, abs=0.2)
    with pytest.raises(ValueError, match="snr_db"):
        add_noise(x, "loud")


def test_ridge_probe_matches_sklearn():
    lm = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5)) * np.array([1, 2, 3, 0.5, 1])
    y = x @ rng.normal(size=5) + rng.normal(size=80) * 0.1
    pred = ridge_probe(torch.tensor(x), torch.tensor(y), alpha=2.0)
    xs = (x - x.mean(0)) / x.std(0, ddof=1)
    ref = lm.Ridge(alpha=2.0).fit(xs, y)
    xt = rng.normal(size=(10, 5))
    expect = ref.predict((xt - x.mean(0)) / x.std(0, ddof=1))
    np.testing.assert_allclose(pred(torch.tensor(xt)).numpy(), expect, rtol=1e-4, atol=1e-4)


def test_drop_vs_zero_fill(make_data):
    data = make_data()
    model = _model(data).eval()
    z = encode_all(model, dict(data.test))
    zero = encode_all(model, {m: torch.zeros_like(v) for m, v in data.test.items()})
    dropped = joint_of(model, z, ["vec"])
    torch.testing.assert_close(dropped, z["vec"])  # dropped: the joint of one is itself
    filled = joint_of(model, z, ["vec"], zero_latents=zero)
    expect = torch.nn.functional.normalize(z["vec"] + zero["seq"] + zero["img"], dim=1)
    torch.testing.assert_close(filled, expect)
    torch.testing.assert_close(joint_of(model, z, data.modalities), model(dict(data.test)))


def _nearest_class(train_joint, train_y):
    centers = torch.stack([train_joint[train_y == c].mean(0) for c in range(3)])
    return lambda f: (f @ centers.T).argmax(1)


@pytest.mark.parametrize("missing", ["drop", "zero"])
def test_evaluate_robustness_classification(make_data, missing):
    data = make_data()
    model = _model(data)
    res = evaluate_robustness(
        model,
        data,
        predictor_probe(_nearest_class, "classification"),
        missing=missing,
        snr_db=[5.0],
    )
    assert [r["name"] for r in res["subsets"]] == [
        "vec",
        "seq",
        "img",
        "vec+seq",
        "vec+img",
        "seq+img",
        "vec+seq+img",
    ]
    full = res["subsets"][-1]
    assert "retrieval" not in full and 0.0 <= full["metrics"]["accuracy"] <= 1.0
    # an independent computation of one subset's accuracy
    z = encode_all(model, dict(data.test))
    ztr = encode_all(model, dict(data.train))
    probe = _nearest_class(joint_of(model, ztr, data.modalities), data.train_y)
    if missing == "drop":
        acc = float((probe(joint_of(model, z, ["seq"])) == data.test_y).double().mean())
        assert res["subsets"][1]["metrics"]["accuracy"] == pytest.approx(acc)
    assert res["subsets"][0]["retrieval"].keys() == {"R@1", "R@5", "R@10", "medR", "meanR"}
    assert sorted(res["retrieval"]) == sorted(
        f"{a}->{b}" for a in data.modalities for b in data.modalities if a != b
    )
    assert [n["noisy"] for n in res["noise"]] == ["vec", "seq", "img", "all"]
    assert model.training  # the caller's mode is restored


def test_evaluate_robustness_regression_and_no_labels(make_data):
    data = make_data(task="regression")
    model = _model(data)
    res = evaluate_robustness(model, data, predictor_probe(ridge_probe, "regression"))
    assert set(res["subsets"][0]["metrics"]) == {"mae", "corr", "acc2", "f1"}
    res = evaluate_robustness(model, data, None)
    assert res["subsets"][0]["metrics"] == {} and res["noise"] == []
    with pytest.raises(ValueError, match="missing: expected one of drop, zero"):
        evaluate_robustness(model, data, None, missing="mean")
