"""What ``torchrun`` starts in the distributed tests (not a test module itself).

``python _torchrun_worker.py OUT JOB [JOB ...]``: every JOB is a JSON list of ``otcl``
arguments; each rank runs them one after the other with :func:`otcl.cli.main` and writes, for
every job, its exit status, standard output and standard error to ``OUT/rank<r>.json``.
A single job runs exactly as ``torchrun ... -m otcl.cli ARGS`` would (the command line joins and
leaves the process group); several jobs share one process group, joined here first.

``OTCL_TEST_SIGNAL="RANK:STEP"``: rank RANK sends SIGINT to its parent (its torchrun agent, which
forwards it to the processes it started) during global step STEP, and waits until the signal
arrived before finishing the step.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from contextlib import redirect_stderr, redirect_stdout


def _signal_hook(rank: int, step: int) -> None:
    from otcl.pipelines.engine.trainer import EpochTrainer

    orig = EpochTrainer.train_step

    def train_step(self, epoch, s):
        loss = orig(self, epoch, s)
        if self.rank == rank and self.global_step == step:
            os.kill(os.getppid(), signal.SIGINT)
            deadline = time.monotonic() + 20
            while self._signals.received is None and time.monotonic() < deadline:
                time.sleep(0.01)
        return loss

    EpochTrainer.train_step = train_step


def main() -> None:
    out, jobs = sys.argv[1], [json.loads(j) for j in sys.argv[2:]]
    if os.environ.get("OTCL_TEST_SIGNAL"):
        r, s = os.environ["OTCL_TEST_SIGNAL"].split(":")
        _signal_hook(int(r), int(s))
    from otcl.cli import main as otcl
    from otcl.pipelines.engine import distributed

    if len(jobs) > 1:
        distributed.init_from_env()
    results = []
    for argv in jobs:
        o, e = io.StringIO(), io.StringIO()
        with redirect_stdout(o), redirect_stderr(e):
            rc = otcl(argv)
        results.append({"argv": argv, "rc": rc, "stdout": o.getvalue(), "stderr": e.getvalue()})
    rank = os.environ["RANK"]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f, indent=1)
    distributed.shutdown()
    sys.exit(max(r["rc"] for r in results))  # as `otcl` would: torchrun sees a failure


if __name__ == "__main__":
    main()
