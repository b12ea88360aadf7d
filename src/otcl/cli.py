"""The ``otcl`` command line: ``train``, ``eval``, ``compare`` and ``losses``.

Every setting comes from (in increasing priority) the dataset preset, a ``--config`` YAML/TOML
file, the named flags, and ``--set section.key=value``. User mistakes end with one line
``otcl: error: ...`` and exit status 2; Ctrl-C during training saves a checkpoint (exit 130).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__

__all__ = ["main", "build_parser"]

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


def _add_run_options(p: argparse.ArgumentParser, *, single_loss: bool) -> None:
    g = p.add_argument_group("run settings (override the config file and the dataset preset)")
    g.add_argument("--config", metavar="FILE", help="YAML or TOML config file")
    if single_loss:
        g.add_argument("--loss", metavar="NAME", help="loss name (see `otcl losses`)")
    g.add_argument(
        "--loss-param",
        action="append",
        default=[],
        metavar="[LOSS:]KEY=VALUE",
        help="a loss parameter, e.g. temperature=0.5 (repeatable)"
        + ("; LOSS: limits it to one loss" if not single_loss else ""),
    )
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
    g.add_argument("--epochs", type=int, metavar="N")
    g.add_argument("--batch-size", type=int, metavar="N", help="pairs per step (2N views)")
    g.add_argument("--lr", type=float, metavar="LR", help="learning rate per 128 samples")
    g.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, metavar="N")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), help="autocast dtype")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the encoder")
    g.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic algorithms"
    )
    g.add_argument(
        "--skip-corrupt",
        action="store_true",
        default=None,
        help="skip unreadable images with a warning instead of failing",
    )
    g.add_argument("--no-progress", action="store_true", default=None, help="no progress bars")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any config setting, e.g. --set model.head_hidden=2048 --set eval.knn_every=10",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otcl",
        description="Contrastive representation learning as optimal transport: train, "
        "evaluate and compare otcl losses on images.",
    )
    parser.add_argument("--version", action="version", version=f"otcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train an encoder with one loss",
        description="Self-supervised (SimCLR-style) training of an encoder with any otcl loss. "
        "Writes config.yaml, checkpoint.pt, metrics.jsonl and summary.json into --out.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(p, single_loss=True)
    p.add_argument(
        "--out", metavar="DIR", help="run directory (default runs/<loss>-<dataset>-s<seed>)"
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (its saved config is used; "
        "flags given here override it, e.g. --epochs to extend)",
    )
    p.add_argument("--eval", action="store_true", help="run `otcl eval` on the run when done")

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
    _add_run_options(p, single_loss=False)
    p.add_argument(
        "--losses",
        metavar="A,B,...",
        help="comma-separated loss names (default: infonce,iot-uni,gca-ince,gca-rince,gca-uot,"
        "hcl,ot-hard,dmm)",
    )
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per loss (default 3)")
    p.add_argument("--out", default="runs/compare", metavar="DIR", help="default runs/compare")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")

    p = sub.add_parser("losses", help="list the losses and their parameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The named flags the user gave, as ``section.key=value`` overrides."""
    table = [
        ("loss", "loss.name"),
        ("dataset", "data.dataset"),
        ("data_dir", "data.data_dir"),
        ("epochs", "train.epochs"),
        ("batch_size", "train.batch_size"),
        ("lr", "optim.lr"),
        ("device", "train.device"),
        ("seed", "train.seed"),
        ("amp", "train.amp"),
        ("compile", "train.compile"),
        ("deterministic", "train.deterministic"),
        ("skip_corrupt", "data.skip_corrupt"),
    ]
    out = []
    for attr, key in table:
        v = getattr(args, attr, None)
        if v is not None:
            out.append(f"{key}={json.dumps(v) if not isinstance(v, str) else v}")
    if getattr(args, "no_progress", None):
        out.append("train.progress=false")
    return out


def _loss_params(items: list[str], per_loss: bool) -> tuple[dict[str, Any], dict[str, dict]]:
    from .config import parse_value

    shared: dict[str, Any] = {}
    specific: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--loss-param: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        target = shared
        if ":" in key:
            if not per_loss:
                raise ValueError(f"--loss-param: LOSS:KEY is for `otcl compare`, got {item!r}")
            loss, key = key.split(":", 1)
            target = specific.setdefault(loss.strip(), {})
        target[key.strip()] = parse_value(raw)
    return shared, specific


def _config(args: argparse.Namespace, base=None):
    from .config import Config, apply_overrides, load_config

    cfg = base if base is not None else (load_config(args.config) if args.config else Config())
    if base is not None and args.config:
        raise ValueError("--config: not allowed with --resume (the run's saved config is used)")
    cfg = apply_overrides(cfg, _flag_overrides(args) + list(args.set))
    return cfg


def _check_loss_params(name: str, params: dict[str, Any]) -> None:
    from .losses import build

    build(name, **params)  # raises ValueError naming the invalid parameter


def cmd_train(args: argparse.Namespace) -> int:
    from .config import Config
    from .train import Trainer, load_checkpoint

    shared, _ = _loss_params(args.loss_param, per_loss=False)
    if args.resume:
        if args.out and args.out != args.resume:
            raise ValueError(
                "--out: not allowed with --resume (the run continues in its directory)"
            )
        st = load_checkpoint(args.resume)
        cfg = _config(args, Config.from_dict(st["config"]))
        cfg.loss.params.update(shared)
        out = args.resume
    else:
        cfg = _config(args)
        cfg.loss.params.update(shared)
        out = args.out
    _check_loss_params(cfg.loss.name, cfg.loss.params)
    trainer = Trainer(cfg, out, resume=bool(args.resume))
    summary = trainer.fit()
    print(
        f"{cfg.loss.name}: {summary['epochs']} epochs, final loss {summary['final_loss']:.4f}, "
        f"kNN {summary['knn']:.4f}, {summary['seconds_per_epoch']:.2f} s/epoch, "
        f"{summary['views_per_s']:.0f} views/s -> {trainer.out}"
    )
    if args.eval:
        from .evaluate import evaluate_run

        r = evaluate_run(
            str(trainer.out),
            device=cfg.train.device,
            data=trainer.data,
            progress=trainer.cfg.train.progress,
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
    from .compare import DEFAULT_LOSSES, compare

    cfg = _config(args)
    shared, specific = _loss_params(args.loss_param, per_loss=True)
    cfg.loss.params.update(shared)
    losses = (
        [s.strip() for s in args.losses.split(",") if s.strip()] if args.losses else DEFAULT_LOSSES
    )
    from .losses import available

    for name in losses:
        if name in available():
            _check_loss_params(name, {**cfg.loss.params, **specific.get(name, {})})
    compare(
        cfg,
        losses,
        args.seeds,
        args.out,
        loss_params=specific,
        plot=not args.no_plot,
    )
    return 0


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
    if args.command is None:
        parser.print_help()
        return 2
    from .train import TrainingDiverged, TrainingInterrupted

    handlers = {"train": cmd_train, "eval": cmd_eval, "compare": cmd_compare, "losses": cmd_losses}
    try:
        return handlers[args.command](args)
    except TrainingInterrupted as e:
        again = (
            "run the same `otcl compare` command again"
            if args.command == "compare"
            else f"otcl train --resume {e.path.parent}"
        )
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
