"""The image pipeline's Python API: train -> Run, Run.load, the encoder, and a backbone and a
dataset of the user's plugged in (otcl.pipelines.ssl.train, otcl.pipelines.runs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otcl.pipelines import Run, load_encoder, ssl
from otcl.pipelines.sources.images import ImageData

pytest.importorskip("yaml")


def _config() -> ssl.Config:
    cfg = ssl.Config()
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device = 1, 32, "cpu"
    cfg.train.progress, cfg.train.max_steps_per_epoch = False, 3
    cfg.eval.knn_k = 5
    return cfg


def _my_images(n: int = 96) -> ImageData:
    """Two classes of 1 x 12 x 12 uint8 images: dark and bright, with noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = 60 + 120 * y[:, None, None, None] + 40 * torch.rand(n, 1, 12, 12, generator=g)
    x = x.clamp(0, 255).to(torch.uint8)
    half = n // 2
    return ImageData("mine", x[:half], y[:half], x[half:], y[half:], ["dark", "bright"],
                     (0.5,), (0.25,))  # fmt: skip


def _my_backbone() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_train_returns_a_run_and_its_encoder(tmp_path):
    pytest.importorskip("sklearn")
    run = ssl.train(_config(), out=tmp_path / "run")
    assert isinstance(run, Run) and run.finished and run.spec.name == "ssl"
    assert run.method == "infonce" and run.summary["epochs"] == 1
    enc = load_encoder(tmp_path / "run")  # the directory alone: the backbone, eval mode
    assert not enc.training and enc.feature_dim == 4 * 16  # the digits preset's small CNN
    again = Run.load(tmp_path / "run")
    assert again.config == run.config
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(enc(x), again.encoder()(x))


def test_a_backbone_and_dataset_of_your_own(tmp_path):
    data = _my_images()
    cfg = _config()
    run = ssl.train(cfg, model=_my_backbone(), data=data, out=tmp_path / "mine")
    assert run.config.model.arch == "custom"
    # trained: the weights moved from the initial ones, and the run reads back with them
    enc = run.encoder(model=_my_backbone(), data=data)
    assert not torch.equal(enc[0].weight, _my_backbone()[0].weight)
    st = run.state["model"]
    assert torch.equal(enc[0].weight, st["backbone.0.weight"])
    report = run.evaluate(data=data, backbone=_my_backbone(), progress=False, linear_epochs=2)
    assert 0 <= report["knn"] <= 1 and report["dataset"] == "digits"  # the preset's name
    with pytest.raises(ValueError, match="backbone of your own; pass it again"):
        Run.load(tmp_path / "mine").encoder(data=data)
