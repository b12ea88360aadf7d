"""How ``otcl`` ends under torchrun (2 gloo processes on CPU).

**Teardown**: ten launches of the smallest ``otcl train`` (2 gloo processes on
CPU, gca-uot over the global batch, one step) all end with status 0 and no abort.

A rank used to abort now and then after the run had finished and written its outputs
("terminate called without an active exception", torchrun exit status 1), because a rank tore
its process group down while the other still talked to it; the command line now meets at a
barrier first (:func:`otcl.pipelines.engine.distributed.shutdown`). The abort was intermittent
(1 to 2 launches in 8), hence ten launches.

**A rank killed** (``kill -9``) during training: the surviving rank ends with one line naming
the rank lost, the last checkpoint and the torchrun command that resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALLEST = [
    "train", "--loss", "gca-uot", "--epochs", "1", "--batch-size", "32", "--no-progress",
    "--device", "cpu", "--set", "train.max_steps_per_epoch=1", "--set", "model.width=4",
    "--set", "model.norm=group", "--set", "model.head_bn=false",
]  # fmt: skip


LAUNCHER = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "-m", "otcl.cli"]  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _rank_pid(agent: int, rank: int) -> int | None:
    """The process of ``rank`` among the children of the torchrun agent ``agent``."""
    try:
        kids = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    except OSError:
        return None
    for k in kids:
        try:
            env = Path(f"/proc/{k}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(k)
    return None


def test_ten_torchrun_launches_end_cleanly(tmp_path):
    pytest.importorskip("sklearn")
    env, launcher = _env(), LAUNCHER
    for i in range(10):
        out = tmp_path / f"run{i}"
        res = subprocess.run([*launcher, *SMALLEST, "--out", str(out)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        said = res.stdout + res.stderr
        assert res.returncode == 0 and "terminate called" not in said, f"launch {i}:\n{said}"
        assert (out / "summary.json").exists()


def test_a_rank_killed_is_one_line_naming_it_and_the_last_checkpoint(tmp_path):
    pytest.importorskip("sklearn")
    out, log = tmp_path / "run", tmp_path / "torchrun.log"
    argv = [*LAUNCHER, *SMALLEST, "--out", str(out)]
    argv[argv.index("--epochs") + 1] = "100000"
    argv += ["--set", "train.checkpoint_every=1"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, env=_env(), cwd=tmp_path, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists() or _rank_pid(proc.pid, 1) is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)  # type: ignore[arg-type]
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = log.read_text(errors="replace")
    lines = [line for line in said.splitlines() if line.startswith("otcl:")]
    assert rc != 0 and len(lines) == 1, said
    assert lines[0].startswith("otcl: error: lost rank 1 of torchrun (its process died"), said
    assert f"the last checkpoint is {out / 'checkpoint.pt'}" in lines[0], said
    resume = f"torchrun --nproc-per-node 2 -m otcl.cli train --resume {out}"
    assert lines[0].endswith(f"; to continue: {resume}"), said
