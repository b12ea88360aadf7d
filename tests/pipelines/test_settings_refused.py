"""Settings that a pipeline would clamp or ignore are refused in one line, as the
reliability notes promise, in every pipeline: a batch larger than the data, a loss layout the
two-tower cannot use, several negatives for the mf baseline, a boolean loss parameter that is
not a boolean."""

from __future__ import annotations

import numpy as np
import pytest

from otcl.cli import main

from .conftest import write_ml100k


def _npz(path, n=40):
    rng = np.random.default_rng(0)
    np.savez(path, video=rng.normal(size=(n, 3)), text=rng.normal(size=(n, 4)),
             labels=np.arange(n) % 2)  # fmt: skip
    return path


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--batch-size", "100000000"], "train.batch_size: 100000000 is more than the"),
        (["--model", "two-tower", "--loss-param", "layout=simclr"], "layout: the two-tower"),
        (["--model", "mf", "--negatives", "5"], "model.negatives: the mf baseline"),
        (["--model", "two-tower", "--loss-param", "symmetric=maybe"], "symmetric"),
    ],
)
def test_recsys_train_refuses(tmp_path, capsys, extra, match):
    ml = write_ml100k(tmp_path / "ml")
    out = tmp_path / "run"
    argv = ["recsys", "train", "--data-dir", str(ml), "--out", str(out), "--no-progress"]
    assert main(argv + ["--epochs", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("otcl: error: ") and match in err, err
    assert not (out / "checkpoint.pt").exists()


def test_multimodal_train_refuses_a_batch_larger_than_the_data(tmp_path, capsys):
    f = _npz(tmp_path / "f.npz")
    argv = ["multimodal", "train", "--dataset", "npz", "--data-dir", str(f), "--no-progress",
            "--out", str(tmp_path / "run"), "--batch-size", "100000"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train.batch_size: 100000 is more than the" in err and err.count("\n") == 1, err


def test_a_preset_batch_larger_than_small_data_is_fitted_not_refused(tmp_path, capsys):
    """The preset's batch (512 for the two-tower) on 480 training pairs: the data decides."""
    ml = write_ml100k(tmp_path / "ml")
    argv = ["recsys", "train", "--data-dir", str(ml), "--out", str(tmp_path / "run"),
            "--no-progress", "--epochs", "1", "--model", "two-tower", "--dim", "8",
            "--set", "eval.ks=[1,5]", "--set", "model.features="]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, command",
    [(["recsys", "train"], "otcl recsys compare"), (["train"], "otcl compare"),
     (["multimodal", "train"], "otcl multimodal compare")],
)  # fmt: skip
def test_per_loss_parameters_outside_compare_name_the_pipelines_compare(
    tmp_path, capsys, argv, command
):
    out = str(tmp_path / "run")
    assert main([*argv, "--out", out, "--loss-param", "infonce:temperature=0.1"]) == 2
    err = capsys.readouterr().err
    assert f"LOSS:KEY is for `{command}`, got 'infonce:temperature=0.1'" in err, err


def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_to_rerun(tmp_path, capsys):
    ml = write_ml100k(tmp_path / "ml")
    run = tmp_path / "run"
    argv = ["recsys", "train", "--data-dir", str(ml), "--out", str(run), "--no-progress",
            "--epochs", "1", "--dim", "8", "--set", "eval.ks=[1,5]"]  # fmt: skip
    assert main(argv) == 0
    (run / "checkpoint.pt").unlink()  # as if killed before its first checkpoint
    capsys.readouterr()
    assert main(["recsys", "train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "without --resume" in err, err
    assert main(argv) == 0  # the same command without --resume starts it afresh
