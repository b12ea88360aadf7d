"""A full disk while a checkpoint is written: one line, ``otcl: error: cannot write
<file>: No space left on device`` (exit 1), not torch's ``unexpected pos`` error, and no
half-written checkpoint. A real full disk: a 160 KiB tmpfs (skipped where it cannot be
mounted, e.g. without root)."""

from __future__ import annotations

import subprocess

import pytest

from otcl.cli import main

from .conftest import write_ml100k


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)],
                         capture_output=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("pipeline", ["ssl", "recsys"])
def test_a_full_disk_is_one_line(tmp_path, small_disk, capsys, pipeline):
    run = small_disk / "run"
    if pipeline == "recsys":
        ml = write_ml100k(tmp_path / "ml")
        argv = ["recsys", "train", "--data-dir", str(ml), "--dim", "512"]
    else:
        argv = ["train", "--batch-size", "32", "--set", "train.max_steps_per_epoch=1"]
    argv += ["--out", str(run), "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"otcl: error: cannot write {run / 'checkpoint.pt'}: No space left on device\n"
    assert not (run / "checkpoint.pt").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
