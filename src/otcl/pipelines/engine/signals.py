"""Deferred SIGINT/SIGTERM (no torch import here: the command line uses it before torch loads)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["DeferredSignals", "deferred_signals", "Terminated", "interrupt_signal"]


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which defers it to a step boundary and saves); the
    command line raises it from its SIGTERM handler."""


def interrupt_signal(e: BaseException) -> int:
    """The signal a ``KeyboardInterrupt`` stands for: SIGTERM for :class:`Terminated`, else
    SIGINT."""
    return int(signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


class DeferredSignals:
    """Inside the block, SIGINT and SIGTERM only record a request (``received``: the first
    signal's number); a second signal raises ``KeyboardInterrupt`` at once. The previous
    handlers are restored on exit. In a thread other than the main one it does nothing (Python
    delivers signals to the main thread only).

    The training loop honours ``received`` at its next step boundary, so a checkpoint never holds
    half a step (e.g. BatchNorm statistics of a forward pass whose update never happened).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            return
        raise KeyboardInterrupt  # the second signal: stop now

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@contextmanager
def deferred_signals() -> Iterator[DeferredSignals]:
    """Run a block that must not be cut in the middle -- importing a C extension (an interrupt
    there surfaces as a confusing ImportError), writing a file -- and deliver a SIGINT/SIGTERM
    that arrived meanwhile to the previous handler once it ends."""
    with DeferredSignals() as d:
        yield d
    if d.received is not None:
        signal.raise_signal(d.received)
