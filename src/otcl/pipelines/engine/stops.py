"""How a run ends early: a signal, a caller's stop or a deadline, at a step boundary; divergence.

The loop asks :class:`Stops` at every step boundary whether to stop. A SIGINT/SIGTERM that
arrived during the step (:class:`~otcl.pipelines.engine.signals.DeferredSignals`), a stop the
caller requested (:meth:`Stops.request`, from any thread) and a passed deadline all stop the
run there -- under ``torchrun`` on every rank at the same step (one all-reduce) -- after which
the trainer writes its checkpoint and raises :class:`TrainingInterrupted` (a signal) or
:class:`TrainingStopped` (the caller).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path


def where(epoch: int, step: int) -> str:
    """Where a run stopped, numbered as ``metrics.jsonl`` and the progress bar number epochs
    (from 1): ``epoch`` epochs completed and ``step`` steps of the next one."""
    return f"at the end of epoch {epoch}" if step == 0 else f"at epoch {epoch + 1}, step {step}"


__all__ = [
    "TrainingInterrupted",
    "TrainingStopped",
    "TrainingDiverged",
    "RunsInterrupted",
    "RunFailed",
    "PeerLost",
    "StopRequested",
    "Stops",
]


class TrainingInterrupted(Exception):
    """Raised after SIGINT (Ctrl-C) or SIGTERM once the checkpoint is safely written.

    Attributes:
        path: the checkpoint; ``run_dir``: its directory.
        epoch, step: epochs completed and steps of the current epoch completed.
        signum: the signal (``exit_status`` = 128 + signum: 130 for SIGINT, 143 for SIGTERM).
    """

    path: Path
    epoch: int
    step: int
    signum: int

    def __init__(self, path: Path, epoch: int, step: int, signum: int = signal.SIGINT) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} {where(epoch, step)}; checkpoint saved to {path}")
        self.path, self.epoch, self.step, self.signum = path, epoch, step, int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def run_dir(self) -> Path:
        return self.path.parent


class TrainingStopped(TrainingInterrupted):
    """Raised when a caller's stop (:meth:`Stops.request`, or a deadline) reached a step
    boundary, once the checkpoint is written; ``resume=True`` continues the run exactly.

    Attributes:
        reason: what asked for the stop. ``signum`` is 0 (no signal) and ``exit_status`` 75
            (``EX_TEMPFAIL``: run it again to continue).
    """

    path: Path
    epoch: int
    step: int
    signum: int
    reason: str

    def __init__(self, path: Path, epoch: int, step: int, reason: str) -> None:
        Exception.__init__(
            self, f"stopped ({reason}) {where(epoch, step)}; checkpoint saved to {path}"
        )
        self.path, self.epoch, self.step, self.signum, self.reason = path, epoch, step, 0, reason

    @property
    def exit_status(self) -> int:
        return 75


class RunsInterrupted(TrainingInterrupted):
    """A comparison's worker processes stopped at a step boundary after a signal (sent to the
    comparison or to one of its workers); every run that was training saved its checkpoint.

    Attributes:
        runs: the run directories that were training; ``signum``: the signal.
    """

    runs: list[Path]
    path: Path
    epoch: int
    step: int
    signum: int

    def __init__(self, runs: list[Path], signum: int) -> None:
        name = signal.Signals(signum).name
        where = ", ".join(str(r) for r in runs) or "no run was training"
        Exception.__init__(self, f"interrupted by {name}; checkpoints saved: {where}")
        self.runs, self.signum = list(runs), int(signum)
        self.path = Path(runs[0]) / "checkpoint.pt" if runs else Path("checkpoint.pt")
        self.epoch, self.step = 0, 0


class RunFailed(RuntimeError):
    """A run of a comparison failed in its worker process (an error, or the process died);
    the message names the run and how it ended. Exit status 1."""


class PeerLost(RuntimeError):
    """Under torchrun, another rank's process died during training (its connection closed).

    Attributes:
        lost: the rank lost (None where it cannot be told: more than two processes);
        checkpoint: the last checkpoint of the run (None: none written yet); ``run_dir``.
    """

    lost: int | None
    run_dir: Path
    checkpoint: Path | None

    def __init__(self, lost: int | None, run_dir: Path, checkpoint: Path | None, cause: str):
        who = f"rank {lost}" if lost is not None else "a rank"
        last = (
            f"the last checkpoint is {checkpoint}"
            if checkpoint is not None
            else "no checkpoint was written yet"
        )
        super().__init__(f"lost {who} of torchrun (its process died: {cause}); {last}")
        self.lost, self.run_dir, self.checkpoint = lost, run_dir, checkpoint


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopRequested(Exception):
    """A stop reached a step boundary (internal to the loop).

    Attributes:
        signum: the signal received (None: a caller's stop); ``reason``: the caller's reason.
    """

    signum: int | None
    reason: str

    def __init__(self, signum: int | None, reason: str) -> None:
        super().__init__(reason)
        self.signum, self.reason = signum, reason


#: in the all-reduce of the signals received: a caller's stop (any signal number is larger)
_STOP_CODE = 1


class Stops:
    """What may stop a run at a step boundary besides a signal: a request and a deadline.

    Args:
        deadline: a wall-clock time (``time.time()``) after which the run stops.
    """

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.requested: str | None = None

    def request(self, reason: str = "stop requested") -> None:
        """Stop at the next step boundary (safe from another thread)."""
        self.requested = reason

    def reason(self) -> str | None:
        """Why this process should stop now (None: it should not)."""
        if self.requested is not None:
            return self.requested
        if self.deadline is not None and time.time() >= self.deadline:
            return "the deadline passed"
        return None

    def check(self, received: int | None, any_signal: Callable[[int], int] | None = None) -> None:
        """Raise :class:`StopRequested` if the signal ``received`` (None: none) or
        :meth:`reason` says to stop; ``any_signal`` (under torchrun) turns this rank's answer
        into every rank's (the largest code: a signal wins over a caller's stop)."""
        reason = self.reason()
        code = received or (_STOP_CODE if reason is not None else 0)
        if any_signal is not None:
            code = any_signal(code)
        if code:
            signum = code if code != _STOP_CODE else None
            raise StopRequested(signum, reason or "another process was asked to stop")
