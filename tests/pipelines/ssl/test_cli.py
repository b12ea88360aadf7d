"""`otcl train` / `otcl eval` end to end, user errors as one line, Ctrl-C with the resume command."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from otcl import cli
from otcl.pipelines.config import load_config
from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.files import read_jsonl
from otcl.pipelines.ssl.config import Config
from otcl.pipelines.ssl.trainer import SSLTrainer


def test_cli_train_resume_eval(tmp_path, capsys, tiny_args):
    out = str(tmp_path / "run")
    argv = ["train", "--loss", "gca-uot", "--loss-param", "rho=0.5", "--out", out, *tiny_args]
    assert cli.main(argv) == 0
    assert "gca-uot: 2 epochs" in capsys.readouterr().out
    cfg = load_config(tmp_path / "run" / "config.yaml", Config)
    assert cfg.loss.params == {"rho": 0.5} and cfg.train.epochs == 2
    # extend the finished run by one epoch (explicitly: --epochs alone is refused)
    assert cli.main(["train", "--resume", out, "--epochs", "3"]) == 2
    assert "pass --extend" in capsys.readouterr().err
    assert cli.main(["train", "--resume", out, "--epochs", "3", "--extend", "--no-progress"]) == 0
    assert "extending the run from 2 to 3 epochs" in capsys.readouterr().err
    assert load_config(tmp_path / "run" / "config.yaml", Config).train.epochs == 3
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_saves_and_says_how_to_resume(tmp_path, capsys, monkeypatch, tiny_args, signum):
    """Ctrl-C, or SIGTERM (what a cluster sends before it kills a job), during step 2."""
    orig = SSLTrainer.train_step

    def interrupt(self, epoch, step):
        if self.global_step == 1:
            os.kill(os.getpid(), signum)
        return orig(self, epoch, step)

    monkeypatch.setattr(SSLTrainer, "train_step", interrupt)
    out = str(tmp_path / "run")
    assert cli.main(["train", "--out", out, *tiny_args]) == 128 + signum  # 130 / 143
    err = capsys.readouterr().err
    name = signal.Signals(signum).name
    # numbered as metrics.jsonl numbers epochs: epoch 1 is finished
    assert err.startswith(f"otcl: interrupted by {name} at the end of epoch 1;")
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert f"to continue: otcl train --resume {out}" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert load_checkpoint(out)["global_step"] == 2
    monkeypatch.setattr(SSLTrainer, "train_step", orig)
    assert cli.main(["train", "--resume", out, "--no-progress"]) == 0
    assert load_checkpoint(out)["done"]


def test_cli_sigterm_outside_training_is_one_line(tmp_path, capsys, monkeypatch, tiny_args):
    import otcl.pipelines.ssl.trainer as trainer_module

    def terminated_while_loading(cfg, progress=True):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs here
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(trainer_module, "load_data", terminated_while_loading)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["train", "--out", str(tmp_path / "run"), *tiny_args]) == 143
    assert capsys.readouterr().err == "otcl: terminated\n"
    assert signal.getsignal(signal.SIGTERM) is before
