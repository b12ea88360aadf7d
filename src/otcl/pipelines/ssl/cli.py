"""``otcl train``, ``otcl eval`` and ``otcl compare``: the self-supervised image pipeline's verbs."""

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
  otcl train                                   # InfoNCE on the bundled digits, a few seconds
  otcl train --loss gca-uot --dataset cifar10 --epochs 100 --device cuda --out runs/x
  otcl train --loss gca-uot --loss-param rho=0.5 --loss-param iters=20
  otcl train --dataset cifar10 --data-dir cifar10-jpeg.tar.gz   # local ImageFolder copy
  otcl train --config my.yaml --set optim.lr=0.03
  otcl train --resume runs/x                   # continue an interrupted run
"""

EPILOG_COMPARE = """examples:
  otcl compare                                 # default losses on digits, 3 seeds, minutes on CPU
  otcl compare --losses infonce,gca-ince,gca-uot,iot-uni --seeds 3 --out runs/cmp
  otcl compare --dataset cifar10 --data-dir cifar10-jpeg.tar.gz --epochs 200 --device cuda
  otcl compare --loss-param temperature=0.2 --loss-param gca-uot:rho=0.5
"""

#: the image pipeline's own flags: (argparse attribute, config setting)
FLAGS = (
    ("dataset", "data.dataset"),
    ("data_dir", "data.data_dir"),
    ("skip_corrupt", "data.skip_corrupt"),
)


def _add_data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--dataset",
        metavar="NAME",
        help="digits (default), cifar10, cifar100, stl10, svhn, imagefolder",
    )
    g.add_argument(
        "--data-dir",
        metavar="PATH",
        help="ImageFolder directory or .tar.gz of one (train/<class>/*, test/<class>/*); "
        "for torchvision datasets without a local copy: the download root",
    )
    g.add_argument(
        "--skip-corrupt",
        action="store_true",
        default=None,
        help="skip unreadable images with a warning instead of failing",
    )


def add_parser(sub: Any) -> None:
    """Add ``train``, ``eval`` and ``compare`` to the ``otcl`` subcommands ``sub``."""
    p = sub.add_parser(
        "train",
        help="train an image encoder with one loss (self-supervised)",
        description="Self-supervised (SimCLR-style) training of an encoder with any otcl loss. "
        "Writes config.yaml, checkpoint.pt, metrics.jsonl and summary.json into --out.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_options(add_run_options(p, single_loss=True))
    add_train_options(p, "runs/<loss>-<dataset>-s<seed>")
    p.add_argument("--eval", action="store_true", help="run `otcl eval` on the run when done")
    p.set_defaults(handler=cmd_train, distributed=True, resume_hint="otcl train --resume {run}")

    p = sub.add_parser(
        "eval",
        help="kNN and linear-probe accuracy of a trained run",
        description="Evaluate a run's checkpoint on frozen features: weighted kNN (cosine, "
        "temperature-weighted votes) and a linear probe (accuracy after the final epoch). "
        "Writes eval.json into the run directory.",
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--device", default="auto")
    p.add_argument("--knn-k", type=int, metavar="K", help="neighbours (default: the run's config)")
    p.add_argument("--knn-t", type=float, metavar="T", help="vote temperature (default 0.1)")
    p.add_argument("--linear-epochs", type=int, metavar="N", help="linear-probe epochs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser(
        "compare",
        help="train several losses under one budget and tabulate them",
        description="Train and evaluate each loss with several seeds under the same settings; "
        "print a table (mean +- std of kNN and linear-probe accuracy, seconds per epoch) and "
        "write results.json, table.md, accuracy.png and curves.png into --out. Finished runs "
        "are reused and interrupted ones resumed.",
        epilog=EPILOG_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_options(add_run_options(p, single_loss=False))
    add_compare_options(
        p,
        names="losses",
        names_help="comma-separated loss names (default: infonce,iot-uni,gca-ince,gca-rince,"
        "gca-uot,hcl,ot-hard,dmm)",
        per="loss",
        default_out="runs/compare",
    )
    p.set_defaults(
        handler=cmd_compare,
        distributed=True,
        resume_hint="run the same `otcl compare` command again",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .config import Config
    from .trainer import SSLTrainer

    trainer, summary = run_train(args, Config, SSLTrainer, FLAGS)
    cfg = trainer.cfg
    print(
        f"{cfg.loss.name}: {summary['epochs']} epochs, final loss {summary['final_loss']:.4f}, "
        f"kNN {summary['knn']:.4f}, {summary['seconds_per_epoch']:.2f} s/epoch, "
        f"{summary['views_per_s']:.0f} views/s -> {trainer.out}"
    )
    if args.eval and trainer.is_main:  # under torchrun: rank 0 evaluates
        from .evaluate import evaluate_run

        r = evaluate_run(
            trainer.out,
            device=cfg.train.device,
            data=trainer.data,  # type: ignore[attr-defined]
            progress=cfg.train.progress,
        )
        print(f"eval: kNN {r['knn']:.4f}, linear probe {r['linear']:.4f}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    r = evaluate_run(
        args.run,
        device=args.device,
        linear_epochs=args.linear_epochs,
        knn_k=args.knn_k,
        knn_t=args.knn_t,
        progress=not args.no_progress,
    )
    print(
        f"{r['loss_name']} on {r['dataset']} (epoch {r['epoch']}): kNN (k={r['knn_k']}, "
        f"t={r['knn_t']}) {100 * r['knn']:.2f}%, linear probe ({r['linear_epochs']} epochs, final) "
        f"{100 * r['linear']:.2f}%  -> {args.run}/eval.json"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ...losses import available
    from .compare import DEFAULT_LOSSES, compare
    from .config import Config

    losses = name_list(args.losses, DEFAULT_LOSSES)
    # an unknown loss is named by compare, with the choices
    cfg, specific = compare_config(args, Config, FLAGS, losses, checked=available().__contains__)
    compare(cfg, losses, args.seeds, args.out, loss_params=specific, plot=not args.no_plot)
    return 0
