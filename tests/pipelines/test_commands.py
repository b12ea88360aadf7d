"""The command-line pieces every pipeline shares (otcl.pipelines.commands): run_train with a
pipeline's own validation, the compare options and their per-loss parameters."""

from __future__ import annotations

import argparse

import pytest

from otcl.cli import build_parser
from otcl.pipelines.commands import (
    add_run_options,
    add_train_options,
    name_list,
    run_train,
)
from otcl.pipelines.config import RunConfig

from .test_compare import Toy

pytest.importorskip("yaml")


def _parser(compare: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_run_options(p, single_loss=not compare)
    add_train_options(p, "runs/x")
    return p


TOY = ["--epochs", "1", "--batch-size", "16", "--lr", "0.5", "--device", "cpu", "--no-progress"]


def test_run_train_takes_a_pipelines_own_validation(tmp_path):
    """A pipeline whose losses are not otcl losses (recsys's CML triplet, BPR) trains through
    run_train with its own check, which runs before the run directory is touched."""
    out = tmp_path / "run"
    args = _parser().parse_args([*TOY, "--loss", "triplet", "--loss-param", "margin=1", "--out",
                                 str(out)])  # fmt: skip
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):  # the default: otcl losses
        run_train(args, RunConfig, Toy)
    seen = []

    def refuse(cfg):
        seen.append((cfg.loss.name, dict(cfg.loss.params)))
        raise ValueError("loss: triplet needs negatives")

    with pytest.raises(ValueError, match="triplet needs negatives"):
        run_train(args, RunConfig, Toy, validate=refuse)
    assert seen == [("triplet", {"margin": 1})] and not out.exists()
    args = _parser().parse_args([*TOY, "--out", str(out)])
    trainer, summary = run_train(args, RunConfig, Toy, validate=seen.append)
    assert summary["epochs"] == 1 and trainer.out == out and len(seen) == 2
    again = _parser().parse_args(["--resume", str(out), "--epochs", "2", "--no-progress"])
    again.extend = True
    trainer, summary = run_train(again, RunConfig, Toy, validate=seen.append)
    assert summary["epochs"] == 2 and seen[-1].train.epochs == 2  # the resumed run, checked


def test_name_list():
    assert name_list(" a, b,,c ", ("x",)) == ["a", "b", "c"]
    assert name_list(None, ("x", "y")) == ["x", "y"] and name_list("", ("x",)) == ["x"]


def test_run_train_prepares_a_new_run_only(tmp_path):
    """``prepare`` (train --dmm) shapes a new run's config, never a resumed one's."""
    out = tmp_path / "run"
    args = _parser().parse_args([*TOY, "--out", str(out)])
    seen = []

    def prepare(cfg):
        seen.append(cfg.loss.name)
        cfg.loss.params["temperature"] = 0.3
        return cfg

    trainer, _ = run_train(args, RunConfig, Toy, validate=lambda c: None, prepare=prepare)
    assert seen == ["infonce"] and trainer.cfg.loss.params == {"temperature": 0.3}
    again = _parser().parse_args(["--resume", str(out), "--no-progress"])
    run_train(again, RunConfig, Toy, validate=lambda c: None, prepare=prepare)
    assert seen == ["infonce"]


@pytest.mark.parametrize(
    "argv, module, name",
    [
        (["compare"], "otcl.pipelines.ssl.compare", "DEFAULT_LOSSES"),
        (["multimodal", "compare"], "otcl.pipelines.multimodal.compare", "DEFAULT_LOSSES"),
        (["recsys", "compare"], "otcl.pipelines.recsys.compare", "DEFAULT_METHODS"),
    ],
)
def test_compare_help_states_the_defaults_compare_uses(argv, module, name, capsys, monkeypatch):
    """The help is written without importing the compare modules (the command line starts
    faster); it must still name their defaults."""
    import importlib

    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside the list
    default = ",".join(getattr(importlib.import_module(module), name))
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    assert f"default: {default}" in capsys.readouterr().out
