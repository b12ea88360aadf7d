"""``otcl recsys train`` and ``otcl recsys compare``: the recommendation pipeline's verbs."""

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
  otcl recsys train --data-dir ml-100k/                       # CML (DMM's base) on MovieLens 100K
  otcl recsys train --data-dir ml-100k/ --dmm                 # CML + DMM
  otcl recsys train --data-dir ml-100k/ --model two-tower --loss gca-uot --dmm
  otcl recsys train --model two-tower --features ""           # IDs only; downloads ml-100k
  otcl recsys train --dataset csv --data-dir ratings.csv --split temporal
  otcl recsys train --resume runs/recsys-cml-triplet-s0
"""

EPILOG_COMPARE = """examples:
  otcl recsys compare --data-dir ml-100k/ --out runs/recsys    # baselines, CML +-DMM, two-tower +-DMM
  otcl recsys compare --data-dir ml-100k/ --methods cml,cml+dmm --seeds 5
  otcl recsys compare --dataset ml-1m --epochs 50 --device cuda
"""

#: the recsys flags: (argparse attribute, config setting)
FLAGS = (
    ("dataset", "data.dataset"),
    ("data_dir", "data.data_dir"),
    ("split", "data.split"),
    ("cold_items", "data.cold_items"),
    ("model", "model.kind"),
    ("dim", "model.dim"),
    ("features", "model.features"),
    ("text", "model.text"),
    ("negatives", "model.negatives"),
    ("users", "eval.users"),
)


def _add_options(g: argparse._ArgumentGroup, *, single: bool) -> None:
    g.add_argument("--dataset", metavar="NAME", help="ml-100k (default), ml-1m or csv")
    g.add_argument(
        "--data-dir",
        metavar="PATH",
        help="a GroupLens folder (u.data or ratings.dat inside) or, for csv, the file "
        "user_id,item_id,rating[,timestamp]; without it ml-100k/ml-1m are downloaded and cached",
    )
    g.add_argument("--split", choices=("dmm", "temporal"), help="dmm (default) or temporal")
    g.add_argument(
        "--cold-items",
        type=float,
        metavar="FRAC",
        help="fraction of items held out for the cold-start evaluation (train: 0, compare: 0.1)",
    )
    if single:
        g.add_argument("--model", choices=("cml", "two-tower", "mf"), help="default cml")
        g.add_argument("--dmm", action="store_true", default=None, help="wrap the loss in DMM")
    g.add_argument("--dim", type=int, metavar="D", help="embedding dimension")
    g.add_argument(
        "--features",
        metavar="LIST",
        help="side features: all, '' (IDs only) or a list of age,gender,occupation,genres,"
        "year,title",
    )
    g.add_argument("--text", choices=("hash", "minilm"), help="title text: hashed words or MiniLM")
    g.add_argument("--negatives", type=int, metavar="K", help="sampled negatives")
    g.add_argument(
        "--users",
        choices=("positive", "all"),
        help="average over users with a relevant test item (default) or all test users (DMM)",
    )


def add_parser(sub: Any) -> None:
    """Add ``recsys`` with ``train`` and ``compare`` to the ``otcl`` subcommands ``sub``."""
    group = sub.add_parser(
        "recsys",
        help="recommendation: CML and two-tower models with any otcl loss, +-DMM",
        description="Implicit-feedback recommendation on MovieLens or a ratings CSV: CML and "
        "two-tower models trained with otcl losses, with and without DMM, ranked over all items.",
    )
    verbs = group.add_subparsers(dest="recsys_command", metavar="COMMAND")

    p = verbs.add_parser(
        "train",
        help="train and evaluate one model",
        description="Train one model; writes config.yaml, checkpoint.pt, metrics.jsonl and "
        "summary.json (Recall, nDCG, HitRatio, MAP at 1/5/10/20) into --out.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(add_run_options(p, single_loss=True), single=True)
    add_train_options(p, "runs/recsys-<model>-<loss>[-dmm]-s<seed>")
    p.set_defaults(
        handler=cmd_train, distributed=True, resume_hint="otcl recsys train --resume {run}"
    )

    p = verbs.add_parser(
        "compare",
        help="baselines, CML +-DMM and two-tower +-DMM over seeds, one table",
        description="Train and evaluate every method with several seeds on one split, each "
        "trained method at its validation-best epoch; print a table (nDCG and Recall, mean +- "
        "std, the best epochs), the DMM deltas and the robustness drops, and write "
        "results.json, table.md, recsys.png and recsys-val.png into --out. Finished runs are "
        "reused and interrupted ones resumed.",
        epilog=EPILOG_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(add_run_options(p, single_loss=False), single=False)
    add_compare_options(
        p,
        names="methods",
        names_help="default: popularity,ease,itemknn,implicit-als,implicit-bpr,mf-bpr,cml,"
        "cml+dmm,tt-infonce,tt-infonce+dmm,tt-gca-uot,tt-gca-uot+dmm (tt-<loss>: two-tower with "
        "any otcl loss)",
        per="method",
        default_out="runs/recsys-compare",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs trained at once, one process and one thread each (default: the CPU cores, "
        "at most 2; 1 = one after the other in this process)",
    )
    p.set_defaults(handler=cmd_compare, resume_hint="the same `otcl recsys compare` command")
    group.set_defaults(handler=lambda args: group.print_help() or 2)


def _flags(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    extra: tuple[tuple[str, str], ...] = ()
    if getattr(args, "dmm", None):
        extra = (("dmm", "dmm.enabled"),)
    return FLAGS + extra


def cmd_train(args: argparse.Namespace) -> int:
    from .config import RecsysConfig
    from .trainer import RecsysTrainer, validate

    # its cml and mf models train with losses of their own: checked by validate, not built
    trainer, summary = run_train(args, RecsysConfig, RecsysTrainer, _flags(args), validate=validate)
    ks = [
        k for k in ("warm/ndcg@10", "warm/recall@10", "warm/hr@10", "warm/map@10") if k in summary
    ]
    metrics = ", ".join(f"{k.split('/')[1]} {summary[k]:.4f}" for k in ks)
    best = f" (best {summary['best_epoch']})" if "best_epoch" in summary else ""
    print(f"{trainer.tag}: {summary['epochs']} epochs{best}, {metrics} -> {trainer.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..compare import default_jobs
    from .compare import DEFAULT_METHODS, compare
    from .config import RecsysConfig

    cfg = config_from_args(args, RecsysConfig, FLAGS)
    if args.cold_items is None and not any(s.startswith("data.cold_items") for s in args.set):
        cfg.data.cold_items = 0.1
    shared, specific = loss_params(args.loss_param, per_loss=True)
    methods = name_list(args.methods, DEFAULT_METHODS)
    per_loss = {}
    for m in methods:
        if m.startswith("tt-"):
            loss = m[3:].removesuffix("+dmm")
            per_loss[loss] = {**shared, **specific.get(loss, {}), **per_loss.get(loss, {})}
    if shared and not per_loss:
        raise ValueError("--loss-param: no two-tower method (tt-<loss>) to apply it to")
    stray = sorted(set(specific) - set(per_loss))
    if stray:
        raise ValueError(f"--loss-param: parameters given for losses not compared: {stray}")
    jobs = args.jobs if args.jobs is not None else default_jobs(cfg.train.device)
    compare(
        cfg,
        methods,
        args.seeds,
        args.out,
        loss_params=per_loss,
        plot=not args.no_plot,
        jobs=jobs,
    )
    return 0
