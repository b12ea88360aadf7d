"""The ``otcl`` command line: ``losses`` and every pipeline's subcommands.

Each pipeline package has a ``cli.py`` with ``add_parser(subparsers)`` and registers it with one
line in :data:`PIPELINES`; the self-supervised image pipeline adds the top-level verbs ``train``,
``eval`` and ``compare``, other pipelines a group of their own (``otcl <pipeline> train ...``).
A subcommand sets ``handler`` (``args -> exit status``) and, if it trains, ``resume_hint``.

Errors are handled here once for every pipeline: a user mistake (``ValueError``) ends with one
line ``otcl: error: ...`` and exit status 2; Ctrl-C during training saves a checkpoint and prints
the command that resumes it (exit 130); a diverging run says so (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["main", "build_parser", "PIPELINES"]

#: modules whose ``add_parser(subparsers)`` adds a pipeline's subcommands
PIPELINES: tuple[str, ...] = ("otcl.pipelines.ssl.cli", "otcl.pipelines.recsys.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otcl",
        description="Contrastive representation learning as optimal transport: train, "
        "evaluate and compare otcl losses.",
    )
    parser.add_argument("--version", action="version", version=f"otcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in PIPELINES:
        importlib.import_module(module).add_parser(sub)
    p = sub.add_parser("losses", help="list the losses and their parameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_losses)
    return parser


def cmd_losses(args: argparse.Namespace) -> int:
    from .losses import available, get, parameters

    info = {}
    for name in available():
        params = {
            k: (None if v is inspect.Parameter.empty else v) for k, v in parameters(name).items()
        }
        doc = (get(name).__doc__ or "").strip().splitlines()
        info[name] = {"summary": doc[0] if doc else "", "parameters": params}
    if args.json:
        print(json.dumps(info, indent=2, default=repr))
        return 0
    for name, d in info.items():
        print(f"{name}: {d['summary']}")
        print("    " + ", ".join(f"{k}={v!r}" for k, v in d["parameters"].items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:  # no command, or a pipeline group without its verb
        parser.print_help()
        return 2
    from .pipelines.run import TrainingDiverged, TrainingInterrupted

    try:
        return handler(args)
    except TrainingInterrupted as e:
        hint = getattr(args, "resume_hint", "") or ""
        again = hint.format(run=e.run_dir)
        print(f"otcl: {e}; to continue: {again}", file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        print(f"otcl: error: training diverged: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # user mistakes (DataError is a ValueError)
        print(f"otcl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otcl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
