"""The verbs ``train``, ``eval`` and ``compare`` of every pipeline, generated from its spec.

``otcl <pipeline> train | eval | compare`` take the shared run options
(:mod:`otcl.pipelines.commands`) and the pipeline's own flags, declared once in its
:class:`~otcl.pipelines.spec.Pipeline`. The same flag means the same thing everywhere:

* ``train --dmm`` wraps the chosen loss in DMM; in ``compare`` a method name ``<m>+dmm`` does;
* ``compare --methods A,B`` (``--losses`` is the same option), ``--seeds``, ``--jobs``,
  ``--out`` (default ``runs/<pipeline>/compare``), ``--no-plot``;
* ``train --out`` defaults to ``runs/<pipeline>/<method>-<dataset>-s<seed>``;
* ``eval RUN_DIR --device`` plus the pipeline's evaluation options.

Each verb's ``--help`` offers only what it accepts.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from .commands import (
    Refused,
    add_run_options,
    add_train_options,
    config_from_args,
    loss_params,
    name_list,
    run_train,
)
from .spec import Pipeline, get

__all__ = ["add_pipeline", "cmd_train", "cmd_eval", "cmd_compare", "REFUSED"]

#: pipeline -> verb -> (flag, hint): spellings that moved, refused in one line
REFUSED: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "multimodal": {
        "compare": (
            (
                "--dmm",
                "moved: name the methods, e.g. --methods infonce,infonce+dmm (with DMM: "
                "<loss>+dmm)",
            ),
        )
    },
}


def _flags(g: Any, spec: Pipeline, verb: str) -> None:
    for f in spec.flags_for(verb):
        g.add_argument(f.name, dest=f.dest, **dict(f.kwargs))
    for flag, hint in REFUSED.get(spec.name, {}).get(verb, ()):
        g.add_argument(flag, action=Refused, nargs="?", help=argparse.SUPPRESS, hint=hint)


def add_pipeline(sub: Any, spec: Pipeline, *, short_forms: bool = False) -> None:
    """Add ``otcl <spec.name> train | eval | compare`` (and, with ``short_forms``, the
    top-level ``otcl train | eval | compare``) to the subcommands ``sub``."""
    group = sub.add_parser(spec.name, help=spec.help, description=spec.help)
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    group.set_defaults(handler=lambda args: group.print_help() or 2)  # no verb: its help
    _add_verbs(verbs, spec, f"otcl {spec.name}")
    if short_forms:
        _add_verbs(sub, spec, "otcl")


def _add_verbs(sub: Any, spec: Pipeline, prog: str) -> None:
    kw = {"formatter_class": argparse.RawDescriptionHelpFormatter}
    p = sub.add_parser(
        "train",
        help=f"train one {spec.name} model",
        description=f"Train one run of the {spec.name} pipeline. Writes config.yaml, "
        "checkpoint.pt, metrics.jsonl and summary.json into --out.",
        epilog=spec.examples.get("train"),
        **kw,
    )
    g = add_run_options(p, single_loss=True, compile=spec.supports_compile)
    g.add_argument("--dmm", action="store_true", default=None, help="wrap the chosen loss in DMM")
    _flags(g, spec, "train")
    add_train_options(p, f"runs/{spec.name}/<method>-<dataset>-s<seed>")
    p.set_defaults(
        handler=cmd_train,
        pipeline=spec.name,
        distributed=True,
        resume_hint=f"{prog} train --resume {{run}}",
    )

    p = sub.add_parser(
        "eval",
        help="evaluate a trained run again",
        description=f"Evaluate a {spec.name} run's checkpoint"
        + (f"; writes {spec.eval_file} into the run directory." if spec.eval_file else "."),
        epilog=spec.examples.get("eval"),
        **kw,
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _flags(p, spec, "eval")
    p.set_defaults(handler=cmd_eval, pipeline=spec.name)

    p = sub.add_parser(
        "compare",
        help="methods x seeds under one budget: table, results.json, plots",
        description="Train and evaluate each method with several seeds under the same "
        "settings; print the table (mean +- std over seeds) and write results.json, table.md "
        "and the plots into --out. Finished runs are reused, interrupted ones resumed, and the "
        "table covers every finished run in --out made with these settings.",
        epilog=spec.examples.get("compare"),
        **kw,
    )
    g = add_run_options(p, single_loss=False, compile=spec.supports_compile)
    _flags(g, spec, "compare")
    p.add_argument(
        "--methods",
        "--losses",
        dest="methods",
        metavar="A,B,...",
        help=f"comma-separated methods; <m>+dmm: DMM around m (default: {','.join(spec.methods)})",
    )
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per method (3)")
    out = f"runs/{spec.name}/compare"
    p.add_argument("--out", default=out, metavar="DIR", help=f"default {out}")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--force",
        action="store_true",
        help="train again the runs in --out whose data changed since they were trained "
        "(without it, such runs are refused)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs trained at once, one process and one thread each (default: "
        + ("the CPU cores, at most 2" if spec.parallel_by_default else "1")
        + "; 1 = one after the other in this process)",
    )
    p.set_defaults(
        handler=cmd_compare,
        pipeline=spec.name,
        distributed=True,
        resume_hint=f"run the same `{prog} compare` command again",
    )


def cmd_train(args: argparse.Namespace) -> int:
    """``train`` / ``train --resume``: the config from the flags (or the saved run), checked
    by the spec before the run directory is touched, then fit."""
    spec = get(args.pipeline)
    if args.resume and args.dmm:
        raise ValueError("--dmm: not allowed with --resume (it would change what the run is)")
    trainer, summary = run_train(
        args,
        spec.config_cls,
        spec.trainer_cls,
        spec.settings_for("train"),
        validate=lambda cfg: spec.check(spec.resolve(cfg)),
        prepare=spec.with_dmm if args.dmm else None,
    )
    print(spec.describe_train(trainer, summary))
    if getattr(args, "eval", False) and trainer.is_main and spec.evaluate is not None:
        t = trainer.cfg.train
        data = cast(Any, trainer).data  # the dataset the pipeline's build loaded (its own type)
        r = spec.evaluate(trainer.out, device=t.device, data=data, progress=t.progress)
        print(f"eval: {spec.describe_eval(r)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval RUN_DIR``: the spec's evaluation of a run, with the verb's options."""
    spec = get(args.pipeline)
    if spec.evaluate is None:
        raise ValueError(f"eval: the {spec.name} pipeline has no evaluation of its own")
    _check_eval_target(args.run, spec.name)
    opts = {f.dest: getattr(args, f.dest) for f in spec.flags_for("eval")}
    opts = {k: v for k, v in opts.items() if v is not None}
    r = spec.evaluate(args.run, device=args.device, progress=not args.no_progress, **opts)
    print(spec.describe_eval(r))
    return 0


def _check_eval_target(run: str, pipeline: str) -> None:
    """Refuse, in one line saying what to run instead, a directory another pipeline made or
    a comparison (its ``owner.json``)."""
    from .engine.rundir import command_of, read_owner

    made = read_owner(run)
    if made is None:
        return
    theirs = made.get("pipeline")
    if made.get("kind") == "compare":
        raise ValueError(
            f"eval: {run!r} is a comparison (made by `{command_of(made)}`), not a run; evaluate "
            f"one of its runs, e.g. {run}/<method>/seed<k>"
        )
    if theirs is not None and theirs != pipeline:
        raise ValueError(
            f"eval: {run!r} is a run of the {theirs} pipeline (made by `{command_of(made)}`); "
            f"evaluate it with `otcl {theirs} eval {run}`"
        )


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: the config from the flags, the methods, then :func:`comparison.compare`."""
    from .compare import default_jobs
    from .comparison import compare

    spec = get(args.pipeline)
    cfg = config_from_args(args, spec.config_cls, spec.settings_for("compare"))
    shared, specific = loss_params(args.loss_param, per_loss=True)
    cfg.loss.params.update(shared)
    methods = name_list(args.methods, spec.methods)
    jobs = args.jobs
    if jobs is None:
        jobs = default_jobs(cfg.train.device) if spec.parallel_by_default else 1
    compare(
        spec,
        cfg,
        methods,
        args.seeds,
        args.out,
        loss_params=specific,
        jobs=jobs,
        plot=not args.no_plot,
        force=args.force,
    )
    return 0
