"""Signals and deaths during a comparison with worker processes (``--jobs 2``), through the CLI.

For every compare verb (image, recsys, multimodal) and every way a signal arrives -- the whole
process group (Ctrl-C at a terminal), the main process alone (``kill PID``, as systemd or a batch
scheduler sends it), one worker alone -- the comparison stops every worker at a checkpoint and
exits 130 or 143 within 30 s, and the same command then resumes both runs. A worker killed with
SIGKILL ends the comparison with one line naming the run and the signal; a SIGINT to the group
while the parent ignores SIGINT (``cmd &`` in a script) leaves the comparison running to its
results.

Each comparison trains two runs of a few thousand one-step epochs (a checkpoint after every
epoch), so it is still training when the signal comes; the tests wait on conditions (the
checkpoints exist, the lines were printed), never on fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import write_ml100k

LONG = [
    "--seeds", "2", "--jobs", "2", "--no-plot", "--no-progress", "--device", "cpu",
    "--set", "train.max_steps_per_epoch=1", "--set", "train.checkpoint_every=1",
]  # fmt: skip
START = 180.0  # seconds to start (three interpreters importing torch on a loaded machine)
STOP = 30.0  # seconds from the signal to the exit


def _npz(path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    base = rng.normal(size=(n, 3)) + 2 * y[:, None]
    np.savez(path, video=base @ rng.normal(size=(3, 5)), text=base @ rng.normal(size=(3, 8)),
             labels=y)  # fmt: skip
    return path


def _argv(pipeline: str, tmp: Path, out: Path, epochs: int = 5000) -> tuple[list[str], str]:
    """The compare command of ``pipeline`` into ``out``, and its one method."""
    run = ["--epochs", str(epochs), "--out", str(out), *LONG]
    if pipeline == "image":
        tiny = ["--batch-size", "32", "--set", "model.width=4"]
        return ["compare", "--losses", "infonce", *tiny, *run], "infonce"
    if pipeline == "recsys":
        ml = write_ml100k(tmp / "ml")
        # no early stopping: the runs must still be training when the signal arrives
        tiny = ["--data-dir", str(ml), "--dim", "8", "--set", "eval.ks=[1,5]"]
        tiny += ["--set", "eval.patience=none"]
        return ["recsys", "compare", "--methods", "cml", *tiny, *run], "cml"
    f = _npz(tmp / "f.npz")
    tiny = ["--dataset", "npz", "--data-dir", str(f), "--batch-size", "8"]
    tiny += ["--set", "model.hidden=8", "--set", "model.latent=4"]
    return ["multimodal", "compare", "--methods", "infonce", *tiny, *run], "infonce"


def _start(argv: list[str], log: Path, ignore_sigint: bool = False) -> subprocess.Popen:
    """``otcl ARGV`` in a session of its own (its own process group), stderr into ``log``."""
    code = "import sys; from otcl.cli import main; sys.exit(main())"

    def pre() -> None:
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
        preexec_fn=pre,
    )


def _wait(cond, proc: subprocess.Popen, what: str, timeout: float = START) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _workers(pid: int) -> list[int]:
    """The worker processes of the comparison ``pid`` (its multiprocessing children)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes():
                out.append(int(k))
        except OSError:
            pass
    return out


def _finish(proc: subprocess.Popen) -> int:
    """The exit status, which must come within ``STOP`` seconds (else: kill, fail)."""
    try:
        return proc.wait(STOP)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the comparison did not exit within {STOP:.0f} s of the signal")


def _training(out: Path, method: str, proc: subprocess.Popen) -> None:
    """Wait until both runs saved a checkpoint and both workers are up."""
    ckpts = [out / method / f"seed{s}" / "checkpoint.pt" for s in (0, 1)]
    _wait(lambda: all(p.exists() for p in ckpts) and len(_workers(proc.pid)) == 2, proc,
          "both runs to checkpoint")  # fmt: skip


PATHS = {  # how the signal arrives -> (signal, exit status)
    "group": signal.SIGINT,
    "main": signal.SIGTERM,
    "worker": signal.SIGINT,
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("pipeline", ["image", "recsys", "multimodal"])
def test_a_signal_stops_every_worker_at_a_checkpoint_and_the_runs_resume(tmp_path, pipeline, path):
    out = tmp_path / "cmp"
    argv, method = _argv(pipeline, tmp_path, out)
    proc = _start(argv, tmp_path / "err1")
    _training(out, method, proc)
    sig = PATHS[path]
    if path == "group":
        os.killpg(proc.pid, sig)
    elif path == "main":
        os.kill(proc.pid, sig)
    else:
        os.kill(_workers(proc.pid)[0], sig)
    rc = _finish(proc)
    err = (tmp_path / "err1").read_text()
    assert rc == 128 + sig, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"otcl: interrupted by {signal.Signals(sig).name}"), err
    assert "to continue: run the same" in last and "Traceback" not in err, err
    for s in (0, 1):
        assert str(out / method / f"seed{s}") in last
    assert not _workers(proc.pid)
    # the same command resumes both runs (then SIGTERM to the group: 143 again)
    again = _start(argv, tmp_path / "err2")
    _wait(lambda: (tmp_path / "err2").read_text().count(": resuming") == 2, again, "resuming")
    os.killpg(again.pid, signal.SIGTERM)
    assert _finish(again) == 143, (tmp_path / "err2").read_text()


def test_a_worker_killed_ends_the_comparison_with_one_line(tmp_path):
    out = tmp_path / "cmp"
    argv, method = _argv("recsys", tmp_path, out)
    proc = _start(argv, tmp_path / "err")
    _training(out, method, proc)
    victim = _workers(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    rc = _finish(proc)
    err = (tmp_path / "err").read_text()
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("otcl: error: compare: ") and "was killed by SIGKILL" in last, err
    assert f"{out / method}/seed" in last and "Traceback" not in err, err


def test_sigint_to_the_group_while_the_parent_ignores_it_is_ignored(tmp_path):
    """``cmd &`` in a script: SIGINT ignored; a Ctrl-C to the group must not end the
    comparison with status 0 and no results -- it runs on to its results."""
    out = tmp_path / "cmp"
    argv, method = _argv("recsys", tmp_path, out, epochs=300)
    proc = _start(argv, tmp_path / "err", ignore_sigint=True)
    _training(out, method, proc)
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(START)
    err = (tmp_path / "err").read_text()
    assert rc == 0 and (out / "results.json").exists(), err
