"""Every error line of the CLI through `otcl` itself: one line naming the cause, no traceback,
exit 2 for a bad request, 1 for a run that diverged or a machine that failed."""

from __future__ import annotations

import errno
import shutil

import pytest
import torch

from otcl import cli
from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint
from otcl.pipelines.engine.rundir import CHECKPOINT, RunLock


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch infonce run (model width 4)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("yaml")
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", "--out", str(out), "--no-progress", "--epochs", "2", "--batch-size", "32",
            "--set", "train.max_steps_per_epoch=2", "--set", "model.width=4"]  # fmt: skip
    assert cli.main(argv) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


def _one_line(capsys, code, argv, *expected):
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("otcl: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    return err


FAST = ["--no-progress", "--epochs", "2", "--set", "train.max_steps_per_epoch=2",
        "--set", "model.width=4"]  # fmt: skip


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--set", "train.log_every=0"], "train.log_every: expected an integer >= 1, got 0"),
        (["--batch-size", "5000"], "train.batch_size: 5000 is more than the 1347 training images"),
        (["--set", "optim.momentum=2"], "optim.momentum: expected a number in [0, 1), got 2.0"),
        (["--set", "optim.momentum=-1"], "optim.momentum: expected a number in [0, 1), got -1.0"),
        (["--set", "optim.weight_decay=-1"], "optim.weight_decay: expected a number >= 0"),
        (["--set", "data.crop_scale=[0.5]"], "data.crop_scale: expected 2 numbers, got [0.5]"),
        (["--set", "data.crop_scale=0.5,2"], "data.crop_scale: expected 0 < lo <= hi <= 1"),
        (["--set", "data.flip_p=2"], "data.flip_p: expected a probability"),
        (["--set", "eval.linear_epochs=0"], "eval.linear_epochs: expected an integer >= 1"),
        (["--dataset", "cifar10", "--data-dir", "missing.tar.gz"], "data_dir: 'missing.tar.gz' does not exist"),
        (["--extend"], "--extend: only with --resume"),
    ],
)  # fmt: skip
def test_bad_settings(tmp_path, capsys, flags, expected):
    _one_line(capsys, 2, ["train", "--out", str(tmp_path / "r"), *FAST, *flags], expected)


def test_out_is_a_file_or_cannot_be_created(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _one_line(capsys, 2, ["train", "--out", str(tmp_path / "file"), *FAST],
              "exists and is not a directory")  # fmt: skip
    _one_line(capsys, 2, ["train", "--out", "/proc/otcl-test/run", *FAST],
              "out: cannot write in '/proc/otcl-test/run'")  # fmt: skip
    _one_line(capsys, 2, ["compare", "--out", str(tmp_path / "file"), "--losses", "infonce"],
              "exists and is not a directory")  # fmt: skip


def test_out_checked_before_the_data_loads(tmp_path, capsys, monkeypatch):
    import otcl.pipelines.ssl.trainer as trainer

    def fail(*a, **k):
        raise AssertionError("the data was loaded before --out was checked")

    monkeypatch.setattr(trainer, "load_data", fail)
    monkeypatch.setattr(
        "tempfile.TemporaryFile",
        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")),
    )
    _one_line(capsys, 2, ["train", "--out", str(tmp_path / "ro"), *FAST],
              "cannot write in", "Read-only file system")  # fmt: skip


def test_second_writer(run_copy, capsys):
    held = RunLock(run_copy)
    try:
        _one_line(capsys, 2, ["train", "--resume", str(run_copy), "--no-progress"],
                  "is being written by another otcl process (pid ")  # fmt: skip
    finally:
        held.release()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--set", "model.width=8"], "model.width 4 -> 8"),
        (["--loss", "gca-uot"], "loss.name 'infonce' -> 'gca-uot'"),
        (["--loss-param", "temperature=0.2"], "loss.params.temperature"),
        (["--epochs", "1"], "set up for 2 epochs, got 1"),
        (["--epochs", "1", "--extend"], "--extend: expected --epochs larger than the run's 2"),
    ],
)
def test_resume_that_would_change_the_run(run_copy, capsys, flags, expected):
    before = (run_copy / CHECKPOINT).read_bytes()
    _one_line(capsys, 2, ["train", "--resume", str(run_copy), "--no-progress", *flags], expected)
    assert (run_copy / CHECKPOINT).read_bytes() == before


def test_diverging_run(tmp_path, capsys):
    _one_line(capsys, 1, ["train", "--out", str(tmp_path / "r"), *FAST, "--lr", "1e30"],
              "otcl: error: training diverged: ", "lower optim.lr")  # fmt: skip


def test_full_disk_mid_run(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and "payload" in obj:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "r"
    _one_line(capsys, 1, ["train", "--out", str(out), *FAST],
              f"cannot write {out / CHECKPOINT}: No space left on device")  # fmt: skip


def test_eval_of_nan_weights(run_copy, capsys):
    st = load_checkpoint(run_copy)
    for v in st["model"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    save_checkpoint(st, run_copy / CHECKPOINT)
    _one_line(capsys, 2, ["eval", str(run_copy), "--no-progress"], "holds NaN/inf weights")


@pytest.mark.parametrize("verb", ["train", "compare"])
def test_amp_none_runs(tmp_path, capsys, verb):
    """`--amp none` (listed in --help) failed in train and compare."""
    argv = [verb, "--out", str(tmp_path / "r"), "--amp", "none", *FAST]
    if verb == "compare":
        argv += ["--losses", "infonce", "--seeds", "1", "--no-plot"]
    assert cli.main(argv) == 0
    path = tmp_path / "r" / ("infonce/seed0" if verb == "compare" else "") / CHECKPOINT
    assert load_checkpoint(path)["config"]["train"]["amp"] == "none"
