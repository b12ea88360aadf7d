"""``otcl multimodal train | eval | compare``: the multimodal pipeline's verbs."""

from __future__ import annotations

import argparse
from typing import Any

from ..commands import (
    add_compare_options,
    add_run_options,
    add_train_options,
    compare_config,
    name_list,
    run_train,
)

__all__ = ["add_parser"]

EPILOG_TRAIN = """examples:
  otcl multimodal train                              # digits in 4 patch-modalities, InfoNCE
  otcl multimodal train --loss gca-uot --objective pairwise --out runs/mm
  otcl multimodal train --loss dmm --loss-param base=gca-uot --out runs/mm-dmm
  otcl multimodal train --dataset movielens --data-dir ml-100k/ --loss gca-uot
  otcl multimodal train --dataset mosei --data-dir mosei_senti_data.pkl --epochs 40
  otcl multimodal train --dataset npz --data-dir feats.npz --modalities video+text
  otcl multimodal train --resume runs/mm               # continue an interrupted run
"""

EPILOG_COMPARE = """examples:
  otcl multimodal compare --out runs/mm-cmp          # infonce, gca-uot, each +-DMM, 3 seeds
  otcl multimodal compare --losses infonce,gca-uot,iot --dmm both --seeds 5
  otcl multimodal compare --dataset movielens --data-dir ml-100k/ --objective pairwise
  otcl multimodal compare --loss-param gca-uot:rho=0.5 --loss-param dmm:margin=0.3
"""

#: the pipeline's own flags: (argparse attribute, config setting)
FLAGS = (
    ("dataset", "data.dataset"),
    ("data_dir", "data.data_dir"),
    ("patches", "data.patches"),
    ("modalities", "data.modalities"),
    ("objective", "objective.kind"),
    ("fusion", "model.fusion"),
    ("missing", "eval.missing"),
)


def _add_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--dataset",
        metavar="NAME",
        help="digits (default: 8x8 digits in --patches patch-modalities), mnist, cifar10, "
        "cifar100, svhn, imagefolder, movielens, mosi, mosei, npz",
    )
    g.add_argument(
        "--data-dir",
        metavar="PATH",
        help="movielens: the ml-100k folder; mosi/mosei: the processed pickle (or its folder); "
        "npz: a .npz file or a folder with train.npz and test.npz; images: as `otcl train`",
    )
    g.add_argument("--patches", type=int, metavar="K", help="image patches = modalities (4)")
    g.add_argument("--modalities", metavar="A+B", help="npz: the arrays to use, joined by +")
    g.add_argument(
        "--objective", choices=("joint", "pairwise", "both"), help="what is aligned (joint)"
    )
    g.add_argument("--fusion", choices=("mean", "attention"), help="joint representation (mean)")
    g.add_argument(
        "--missing",
        choices=("drop", "zero"),
        help="missing modalities at test time: dropped (default) or zero-filled",
    )


def add_parser(sub: Any) -> None:
    """Add the ``multimodal`` group (``train``, ``eval``, ``compare``) to ``otcl``."""
    group = sub.add_parser(
        "multimodal",
        help="M >= 2 aligned modalities: cross-modal retrieval, robustness to missing ones",
        description="Multimodal contrastive learning with any otcl loss (+- DMM): one encoder "
        "per modality into a shared space, pairwise or joint alignment, evaluated for "
        "cross-modal retrieval and with modalities missing or noisy at test time.",
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB")

    p = verbs.add_parser(
        "train",
        help="train one multimodal model",
        description="Train a multimodal model with one loss; evaluates it at the end "
        "(robustness.json). Writes config.yaml, checkpoint.pt, metrics.jsonl, summary.json.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(add_run_options(p, single_loss=True))
    add_train_options(p, "runs/mm-<loss>-<dataset>-s<seed>")
    p.set_defaults(
        handler=cmd_train, distributed=True, resume_hint="otcl multimodal train --resume {run}"
    )

    p = verbs.add_parser(
        "eval",
        help="evaluate a trained run again (missing modalities, noise, retrieval)",
        description="Evaluate a run's checkpoint: the probe on the joint representation for "
        "every subset of present modalities, cross-modal retrieval for every pair, and "
        "Gaussian noise at the given SNRs. Writes robustness.json (robustness-zero.json with "
        "--missing zero) into the run directory.",
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--device", default="auto")
    p.add_argument("--missing", choices=("drop", "zero"), help="default: the run's setting")
    p.add_argument("--snr-db", metavar="A,B", help="noise levels in dB, e.g. 10,0")
    p.add_argument("--probe", choices=("knn", "linear", "ridge"), help="default: the run's")
    p.set_defaults(handler=cmd_eval)

    p = verbs.add_parser(
        "compare",
        help="losses x (+-DMM) x seeds: robustness table, results.json, plots",
        description="Train and evaluate each loss with and/or without DMM, several seeds, one "
        "budget; print the summary and the missing-modality table (mean +- std) and write "
        "results.json, table.md, robustness.png and retrieval.png into --out. Finished runs are "
        "reused and interrupted ones resumed.",
        epilog=EPILOG_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(add_run_options(p, single_loss=False))
    add_compare_options(
        p,
        names="losses",
        names_help="loss names (default: infonce,gca-uot)",
        per="variant",
        default_out="runs/mm-compare",
    )
    p.add_argument(
        "--dmm", choices=("both", "on", "off"), default="both", help="with/without DMM (both)"
    )
    p.set_defaults(
        handler=cmd_compare,
        distributed=True,
        resume_hint="run the same `otcl multimodal compare` command again",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .config import MultimodalConfig
    from .trainer import MultimodalTrainer

    trainer, summary = run_train(args, MultimodalConfig, MultimodalTrainer, FLAGS)
    heads = ", ".join(
        f"{k} {v:.4f}" for k, v in summary.items() if k.startswith(("full_", "missing_"))
    )
    print(
        f"{trainer.tag}: {summary['epochs']} epochs, final loss {summary['final_loss']:.4f}, "
        f"{heads}{', ' if heads else ''}pairwise R@1 {summary['R@1']:.4f}, "
        f"{summary['seconds_per_epoch']:.2f} s/epoch -> {trainer.out}"
    )
    return 0


def format_report(report: dict[str, Any]) -> str:
    """One run's robustness report as a Markdown table (subsets x metrics)."""
    keys = list(report["subsets"][0]["metrics"])
    lines = [
        "| present | " + " | ".join(keys) + " | R@1 of the missing |",
        "|" + "---|" * (len(keys) + 2),
    ]
    for r in report["subsets"]:
        vals = [f"{r['metrics'][k]:.4f}" for k in keys]
        ret = f"{r['retrieval']['R@1']:.4f}" if "retrieval" in r else "-"
        lines.append(f"| {r['name']} | " + " | ".join(vals) + f" | {ret} |")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..config import parse_value
    from .trainer import evaluate_run

    over: dict[str, Any] = {}
    if args.missing:
        over["missing"] = args.missing
    if args.probe:
        over["probe"] = args.probe
    if args.snr_db:
        v = parse_value(args.snr_db)
        v = v if isinstance(v, list) else [v]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ValueError(
                f"--snr-db: expected numbers (dB) joined by commas, got {args.snr_db!r}"
            )
        over["snr_db"] = tuple(float(x) for x in v)
    report = evaluate_run(args.run, device=args.device, overrides=over)
    print(format_report(report))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import DEFAULT_LOSSES, compare
    from .config import MultimodalConfig

    losses = name_list(args.losses, DEFAULT_LOSSES)
    # "dmm" is refused by compare (it is the --dmm switch)
    cfg, specific = compare_config(
        args, MultimodalConfig, FLAGS, losses, checked=lambda name: name != "dmm"
    )
    compare(
        cfg,
        losses,
        args.seeds,
        args.out,
        dmm=args.dmm,
        loss_params=specific,
        plot=not args.no_plot,
    )
    return 0
