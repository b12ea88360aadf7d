"""The multimodal pipeline, declared once (:class:`~otcl.pipelines.spec.Pipeline`):
``otcl multimodal train | eval | compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import parse_value
from ..spec import Flag, Pipeline, register
from . import compare as cmp
from .config import MultimodalConfig, check, resolve
from .trainer import (
    ROBUSTNESS,
    MultimodalTrainer,
    evaluate_run,
    load_data,
    make_model,
    variant_name,
)

__all__ = ["SPEC", "format_report"]

EPILOG_TRAIN = """examples:
  otcl multimodal train                              # digits in 4 patch-modalities, InfoNCE
  otcl multimodal train --loss gca-uot --objective pairwise --out runs/mm
  otcl multimodal train --loss gca-uot --dmm --out runs/mm-dmm   # DMM around gca-uot
  otcl multimodal train --dataset movielens --data-dir ml-100k/ --loss gca-uot
  otcl multimodal train --dataset mosei --data-dir mosei_senti_data.pkl --epochs 40
  otcl multimodal train --dataset npz --data-dir feats.npz --modalities video+text
  otcl multimodal train --resume runs/mm               # continue an interrupted run
"""

EPILOG_COMPARE = """examples:
  otcl multimodal compare --out runs/mm-cmp          # infonce, gca-uot, each +-DMM, 3 seeds
  otcl multimodal compare --methods infonce,gca-uot,iot,iot+dmm --seeds 5
  otcl multimodal compare --dataset movielens --data-dir ml-100k/ --objective pairwise
  otcl multimodal compare --loss-param gca-uot:rho=0.5 --loss-param dmm:margin=0.3
"""

_TC = ("train", "compare")
FLAGS = (
    Flag("--dataset", "data.dataset", {"metavar": "NAME", "help": "digits (default: 8x8 digits "
         "in --patches patch-modalities), mnist, cifar10, cifar100, svhn, imagefolder, "
         "movielens, mosi, mosei, npz"}),
    Flag("--data-dir", "data.data_dir", {"metavar": "PATH", "help": "movielens: the ml-100k "
         "folder; mosi/mosei: the processed pickle (or its folder); npz: a .npz file or a folder "
         "with train.npz and test.npz; images: as `otcl train`"}),
    Flag("--patches", "data.patches", {"type": int, "metavar": "K",
                                        "help": "image patches = modalities (4)"}),
    Flag("--modalities", "data.modalities", {"metavar": "A+B",
                                              "help": "npz: the arrays to use, joined by +"}),
    Flag("--objective", "objective.kind", {"choices": ("joint", "pairwise", "both"),
                                            "help": "what is aligned (joint)"}),
    Flag("--fusion", "model.fusion", {"choices": ("mean", "attention"),
                                       "help": "joint representation (mean)"}),
    Flag("--missing", "eval.missing", {"choices": ("drop", "zero"), "help": "missing modalities "
         "at test time: dropped (default) or zero-filled"}, _TC),
    Flag("--missing", None, {"choices": ("drop", "zero"), "help": "default: the run's setting"},
         ("eval",)),
    Flag("--snr-db", None, {"metavar": "A,B", "help": "noise levels in dB, e.g. 10,0"}, ("eval",)),
    Flag("--probe", None, {"choices": ("knn", "linear", "ridge"), "help": "default: the run's"},
         ("eval",)),
)  # fmt: skip


def _check(cfg: MultimodalConfig) -> None:
    from ...losses import build

    check(cfg)
    build(cfg.loss.name, **cfg.loss.params)


def _evaluate(
    run_dir: str | Path,
    *,
    device: str = "auto",
    data: Any = None,
    progress: bool = True,
    missing: str | None = None,
    probe: str | None = None,
    snr_db: Any = None,
) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if missing:
        over["missing"] = missing
    if probe:
        over["probe"] = probe
    if snr_db is not None:
        v = parse_value(snr_db) if isinstance(snr_db, str) else snr_db
        v = v if isinstance(v, (list, tuple)) else [v]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ValueError(f"--snr-db: expected numbers (dB) joined by commas, got {snr_db!r}")
        over["snr_db"] = tuple(float(x) for x in v)
    return evaluate_run(run_dir, device=device, data=data, overrides=over)


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


def _describe_train(trainer: Any, s: dict[str, Any]) -> str:
    heads = ", ".join(f"{k} {v:.4f}" for k, v in s.items() if k.startswith(("full_", "missing_")))
    return (
        f"{trainer.tag}: {s['epochs']} epochs, final loss {s['final_loss']:.4f}, "
        f"{heads}{', ' if heads else ''}pairwise R@1 {s['R@1']:.4f}, "
        f"{s['seconds_per_epoch']:.2f} s/epoch -> {trainer.out}"
    )


SPEC = register(
    Pipeline(
        name="multimodal",
        help="M >= 2 aligned modalities: cross-modal retrieval, robustness to missing ones",
        config_cls=MultimodalConfig,
        resolve=resolve,
        check=_check,
        load_data=load_data,
        build_model=make_model,
        trainer_cls=MultimodalTrainer,
        methods=cmp.DEFAULT_LOSSES,
        method_config=cmp.method_config,
        method_name=variant_name,
        record=cmp.record,
        evaluate=_evaluate,
        eval_file=ROBUSTNESS,
        finished_files=(ROBUSTNESS,),
        describe_eval=format_report,
        describe_train=_describe_train,
        info=cmp.info,
        table=cmp.format_tables,
        plot=cmp.plot_results,
        plot_files=("robustness.png", "retrieval.png"),
        delta_metrics=("full_accuracy", "missing_accuracy", "full_acc2", "R@1", "R@10"),
        flags=FLAGS,
        supports_compile=False,
        examples={"train": EPILOG_TRAIN, "compare": EPILOG_COMPARE},
    )
)
