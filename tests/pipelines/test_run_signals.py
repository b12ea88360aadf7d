"""Signals during training (otcl.pipelines.engine): real SIGINT/SIGTERM, deferred to the step
boundary, a bit-identical resume, SIGTERM handled like Ctrl-C, a second signal aborts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.stops import TrainingInterrupted
from otcl.pipelines.files import read_jsonl

from .test_run import Toy


def _signal_mid_step(monkeypatch, at_step: int, signum: int, times: int = 1) -> None:
    """At global step ``at_step``, after the forward pass (BatchNorm statistics already
    updated) and before the update, another thread sends ``signum`` to this process and the
    step waits until it was sent."""
    orig = Toy.compute_loss

    def compute_loss(self, epoch, step):
        loss = orig(self, epoch, step)
        if self.global_step == at_step:
            sent = threading.Event()

            def sender():
                for _ in range(times):
                    os.kill(os.getpid(), signum)
                    time.sleep(0.05)
                sent.set()

            threading.Thread(target=sender).start()
            sent.wait(10)
            time.sleep(0.05)  # the main thread runs the Python-level handler here
        return loss

    monkeypatch.setattr(Toy, "compute_loss", compute_loss)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_step_stops_at_the_boundary_and_resumes_bit_identically(
    tmp_path, toy_config, weights, assert_same_weights, monkeypatch, signum
):
    ref = Toy(toy_config(), tmp_path / "ref")
    ref.fit()
    before = signal.getsignal(signum)
    _signal_mid_step(monkeypatch, at_step=8, signum=signum)  # epoch 2, step 3 of 6
    with pytest.raises(TrainingInterrupted) as info:
        Toy(toy_config(), tmp_path / "run").fit()
    assert signal.getsignal(signum) is before  # the trainer's handler is gone again
    e = info.value
    assert (e.epoch, e.step, e.signum) == (1, 3, signum)  # the signalled step completed
    assert e.exit_status == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert load_checkpoint(tmp_path / "run")["global_step"] == 9
    monkeypatch.undo()
    resumed = Toy(toy_config(), tmp_path / "run", resume=True)
    resumed.fit()
    assert_same_weights(weights(resumed.model), weights(ref.model))
    ref_losses = [r["loss"] for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl")]
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert losses == pytest.approx(ref_losses, rel=1e-6)  # epoch means: float32 sums, regrouped


def test_second_signal_aborts_without_saving(tmp_path, toy_config, monkeypatch):
    _signal_mid_step(monkeypatch, at_step=8, signum=signal.SIGINT, times=2)
    with pytest.raises(KeyboardInterrupt):
        Toy(toy_config(), tmp_path / "run").fit()
    assert load_checkpoint(tmp_path / "run")["global_step"] == 6  # the epoch-1 checkpoint


def _otcl(*argv: str) -> subprocess.Popen:
    """``otcl`` in a new process, as its console script starts it."""
    code = "import sys; from otcl.cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _otcl(*argv: str) -> subprocess.Popen:
    """``otcl`` in a new process, started as its console script starts it."""
    code = "import sys; from otcl.cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_during_start_up_prints_one_line(tmp_path):
    """Ctrl-C while otcl is still importing or loading data: no traceback."""
    proc = _otcl("train", "--out", str(tmp_path / "run"), "--epochs", "2000", "--no-progress")
    # wait until torch is being imported (its library mapped): otcl's main() is running then.
    # (A signal during the interpreter's own start-up is Python's to report, whatever the CLI.)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if not maps.exists() or "libtorch" in maps.read_text(errors="replace"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("otcl: interrupted")
