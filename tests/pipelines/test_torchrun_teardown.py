"""Teardown under torchrun: ten launches of the smallest ``otcl train`` (2 gloo processes on
CPU, gca-uot over the global batch, one step) all end with status 0 and no abort.

A rank used to abort now and then after the run had finished and written its outputs
("terminate called without an active exception", torchrun exit status 1), because a rank tore
its process group down while the other still talked to it; the command line now meets at a
barrier first (:func:`otcl.pipelines.engine.distributed.shutdown`). The abort was intermittent
(1 to 2 launches in 8), hence ten launches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALLEST = [
    "train", "--loss", "gca-uot", "--epochs", "1", "--batch-size", "32", "--no-progress",
    "--device", "cpu", "--set", "train.max_steps_per_epoch=1", "--set", "model.width=4",
    "--set", "model.norm=group", "--set", "model.head_bn=false",
]  # fmt: skip


def test_ten_torchrun_launches_end_cleanly(tmp_path):
    pytest.importorskip("sklearn")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "otcl.cli"]  # fmt: skip
    for i in range(10):
        out = tmp_path / f"run{i}"
        res = subprocess.run([*launcher, *SMALLEST, "--out", str(out)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        said = res.stdout + res.stderr
        assert res.returncode == 0 and "terminate called" not in said, f"launch {i}:\n{said}"
        assert (out / "summary.json").exists()
