"""``otcl domains train | eval | compare``: the domain pipeline's verbs."""

from __future__ import annotations

import argparse
from typing import Any

from ..commands import (
    add_compare_options,
    add_run_options,
    add_train_options,
    config_from_args,
    loss_params,
    name_list,
    run_train,
)

__all__ = ["add_parser"]

EPILOG_TRAIN = """examples:
  otcl domains train                                   # InfoNCE on the four-style digits
  otcl domains train --loss gca-uot --alpha 0 --beta 0.5 --out runs/d1   # remove domain structure
  otcl domains train --dataset folder --data-dir ~/data/pacs.tar.gz --device cuda
  otcl domains train --resume runs/d1
"""

EPILOG_COMPARE = """examples:
  otcl domains compare --out runs/domains              # the alpha - beta sweep, 3 seeds
  otcl domains compare --methods infonce,gca-uot@-0.5,gca-uot@+0.5 --seeds 5
  otcl domains compare --data-dir ~/data/cifar10-jpeg.tar.gz --device cuda   # CIFAR-10 styles
"""

#: (argparse attribute, config setting)
FLAGS = (
    ("dataset", "data.dataset"),
    ("data_dir", "data.data_dir"),
    ("skip_corrupt", "data.skip_corrupt"),
    ("scale", "target.scale"),
)
TRAIN_FLAGS = (*FLAGS, ("alpha", "target.alpha"), ("beta", "target.beta"))


def _add_options(g: argparse._ArgumentGroup, *, single: bool) -> None:
    g.add_argument(
        "--dataset",
        choices=("styles", "folder"),
        help="styles (default: four style domains from digits, or from the ImageFolder copy "
        "given as --data-dir) or folder (<root>/<domain>/<class>/<image>)",
    )
    g.add_argument("--data-dir", metavar="PATH", help="a directory or .tar.gz (see --dataset)")
    g.add_argument(
        "--skip-corrupt",
        action="store_true",
        default=None,
        help="skip unreadable images with a warning instead of failing",
    )
    g.add_argument(
        "--scale",
        choices=("block", "pair"),
        help="how a target weight is read: block (default; the mass of its block) or pair",
    )
    if single:
        g.add_argument("--alpha", type=float, metavar="A", help="same-domain weight (0)")
        g.add_argument("--beta", type=float, metavar="B", help="cross-domain weight (0)")


def add_parser(sub: Any) -> None:
    """Add ``domains`` with ``train``, ``eval`` and ``compare`` to ``sub``."""
    group = sub.add_parser(
        "domains",
        help="images with domains: GCA's domain-block target, leave-one-domain-out",
        description="Self-supervised training on images with domains with GCA's domain-block "
        "target plan; class, domain and leave-one-domain-out accuracy of the frozen backbone.",
    )
    verbs = group.add_subparsers(dest="domains_command", metavar="COMMAND")
    p = verbs.add_parser(
        "train",
        help="train one encoder, then probe it",
        description="Train one encoder and probe it (eval.json); writes config.yaml, "
        "checkpoint.pt, metrics.jsonl and summary.json into --out.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(add_run_options(p, single_loss=True), single=True)
    add_train_options(p, "runs/domains/<loss>-a<alpha>-b<beta>-s<seed>")
    p.set_defaults(handler=cmd_train, resume_hint="otcl domains train --resume {run}")

    p = verbs.add_parser(
        "eval",
        help="probe a trained run again",
        description="Class kNN and linear, domain kNN and linear, and leave-one-domain-out "
        "accuracy of a run's frozen backbone; writes eval.json.",
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.set_defaults(handler=cmd_eval)

    p = verbs.add_parser(
        "compare",
        help="the alpha - beta sweep over seeds: table, results.json, sweep.png",
        description="Train and probe every method (<loss> or <loss>@<alpha-beta>) with several "
        "seeds; print the table and write results.json, table.md, sweep.png and a sample grid "
        "per domain into --out. Finished runs are reused and interrupted ones resumed.",
        epilog=EPILOG_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(add_run_options(p, single_loss=False), single=False)
    add_compare_options(
        p,
        names="methods",
        names_help="default: infonce and gca-ince, gca-uot at alpha - beta -0.5, -0.25, 0, "
        "0.25, 0.5 (<loss>@<alpha-beta>)",
        per="method",
        default_out="runs/domains-compare",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs trained at once, one process and one thread each (default: the CPU cores, "
        "at most 2)",
    )
    p.set_defaults(handler=cmd_compare, resume_hint="the same `otcl domains compare` command")
    group.set_defaults(handler=lambda args: group.print_help() or 2)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import Config
    from .evaluate import evaluate_run
    from .trainer import DomainTrainer

    trainer, s = run_train(args, Config, DomainTrainer, TRAIN_FLAGS)
    r = evaluate_run(trainer.out, device=trainer.cfg.train.device, data=trainer.data)
    print(_describe(r))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    print(_describe(evaluate_run(args.run, device=args.device)))
    return 0


def _describe(r: dict[str, Any]) -> str:
    return (
        f"{r['loss_name']} (alpha {r['alpha']:g}, beta {r['beta']:g}): class kNN "
        f"{100 * r['knn']:.1f}%, linear {100 * r['linear']:.1f}%; domain linear "
        f"{100 * r['domain']:.1f}% (chance {100 * r['domain_chance']:.0f}%); leave-one-domain-out "
        f"{100 * r['lodo']:.1f}% -> {r['run']}/eval.json"
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from ..commands import check_loss_params
    from ..compare import default_jobs
    from .compare import METHODS, parse_method
    from .config import Config
    from .sweep import sweep

    cfg = config_from_args(args, Config, FLAGS)
    shared, specific = loss_params(args.loss_param, per_loss=True)
    if specific:
        raise ValueError("--loss-param: LOSS:KEY is not offered here; give KEY=VALUE for all")
    cfg.loss.params.update(shared)
    methods = name_list(args.methods, METHODS)
    for m in methods:
        check_loss_params(parse_method(m)[0], cfg.loss.params)
    jobs = args.jobs if args.jobs is not None else default_jobs(cfg.train.device)
    sweep(cfg, methods, args.seeds, args.out, jobs=jobs, plot=not args.no_plot)
    return 0
