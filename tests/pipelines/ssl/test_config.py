"""The image pipeline's config: presets and the shipped config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from otcl.pipelines.config import load_config
from otcl.pipelines.ssl.config import Config, resolve

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_presets_fill_only_unset_fields():
    cfg = Config()
    cfg.data.dataset = "cifar10"
    cfg.train.epochs = 5
    r = resolve(cfg)
    assert r.train.epochs == 5 and r.train.batch_size == 512 and r.model.arch == "resnet18"
    assert r.eval.knn_k == 200 and r.data.jitter == (0.4, 0.4, 0.4, 0.1)
    assert cfg.train.batch_size is None  # resolve returns a new config
    assert resolve(Config()).eval.knn_k == 20  # digits
    cfg.data.dataset = "mnist"
    with pytest.raises(ValueError, match="data.dataset"):
        resolve(cfg)


def test_shipped_configs_load_and_resolve():
    pytest.importorskip("yaml")
    files = sorted(CONFIGS.glob("*.*"))
    assert len(files) >= 3
    for f in files:
        cfg = resolve(load_config(f, Config))
        assert cfg.train.epochs and cfg.train.batch_size and cfg.model.arch, f
    digits = resolve(load_config(CONFIGS / "digits.toml", Config))
    assert digits.to_dict() == resolve(Config()).to_dict()  # the file documents the default


def test_image_train_section_keeps_channels_last():
    cfg = Config.from_dict({"train": {"channels_last": False, "epochs": 2}})
    assert cfg.train.channels_last is False and cfg.train.epochs == 2
