"""The learning-rate convention (per 128 samples) as config.yaml and --help state it."""

from __future__ import annotations

import pytest
import yaml

from otcl import cli
from otcl.pipelines.config import load_config
from otcl.pipelines.engine.optim import effective_lr
from otcl.pipelines.ssl.config import Config
from otcl.pipelines.ssl.trainer import SSLTrainer


def test_config_yaml_records_given_and_effective_lr(tmp_path, tiny_config):
    cfg = tiny_config(epochs=1, batch_size=48)
    cfg.optim.lr = 0.3
    cfg.optim.optimizer = "adam"
    tr = SSLTrainer(cfg, tmp_path / "run")
    runs_at = tr.optimizer.param_groups[0]["initial_lr"]  # before warm-up and schedule
    tr.fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.3
    assert (
        saved["derived"]["effective_lr"] == pytest.approx(runs_at) == pytest.approx(0.3 * 48 / 128)
    )
    assert saved["derived"]["batch_size"] == 48 and "128" in saved["derived"]["lr_rule"]
    # the file still reads back as a config (derived is not a setting)
    back = load_config(tmp_path / "run" / "config.yaml", Config)
    assert back.optim.lr == 0.3 and back.train.batch_size == 48


def test_dmm_defaults_are_written_resolved(tmp_path, tiny_config):
    cfg = tiny_config(epochs=1)
    cfg.loss.name, cfg.loss.params = "dmm", {"base": "infonce"}
    tr = SSLTrainer(cfg, tmp_path / "run")
    tr.fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    dmm = saved["derived"]["dmm"]
    assert None not in dmm.values()
    assert (dmm["margin"], dmm["warmup"]) == (tr.loss_fn.margin, tr.loss_fn.warmup)


def test_effective_lr_rule():
    from otcl.pipelines.config import OptimConfig

    assert effective_lr(OptimConfig(lr=1e-3), 512) == pytest.approx(4e-3)


@pytest.mark.parametrize(
    "verb", [["train"], ["recsys", "train"], ["multimodal", "train"], ["domains", "train"]]
)
def test_every_train_verb_states_the_lr_rule(verb, capsys):
    with pytest.raises(SystemExit):
        cli.main([*verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "learning rate per 128 samples" in text and "LR x batch-size / 128" in text
