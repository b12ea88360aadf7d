"""Pieces every pipeline's command line shares: run options, config from flags, train/resume.

The verbs of every pipeline (:mod:`otcl.pipelines.verbs`) are built from these helpers, so ``otcl train`` and ``otcl <pipeline> train`` accept the same run options
(``--config``, ``--set``, ``--loss``, ``--loss-param``, ``--epochs``, ``--resume``, ...) with the
same meaning. Each subcommand sets ``handler`` (a function ``args -> exit status``) and, when it
trains, ``resume_hint`` (``"otcl train --resume {run}"``: what :func:`otcl.cli.main` prints after
Ctrl-C) and ``distributed=True`` (it runs under ``torchrun``: every rank runs the handler, the
shared run machinery splits the work) with ``parser.set_defaults``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .config import apply_overrides, from_dict, load_config, parse_value
from .engine.checkpoint import load_checkpoint
from .engine.distributed import main_then_broadcast
from .engine.trainer import EpochTrainer

__all__ = [
    "Refused",
    "RefusedFlag",
    "COMMON_FLAGS",
    "add_run_options",
    "add_train_options",
    "config_from_args",
    "name_list",
    "loss_params",
    "check_loss_params",
    "run_train",
]

C = TypeVar("C")

#: (argparse attribute, config setting) of the flags :func:`add_run_options` defines
COMMON_FLAGS: tuple[tuple[str, str], ...] = (
    ("loss", "loss.name"),
    ("epochs", "train.epochs"),
    ("batch_size", "train.batch_size"),
    ("lr", "optim.lr"),
    ("device", "train.device"),
    ("seed", "train.seed"),
    ("amp", "train.amp"),
    ("compile", "train.compile"),
    ("deterministic", "train.deterministic"),
    ("log", "train.log"),
)


def add_run_options(
    p: argparse.ArgumentParser, *, single_loss: bool, compile: bool = True
) -> argparse._ArgumentGroup:
    """The run settings every training command takes; returns the group for pipeline flags.

    ``single_loss``: a ``train`` command (``--loss``; ``--loss-param KEY=VALUE``), else a
    ``compare`` (``--loss-param [LOSS:]KEY=VALUE``). ``compile=False``: ``--compile`` is not
    offered, and refused in one line (:class:`Refused`)."""
    g = p.add_argument_group("run settings (override the config file and the presets)")
    g.add_argument("--config", metavar="FILE", help="YAML or TOML config file")
    if single_loss:
        g.add_argument("--loss", metavar="NAME", help="loss name (see `otcl losses`)")
    g.add_argument(
        "--loss-param",
        action="append",
        default=[],
        metavar="KEY=VALUE" if single_loss else "[LOSS:]KEY=VALUE",
        help="a loss parameter, e.g. temperature=0.5 (repeatable)"
        + ("; LOSS: limits it to one loss" if not single_loss else ""),
    )
    g.add_argument("--epochs", type=int, metavar="N")
    g.add_argument("--batch-size", type=int, metavar="N", help="samples (pairs) per step")
    g.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help="learning rate per 128 samples: the optimizer (SGD or Adam alike) runs at "
        "LR x batch-size / 128 (config.yaml records both, the latter as derived.effective_lr)",
    )
    g.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, metavar="N")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), help="autocast dtype")
    if compile:
        g.add_argument(
            "--compile", action="store_true", default=None, help="torch.compile the encoder"
        )
    else:
        g.add_argument(
            "--compile",
            action=Refused,
            nargs=0,
            help=argparse.SUPPRESS,
            hint="not supported by this pipeline (its encoders run one modality at a time)",
        )
    g.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic algorithms"
    )
    g.add_argument("--no-progress", action="store_true", default=None, help="no progress bars")
    g.add_argument(
        "--log",
        choices=("none", "tensorboard"),
        help="also log metrics.jsonl's scalars to TensorBoard, in RUN/tb "
        "(needs pip install 'otcl[tensorboard]')",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any config setting, e.g. --set train.checkpoint_every=5 (repeatable)",
    )
    return g


class RefusedFlag(ValueError):
    """A flag this command does not take (raised while parsing; one line, exit status 2)."""


class Refused(argparse.Action):
    """A flag that is refused in one line with a hint (a spelling that moved, an option this
    pipeline does not support); hidden from ``--help``."""

    def __init__(self, *args: Any, hint: str = "", **kwargs: Any) -> None:
        self.hint = hint
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        raise RefusedFlag(f"{option}: {self.hint}")


def add_train_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """``--out``, ``--resume``, ``--extend`` of a single-run training command."""
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {default_out})")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint with its saved config (settings "
        "that would change what the run is are refused)",
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="with --resume and --epochs N: train the run to N epochs (more than it was set up for)",
    )


def name_list(text: str | None, default: Sequence[str]) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``; no text -> ``default``."""
    if not text:
        return list(default)
    return [s.strip() for s in text.split(",") if s.strip()]


def _flag_overrides(args: argparse.Namespace, flags: Sequence[tuple[str, str]]) -> list[str]:
    """The named flags the user gave, as ``section.key=value`` overrides."""
    out = []
    for attr, key in (*COMMON_FLAGS, *flags):
        v = getattr(args, attr, None)
        if v is not None:
            out.append(f"{key}={json.dumps(v) if not isinstance(v, str) else v}")
    if getattr(args, "no_progress", None):
        out.append("train.progress=false")
    return out


def config_from_args(
    args: argparse.Namespace,
    cls: type[C],
    flags: Sequence[tuple[str, str]] = (),
    base: C | None = None,
) -> C:
    """``base`` (a resumed run's config) or ``--config`` or ``cls()``, with the flags and
    ``--set`` applied (in that order of priority, lowest first)."""
    if base is not None and getattr(args, "config", None):
        raise ValueError("--config: not allowed with --resume (the run's saved config is used)")
    if base is None:
        base = load_config(args.config, cls) if getattr(args, "config", None) else cls()
    return apply_overrides(base, _flag_overrides(args, flags) + list(args.set))


def loss_params(
    items: list[str], per_loss: bool, compare: str = "otcl compare"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--loss-param`` items -> (shared parameters, {loss: its own parameters}); ``compare``:
    the command that takes per-loss parameters (named when they are given elsewhere)."""
    shared: dict[str, Any] = {}
    specific: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--loss-param: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        target = shared
        if ":" in key:
            if not per_loss:
                raise ValueError(f"--loss-param: LOSS:KEY is for `{compare}`, got {item!r}")
            loss, key = key.split(":", 1)
            target = specific.setdefault(loss.strip(), {})
        target[key.strip()] = parse_value(raw)
    return shared, specific


def check_loss_params(name: str, params: dict[str, Any]) -> None:
    """Build the loss once: raises ``ValueError`` naming an unknown loss or parameter."""
    from ..losses import build

    build(name, **params)


def run_train(
    args: argparse.Namespace,
    cls: type[C],
    make_trainer: Callable[..., EpochTrainer],
    flags: Sequence[tuple[str, str]] = (),
    *,
    validate: Callable[[C], object] | None = None,
    prepare: Callable[[C], C] | None = None,
) -> tuple[EpochTrainer, dict[str, Any]]:
    """``train`` / ``train --resume``: the config from the flags (or the run), then fit.

    ``make_trainer(cfg, out, resume=..., extend=...)`` builds the pipeline's trainer.
    ``prepare(cfg)``: the last step of a new run's config (e.g. ``--dmm``), never of a resumed
    one.
    ``validate(cfg)`` raises ``ValueError`` for a config that cannot train, before the trainer
    touches the run directory (default: build ``loss.name`` with ``loss.params``, for a
    pipeline that trains with an otcl loss; a pipeline with losses of its own passes its check).
    """
    group = getattr(args, "command", None)  # "recsys" in `otcl recsys train`, else a verb
    short = group in (None, "train", "eval", "compare")
    shared, _ = loss_params(
        args.loss_param,
        per_loss=False,
        compare="otcl compare" if short else f"otcl {group} compare",
    )
    if args.resume:
        if args.out and args.out != args.resume:
            raise ValueError(
                "--out: not allowed with --resume (the run continues in its directory)"
            )
        # rank 0 reads it (under torchrun the run directory may be on its node only)
        saved = main_then_broadcast(lambda: load_checkpoint(args.resume)["config"])
        cfg = config_from_args(args, cls, flags, base=from_dict(cls, saved))
        out = args.resume
    else:
        cfg = config_from_args(args, cls, flags)
        out = args.out
    cfg.loss.params.update(shared)  # type: ignore[attr-defined]
    if prepare is not None and not args.resume:
        cfg = prepare(cfg)
    if validate is None:
        check_loss_params(cfg.loss.name, cfg.loss.params)  # type: ignore[attr-defined]
    else:
        validate(cfg)
    trainer = make_trainer(cfg, out, resume=bool(args.resume), extend=bool(args.extend))
    return trainer, trainer.fit()
