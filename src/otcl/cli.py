"""The ``otcl`` command line: ``losses`` and every pipeline's subcommands.

Every pipeline is a :class:`~otcl.pipelines.spec.Pipeline` spec named in :data:`PIPELINES`; its
verbs are generated from the spec (:mod:`otcl.pipelines.verbs`): ``otcl <pipeline> train | eval
| compare``, and for the self-supervised image pipeline also the short forms ``otcl train``,
``otcl eval`` and ``otcl compare``. A subcommand sets ``handler`` (``args -> exit status``) and,
if it trains, ``resume_hint``.

Errors are handled here once for every pipeline: a user mistake (``ValueError``) ends with one
line ``otcl: error: ...`` and exit status 2; Ctrl-C (SIGINT) or SIGTERM during training saves a
checkpoint at the end of the current step and prints the command that resumes it (exit 130 or
143), anywhere else it ends the command with one line; a diverging run says so (exit 1), and so
does a write that fails (a full disk, exit 1).

Under ``torchrun`` the command joins the process group first (:mod:`otcl.pipelines.engine.distributed`)
and leaves it at the end. Rank 0 prints the results; an error ends every rank with the same exit
status and is printed once, by the rank where it happened. Only the commands that set
``distributed=True`` (training, comparisons) run with several processes; the others refuse.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import redirect_stdout

from . import __version__
from .pipelines.engine.signals import deferred_signals

__all__ = ["main", "build_parser", "PIPELINES"]

#: the pipelines of the command line (registered specs, :func:`otcl.pipelines.spec.get`); the
#: first one also has the short forms ``otcl train | eval | compare``
PIPELINES: tuple[str, ...] = ("ssl", "multimodal", "recsys", "domains")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otcl",
        description="Contrastive representation learning as optimal transport: train, "
        "evaluate and compare otcl losses.",
    )
    parser.add_argument("--version", action="version", version=f"otcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .pipelines.spec import available, get
    from .pipelines.verbs import add_pipeline

    names = [*PIPELINES, *(n for n in available() if n not in PIPELINES)]  # and any registered
    for i, name in enumerate(names):
        add_pipeline(sub, get(name), short_forms=i == 0)
    p = sub.add_parser(
        "losses",
        help="list the losses and their parameters",
        description="Without NAME: every loss with its parameters and defaults. With NAME: that "
        "loss's parameters, defaults, and when each applies (a parameter given where it does not "
        "apply is an error).",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="one loss, e.g. gca-uot")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_losses)
    return parser


def cmd_losses(args: argparse.Namespace) -> int:
    from .losses import available, describe

    names = [args.name] if args.name else available()
    info = {name: describe(name) for name in names}  # an unknown NAME: ValueError -> one line
    if args.json:
        print(json.dumps(info if not args.name else info[args.name], indent=2, default=repr))
        return 0
    for name, d in info.items():
        print(f"{name}: {d['summary']}")
        params = d["parameters"]
        if not args.name:
            print("    " + ", ".join(f"{k}={v['default']!r}" for k, v in params.items()))
            continue
        if d["base"]:
            print(f"    (its own parameters, then those of its base loss, default {d['base']!r})")
        width = max(len(k) for k in params)
        for k, v in params.items():
            cond = v["applies_when"]
            when = "" if cond == "always" else f"   only with {cond}"
            if cond.startswith("never"):
                when = f"   {cond}"
            print(f"    {k:<{width}}  {v['default']!r}{when}")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which defers it to a step boundary and saves)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otcl`` command line; returns the exit status."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return _main(argv)
    except _Terminated:
        print("otcl: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("otcl: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_term)


def _main(argv: Sequence[str] | None) -> int:
    from .pipelines.commands import RefusedFlag

    with deferred_signals():  # imports torch: Ctrl-C there waits for the import to finish
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except RefusedFlag as e:  # a flag this command does not take: one line
            print(f"otcl: error: {e}", file=sys.stderr)
            return 2
    handler = getattr(args, "handler", None)
    if handler is None:  # no command, or a pipeline group without its verb
        parser.print_help()
        return 2
    from .pipelines.engine import distributed

    if not distributed.launched():
        return _run(args, handler, main_rank=True)
    joined = not distributed.current()  # leave the group at the end only if we joined it
    try:
        session = distributed.init_from_env()
        main_rank = session is None or session.is_main
        try:
            return _run(args, handler, main_rank, session)
        except KeyboardInterrupt as e:
            if not main_rank:  # one line, from rank 0
                return 128 + (signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)
            raise
    finally:
        if joined:
            distributed.shutdown()


def _run(args: argparse.Namespace, handler, main_rank: bool, session=None) -> int:
    """``handler(args)`` with the errors turned into one line and an exit status."""
    from .pipelines.engine.distributed import PeerFailure, agreed
    from .pipelines.engine.stops import TrainingDiverged, TrainingInterrupted

    quiet = not main_rank
    try:
        with agreed():
            if session is not None and session.world > 1 and not getattr(args, "distributed", 0):
                raise ValueError(
                    f"{' '.join(a for a in (args.command, getattr(args, 'verb', None)) if a)}: "
                    "runs in one process; start it without torchrun (training and comparisons "
                    "run under torchrun)"
                )
            if quiet:  # the results are printed by rank 0
                with open(os.devnull, "w") as sink, redirect_stdout(sink):
                    return handler(args)
            return handler(args)
    except PeerFailure as e:  # another rank failed and printed why
        return e.status
    except TrainingInterrupted as e:
        if not quiet:
            hint = getattr(args, "resume_hint", "") or ""
            print(f"otcl: {e}; to continue: {hint.format(run=e.run_dir)}", file=sys.stderr)
        return e.exit_status
    except TrainingDiverged as e:
        if not quiet:
            print(f"otcl: error: training diverged: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # user mistakes (DataError is a ValueError)
        print(f"otcl: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `otcl losses | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the interpreter flushes it at exit)
        return 0
    except OSError as e:  # the machine: a full disk, a file system gone read-only, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"otcl: error: cannot write {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
