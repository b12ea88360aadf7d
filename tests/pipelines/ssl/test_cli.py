"""`otcl train` / `otcl eval` end to end, user errors as one line, Ctrl-C with the resume command."""

from __future__ import annotations

import json

import pytest

from otcl import cli
from otcl.pipelines.config import load_config
from otcl.pipelines.run import load_checkpoint
from otcl.pipelines.ssl.config import Config
from otcl.pipelines.ssl.trainer import SSLTrainer


def test_cli_train_resume_eval(tmp_path, capsys, tiny_args):
    out = str(tmp_path / "run")
    argv = ["train", "--loss", "gca-uot", "--loss-param", "rho=0.5", "--out", out, *tiny_args]
    assert cli.main(argv) == 0
    assert "gca-uot: 2 epochs" in capsys.readouterr().out
    cfg = load_config(tmp_path / "run" / "config.yaml", Config)
    assert cfg.loss.params == {"rho": 0.5} and cfg.train.epochs == 2
    # extend the finished run by one epoch
    assert cli.main(["train", "--resume", out, "--epochs", "3", "--no-progress"]) == 0
    assert load_checkpoint(out)["epoch"] == 3
    assert cli.main(["eval", out, "--no-progress", "--linear-epochs", "2"]) == 0
    assert "linear probe" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["linear_epochs"] == 2


def test_cli_train_with_eval_flag(tmp_path, capsys, tiny_args):
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--eval", *tiny_args]) == 0
    assert "eval: kNN" in capsys.readouterr().out and (out / "eval.json").is_file()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--loss", "nope"], "unknown loss 'nope'; expected one of"),
        (["train", "--loss-param", "rhoo=1", "--loss", "gca-uot"], "unknown parameter"),
        (["train", "--loss-param", "rho"], "--loss-param: expected KEY=VALUE"),
        (["train", "--loss-param", "gca-uot:rho=1"], "LOSS:KEY is for `otcl compare`"),
        (["train", "--set", "train.epochz=1"], "unknown setting 'train.epochz'"),
        (["train", "--dataset", "mnist"], "data.dataset"),
        (["train", "--resume", "/nonexistent/run"], "run: expected a run directory"),
        (["eval", "/nonexistent/run"], "run: expected a run directory"),
        (["compare", "--losses", "infonce,nope"], "unknown loss"),
        (["compare", "--loss-param", "gca-uot:rhoo=1", "--losses", "gca-uot"], "rhoo"),
        (["train", "--config", "/nonexistent.yaml"], "config"),
    ],
)
def test_cli_user_errors_are_one_line(argv, match, capsys, tmp_path):
    if argv[0] != "eval" and "--resume" not in argv:
        argv = [*argv, "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("otcl: error: ") and match in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cli_resume_refuses_config_and_other_out(tmp_path, capsys, tiny_args):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--out", out, *tiny_args]) == 0
    capsys.readouterr()
    (tmp_path / "c.yaml").write_text("train: {epochs: 3}\n")
    assert cli.main(["train", "--resume", out, "--config", str(tmp_path / "c.yaml")]) == 2
    assert "--config: not allowed with --resume" in capsys.readouterr().err
    assert cli.main(["train", "--resume", out, "--out", str(tmp_path / "x")]) == 2
    assert "--out: not allowed with --resume" in capsys.readouterr().err


def test_cli_ctrl_c_saves_and_says_how_to_resume(tmp_path, capsys, monkeypatch, tiny_args):
    orig = SSLTrainer.train_step

    def interrupt(self, epoch, step):
        if self.global_step == 1:
            raise KeyboardInterrupt
        return orig(self, epoch, step)

    monkeypatch.setattr(SSLTrainer, "train_step", interrupt)
    out = str(tmp_path / "run")
    assert cli.main(["train", "--out", out, *tiny_args]) == 130
    err = capsys.readouterr().err
    assert f"to continue: otcl train --resume {out}" in err
    assert load_checkpoint(out)["global_step"] == 1
    monkeypatch.setattr(SSLTrainer, "train_step", orig)
    assert cli.main(["train", "--resume", out, "--no-progress"]) == 0
    assert load_checkpoint(out)["done"]
