"""Runs written before the pipelines moved under otcl.pipelines still evaluate and resume.

``tests/pipelines/data/old-run`` was made by the code of main at 36ca6b6 (format-1 checkpoint;
digits, small CNN width 4, 2 epochs x 2 steps, deterministic)::

    otcl train --out old-run --no-progress --epochs 2 --batch-size 32 --deterministic \\
        --set train.max_steps_per_epoch=2 --set model.width=4 --set model.head_hidden=16 \\
        --set model.head_out=8 --set eval.linear_epochs=3 --set train.checkpoint_every=1

The expected numbers below are what that code printed for the same commands.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from otcl import cli
from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.files import read_jsonl

OLD_RUN = Path(__file__).resolve().parents[1] / "data" / "old-run"


@pytest.fixture
def old_run(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("yaml")
    dst = tmp_path / "old-run"
    shutil.copytree(OLD_RUN, dst)
    return dst


def test_old_run_evaluates(old_run, capsys):
    assert cli.main(["eval", str(old_run), "--no-progress"]) == 0
    res = json.loads((old_run / "eval.json").read_text())
    assert res["epoch"] == 2 and res["loss_name"] == "infonce" and res["linear_epochs"] == 3
    assert res["knn"] == pytest.approx(0.78444, abs=0.005)  # the old code's kNN of this run


def test_old_run_resumes_and_extends(old_run, capsys):
    argv = ["train", "--resume", str(old_run), "--epochs", "3", "--extend", "--no-progress"]
    assert cli.main(argv) == 0
    assert "infonce: 3 epochs" in capsys.readouterr().out
    st = load_checkpoint(old_run)
    assert st["epoch"] == 3 and st["global_step"] == 6 and st["done"]
    recs = read_jsonl(old_run / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    # the old code, resumed the same way, logged this epoch-3 loss
    assert recs[2]["loss"] == pytest.approx(3.932817220687866, rel=1e-4)
    assert cli.main(["eval", str(old_run), "--no-progress"]) == 0
    assert load_checkpoint(old_run)["format"] == 2  # its next checkpoint is in the safe format
