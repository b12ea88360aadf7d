"""Child processes that start in a fraction of a second: forked from a fork server that has
already imported torch (seconds), torch._dynamo (seconds more: the optimizer's first use imports
it) and otcl, but never touched CUDA -- so each child may use the GPU.

The GPU suite runs every section script and every training worker this way: the imports are
paid once per call instead of once per process. :class:`Child` has ``Popen``'s ``pid``,
``poll()``, ``wait(timeout)`` and ``returncode``; each child leads its own process group, so
:func:`end` stops it together with the compile workers it started.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

#: imported once in the fork server
PRELOAD = (
    "numpy",
    "yaml",
    "PIL.Image",
    "torch",
    "torch._dynamo",
    "otcl",
    "otcl.pipelines.ssl.trainer",
    "otcl.pipelines.ssl.evaluate",
)
_CONTEXT: Any = None


def context(extra: tuple[str, ...] = ()):
    """The ``forkserver`` multiprocessing context (created once, preloading :data:`PRELOAD`
    and ``extra`` modules). The server starts from this process's ``os.environ`` and
    ``sys.path``: set them first."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing as mp

        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload([*PRELOAD, *extra])
    return _CONTEXT


def start_server(extra: tuple[str, ...] = ()) -> None:
    """Start the fork server now (its imports take seconds), e.g. while other work runs."""
    context(extra).Process(target=_noop).start()


def _noop() -> None:
    pass


def _redirect(fd_target: int, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, fd_target)
    os.close(fd)


def _entry(kind: str, what: str, argv: list[str], stdout: str, stderr: str) -> None:
    """A child: its own process group, output to files, then a script or a module's main."""
    os.setsid()
    _redirect(1, stdout)
    _redirect(2, stderr)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    code: Any = 0
    try:
        if kind == "script":
            sys.argv = [what, *argv]
            runpy.run_path(what, run_name="__main__")
        else:
            import importlib

            code = importlib.import_module(what).main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code if isinstance(code, int) else (0 if code is None else 1))


class Child:
    """``python SCRIPT ARGV...`` (``kind="script"``) or ``MODULE.main(ARGV)``
    (``kind="module"``) in a forked child, output appended to ``stdout`` / ``stderr``."""

    def __init__(
        self,
        kind: str,
        what: str,
        argv: list[str],
        stdout: Path,
        stderr: Path | None = None,
    ) -> None:
        args = (kind, what, list(argv), str(stdout), str(stderr or stdout))
        self.proc = context().Process(target=_entry, args=args)
        self.proc.start()
        self.pid = self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode

    def poll(self) -> int | None:
        return self.proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired("child", timeout or 0)
        return self.proc.exitcode


def end(p: Child | subprocess.Popen, grace_s: float, first: int = signal.SIGTERM) -> bool:
    """Wait up to ``grace_s`` for ``p``, then signal its process group (``first``, then
    SIGKILL); True if it had to be ended."""
    try:
        p.wait(timeout=grace_s)
        return False
    except subprocess.TimeoutExpired:
        pass
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)  # the child and its compile workers
        except ProcessLookupError:  # not (yet) a group leader, or gone
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                break
        try:
            p.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    return True
