"""What a run tells the user while it trains: a progress bar or plain lines, one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "stderr_line", "first_line"]


def stderr_line(line: str) -> None:
    """The default ``log`` of a trainer: one line on standard error."""
    print(line, file=sys.stderr)


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name if it has none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class Progress:
    """A tqdm bar on a terminal, about ten plain lines per run otherwise, nothing if disabled.

    Args:
        enabled: ``train.progress``.
        total: steps of the whole run; ``done``: steps already done (resume).
        epochs: epochs of the run (sets the plain-line spacing).
        desc: the bar's label; ``log``: where plain lines go.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        total: int,
        done: int,
        epochs: int,
        desc: str,
        log: Callable[[str], None],
    ) -> None:
        self.bar: Any = None  # a tqdm bar (None: plain lines, or none)
        self.line_every: int = 0
        self.log = log
        if enabled and not sys.stderr.isatty():
            self.line_every = max(1, epochs // 10)  # CI, pipes, nohup: plain lines
        elif enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total,
                    initial=min(done, total),
                    desc=desc,
                    unit="step",
                    leave=False,
                    dynamic_ncols=True,
                )
            except ImportError:
                pass

    def update(self, n: int = 1, **postfix: str) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(refresh=False, **postfix)
            self.bar.update(n)

    def epoch_line(self, epoch: int, epochs: int, text: str) -> None:
        """Log ``text`` for about one epoch in ten (and the last) when there is no bar."""
        if self.line_every and (epoch % self.line_every == 0 or epoch == epochs):
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
