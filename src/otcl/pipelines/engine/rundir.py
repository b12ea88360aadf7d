"""The run directory: its file names, its creation and its lock.

A *run* is one output directory::

    run/config.yaml      the resolved configuration (everything needed to rebuild the run)
    run/checkpoint.pt    model, optimizer, scheduler, AMP scaler, loss state, RNG states,
                         epoch/step (written atomically every ``train.checkpoint_every``
                         epochs, at the end, and on Ctrl-C or SIGTERM)
    run/metrics.jsonl    one JSON record per epoch (loss, lr, seconds, throughput, metrics)
    run/summary.json     written when training completes
    run/owner.json       which command made the directory: ``{"kind": "run" | "compare",
                         "pipeline": ...}``; any other command refuses it (:func:`check_owner`)
    run/.otcl.lock       held by the one process writing the run (:class:`RunLock`)
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from ..files import atomic_write_text, check_writable

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "LOCK",
    "OWNER",
    "read_owner",
    "check_owner",
    "write_owner",
    "prepare_run_dir",
    "check_start",
    "RunLock",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOCK = ".otcl.lock"
OWNER = "owner.json"


def read_owner(path: str | os.PathLike[str]) -> dict[str, str | None] | None:
    """Which command made the directory ``path``: its ``owner.json``, else (a directory made
    before owners were recorded) ``{"kind": "run"}`` for a checkpoint, ``{"kind": "compare"}``
    for a ``results.json``; None for a directory no command made."""
    p = Path(path)
    try:
        made = json.loads((p / OWNER).read_text())
        if isinstance(made, dict) and "kind" in made:
            return made
    except (OSError, ValueError):
        pass
    if (p / CHECKPOINT).exists():
        return {"kind": "run", "pipeline": None}
    if (p / "results.json").exists():
        return {"kind": "compare", "pipeline": None}
    return None


def command_of(owner: Mapping[str, str | None]) -> str:
    """The command that makes a directory of ``owner``, e.g. ``otcl recsys compare``."""
    verb = "train" if owner.get("kind") == "run" else "compare"
    pipeline = owner.get("pipeline")
    return f"otcl {pipeline} {verb}" if pipeline else f"otcl ... {verb}"


def _what(owner: Mapping[str, str | None]) -> str:
    pipeline = owner.get("pipeline")
    of = f" of the {pipeline} pipeline" if pipeline else ""
    what = "a training run" if owner.get("kind") == "run" else "a comparison"
    return f"{what}{of} (made by `{command_of(owner)}`)"


def check_owner(path: str | os.PathLike[str], owner: Mapping[str, str | None]) -> None:
    """Refuse a directory that another command made (see :func:`read_owner`): a comparison
    into a run, a run into a comparison, one pipeline's output into another's.

    Raises:
        ValueError: one line naming the directory, what it holds and the command that made it.
    """
    made = read_owner(path)
    if made is None:
        return
    same_kind = made.get("kind") == owner.get("kind")
    mine, theirs = owner.get("pipeline"), made.get("pipeline")
    if same_kind and (mine is None or theirs is None or mine == theirs):
        return
    raise ValueError(
        f"out: {str(path)!r} holds {_what(made)}; `{command_of(owner)}` does not write into "
        "it: choose another --out"
    )


def write_owner(path: str | os.PathLike[str], owner: Mapping[str, str | None]) -> None:
    """Record ``owner`` in ``path/owner.json`` (once: an existing record stays)."""
    p = Path(path) / OWNER
    if not p.exists():
        atomic_write_text(p, json.dumps(dict(owner)) + "\n")


def prepare_run_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) and check that files can be written in it.

    Raises:
        ValueError: one line naming the directory and the cause (an existing file, no such
            place, permissions, a read-only file system, a full disk).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"out: {str(p)!r} exists and is not a directory; choose another --out")
    try:
        p.mkdir(parents=True, exist_ok=True)
        check_writable(p)
    except OSError as e:
        raise ValueError(f"out: cannot write in {str(p)!r}: {e.strerror or e}") from None
    return p


def check_start(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a new run), once the request fits the directory:
    a new run never overwrites a checkpoint, and a resume needs one.

    Raises:
        ValueError: a checkpoint without ``resume``, or ``resume`` without one.
    """
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists() and not resume:
        raise ValueError(
            f"out: {str(run_dir)!r} already holds a checkpoint; pass --resume to continue it, "
            "or choose another --out"
        )
    if resume and not ckpt.exists():
        if (run_dir / CONFIG).exists():  # the run started, then died before its first save
            raise ValueError(
                f"resume: the run in {str(run_dir)!r} stopped before its first checkpoint, so "
                "there is nothing to resume; run the same command without --resume"
            )
        raise ValueError(f"resume: no {CHECKPOINT} in {str(run_dir)!r} to resume from")
    return ckpt if resume else None


class RunLock:
    """An exclusive lock on a run directory, held by the one process that writes it.

    ``fcntl.flock`` on ``<dir>/.otcl.lock`` (released by the kernel if the process dies, so a
    stale lock file never blocks anyone); the file records the holder's pid and host for the
    error message. Where ``fcntl`` does not exist (Windows) no lock is taken.

    Raises:
        ValueError: another process (or another trainer in this one) holds the lock.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path: Path = Path(run_dir) / LOCK
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"out: cannot write in {str(run_dir)!r}: {e.strerror}") from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise ValueError(
                f"out: {str(run_dir)!r} is being written by another otcl process ({holder}); "
                "wait for it to finish, or choose another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()
