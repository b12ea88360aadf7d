"""The run directory (otcl.pipelines.engine): checked before any data loads, one writer at a time,
no stale records, write failures that keep the last checkpoint, resumes that cannot change a run."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.rundir import CHECKPOINT, RunLock, prepare_run_dir
from otcl.pipelines.files import read_jsonl

from .test_run import Toy


def test_a_fresh_run_removes_the_records_of_one_that_saved_no_checkpoint(tmp_path, toy_config):
    out = tmp_path / "run"
    out.mkdir()
    stale = [{"epoch": e, "loss": 9.0} for e in range(1, 21)]  # a killed 20-epoch run
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    (out / "summary.json").write_text("{}")
    lines: list[str] = []
    Toy(toy_config(epochs=3), out, log=lines.append).fit()
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert all(r["loss"] != 9.0 for r in read_jsonl(out / "metrics.jsonl"))
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
    assert any("removing metrics.jsonl, summary.json" in line for line in lines)


def test_second_writer_is_refused_in_one_line(tmp_path, toy_config):
    out = prepare_run_dir(tmp_path / "run")
    held = RunLock(out)  # another process would open and flock the same file
    try:
        with pytest.raises(ValueError, match=r"being written by another otcl process \(pid \d+"):
            Toy(toy_config(), out)
        assert not (out / CHECKPOINT).exists()
    finally:
        held.release()
    tr = Toy(toy_config(epochs=1), out)  # free again
    with pytest.raises(ValueError, match="being written by another"):
        Toy(toy_config(epochs=1), tmp_path / "run")
    tr.fit()  # fit releases the lock when it returns
    Toy(toy_config(epochs=2), out, resume=True, extend=True).fit()


def test_the_lock_is_released_when_construction_fails(tmp_path, toy_config):
    cfg = toy_config()
    cfg.loss.name = "nope"
    with pytest.raises(ValueError, match="unknown loss"):
        Toy(cfg, tmp_path / "run")
    RunLock(tmp_path / "run").release()  # not left held


@pytest.mark.parametrize("case", ["file", "proc", "read-only"])
def test_bad_out_is_one_line_before_the_data_loads(tmp_path, toy_config, monkeypatch, case):
    built = []
    monkeypatch.setattr(Toy, "build", lambda self: built.append(1))
    if case == "file":
        out, match = tmp_path / "f", "exists and is not a directory"
        out.write_text("x")
    elif case == "proc":
        out, match = "/proc/otcl-test/run", "cannot write in '/proc/otcl-test/run'"
    else:
        out, match = tmp_path / "ro", "Read-only file system"

        def read_only(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    with pytest.raises(ValueError, match=match):
        Toy(toy_config(), out)
    assert not built


def test_full_disk_keeps_the_last_checkpoint_and_names_the_file(tmp_path, toy_config, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and "payload" in obj:  # the checkpoint file, not its payload
            calls.append(1)
            if len(calls) == 2:
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as info:
        Toy(toy_config(), out).fit()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out / CHECKPOINT)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out)["epoch"] == 1  # the epoch-1 checkpoint is intact
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize(
    "change, match",
    [
        ({"loss.name": "gca-ince"}, "loss.name 'infonce' -> 'gca-ince'"),
        ({"loss.params": {"temperature": 0.2}}, "loss.params.temperature"),
        ({"optim.lr": 0.1}, "optim.lr 0.5 -> 0.1"),
        ({"train.batch_size": 8}, "train.batch_size 16 -> 8"),
        ({"train.epochs": 2}, "set up for 3 epochs, got 2; to train it longer pass --extend"),
        ({"train.epochs": 5}, "set up for 3 epochs, got 5; to train it longer pass --extend"),
    ],
)
def test_resume_refuses_settings_that_change_the_run(tmp_path, toy_config, change, match):
    Toy(toy_config(), tmp_path / "run").fit()
    cfg = toy_config()
    for key, value in change.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    with pytest.raises(ValueError, match=match):
        Toy(cfg, tmp_path / "run", resume=True)


def test_resume_may_change_where_and_how_it_runs_and_extend_epochs(tmp_path, toy_config):
    Toy(toy_config(), tmp_path / "run").fit()
    cfg = toy_config(progress=True, log_every=2, checkpoint_every=5, threads=1, epochs=4)
    with pytest.raises(ValueError, match="--extend: expected --epochs larger"):
        Toy(toy_config(), tmp_path / "run", resume=True, extend=True)
    with pytest.raises(ValueError, match="--extend: only with --resume"):
        Toy(toy_config(), tmp_path / "other", extend=True)
    lines: list[str] = []
    tr = Toy(cfg, tmp_path / "run", resume=True, extend=True, log=lines.append)
    assert "extending the run from 3 to 4 epochs" in lines[0]
    tr.fit()
    assert load_checkpoint(tmp_path / "run")["epoch"] == 4


def test_bad_loop_settings_name_the_setting(tmp_path, toy_config):
    for key, value in (("log_every", 0), ("max_steps_per_epoch", 0), ("threads", 0)):
        with pytest.raises(ValueError, match=f"train.{key}: expected an integer >= 1"):
            Toy(toy_config(**{key: value}), tmp_path / "run")
