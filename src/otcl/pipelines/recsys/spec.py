"""The recommendation pipeline, declared once (:class:`~otcl.pipelines.spec.Pipeline`):
``otcl recsys train | eval | compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..engine.checkpoint import load_checkpoint
from ..files import atomic_write_text
from ..spec import Flag, Pipeline, register
from . import compare as cmp
from .config import RecsysConfig, resolve
from .trainer import (
    RecsysTrainer,
    build_recsys_model,
    evaluate_model,
    load_data,
    load_run,
    validate,
)

__all__ = ["SPEC", "evaluate_run"]

EPILOG_TRAIN = """examples:
  otcl recsys train --data-dir ml-100k/                       # CML (DMM's base) on MovieLens 100K
  otcl recsys train --data-dir ml-100k/ --dmm                 # CML + DMM
  otcl recsys train --data-dir ml-100k/ --model two-tower --loss gca-uot --dmm
  otcl recsys train --model two-tower --features ""           # IDs only; downloads ml-100k
  otcl recsys train --dataset csv --data-dir ratings.csv --split temporal
  otcl recsys train --resume runs/recsys/cml+dmm-ml-100k-s0
"""

EPILOG_COMPARE = """examples:
  otcl recsys compare --data-dir ml-100k/ --out runs/recsys    # baselines, CML +-DMM, two-tower +-DMM
  otcl recsys compare --data-dir ml-100k/ --methods cml,cml+dmm --seeds 5
  otcl recsys compare --dataset ml-1m --epochs 50 --device cuda
"""

FLAGS = (
    Flag("--dataset", "data.dataset", {"metavar": "NAME", "help": "ml-100k (default), ml-1m or csv"}),
    Flag("--data-dir", "data.data_dir", {"metavar": "PATH", "help": "a GroupLens folder (u.data "
         "or ratings.dat inside) or, for csv, the file user_id,item_id,rating[,timestamp]; "
         "without it ml-100k/ml-1m are downloaded and cached"}),
    Flag("--split", "data.split", {"choices": ("dmm", "temporal"), "help": "dmm (default) or temporal"}),
    Flag("--cold-items", "data.cold_items", {"type": float, "metavar": "FRAC", "help": "fraction "
         "of items held out for the cold-start evaluation (train: 0, compare: 0.1)"}),
    Flag("--model", "model.kind", {"choices": ("cml", "two-tower", "mf"), "help": "default cml"},
         ("train",)),
    Flag("--dim", "model.dim", {"type": int, "metavar": "D", "help": "embedding dimension"}),
    Flag("--features", "model.features", {"metavar": "LIST", "help": "side features: all, '' "
         "(IDs only) or a list of age,gender,occupation,genres,year,title"}),
    Flag("--text", "model.text", {"choices": ("hash", "minilm"),
                                  "help": "title text: hashed words or MiniLM"}),
    Flag("--negatives", "model.negatives", {"type": int, "metavar": "K", "help": "sampled negatives"}),
    Flag("--users", "eval.users", {"choices": ("positive", "all"), "help": "average over users "
         "with a relevant test item (default) or all test users (DMM)"}),
)  # fmt: skip


def _check(cfg: RecsysConfig) -> None:
    validate(cfg)


def evaluate_run(
    run_dir: str | Path, *, device: str = "cpu", data: Any = None, progress: bool = True
) -> dict[str, Any]:
    """Rank the test items with a run's checkpoint again; writes ``<run_dir>/eval.json``."""
    cfg, model, _, s, prior = load_run(run_dir, device)
    metrics = evaluate_model(model, s, cfg, device=next(model.parameters()).device, prior=prior)
    st = load_checkpoint(run_dir)
    sel = st.get("selection") or {}  # load_run ranks with the validation-selected weights
    epoch = int(sel["best_epoch"]) if sel.get("weights") is not None else int(st["epoch"])
    report = {"run": str(run_dir), "method": cmp.method_name(cfg), "epoch": epoch,
              **metrics}  # fmt: skip
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps(report, indent=2))
    return report


def _describe_eval(r: dict[str, Any]) -> str:
    keys = [k for k in ("warm/ndcg@10", "warm/recall@10", "warm/hr@10", "warm/map@10") if k in r]
    metrics = ", ".join(f"{k.split('/')[1]} {r[k]:.4f}" for k in keys)
    return f"{r['method']} (epoch {r['epoch']}): {metrics} -> {r['run']}/eval.json"


def _describe_train(trainer: Any, s: dict[str, Any]) -> str:
    keys = [k for k in ("warm/ndcg@10", "warm/recall@10", "warm/hr@10", "warm/map@10") if k in s]
    metrics = ", ".join(f"{k.split('/')[1]} {s[k]:.4f}" for k in keys)
    best = f" (best {s['best_epoch']})" if "best_epoch" in s else ""
    return f"{trainer.tag}: {s['epochs']} epochs{best}, {metrics} -> {trainer.out}"


def with_dmm(cfg: RecsysConfig) -> RecsysConfig:
    """``--dmm``: the model's loss wrapped in DMM (settings: the ``dmm`` section)."""
    cfg.dmm.enabled = True
    return cfg


def _build(cfg: RecsysConfig, data: Any) -> Any:
    return build_recsys_model(cfg, data[0])


SPEC = register(
    Pipeline(
        name="recsys",
        help="recommendation: CML and two-tower models with any otcl loss, +-DMM",
        config_cls=RecsysConfig,
        resolve=resolve,
        check=_check,
        load_data=load_data,
        build_model=_build,
        trainer_cls=RecsysTrainer,
        methods=cmp.DEFAULT_METHODS,
        method_config=cmp.method_config,
        method_name=cmp.method_name,
        record=cmp.record,
        evaluate=evaluate_run,
        eval_file="eval.json",
        describe_eval=_describe_eval,
        describe_train=_describe_train,
        with_dmm=with_dmm,
        method_losses=cmp.method_losses,
        baseline=cmp.baseline,
        is_baseline=cmp.is_baseline,
        skip=cmp.skip,
        prepare_compare=cmp.prepare_compare,
        info=cmp.info,
        table=cmp.format_table,
        plot=cmp.plot_results,
        plot_files=("recsys.png", "recsys-val.png"),
        delta_metrics=tuple(f"warm/{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)),
        flags=FLAGS,
        parallel_by_default=True,
        cost=cmp.cost,
        describe_run=cmp.describe_run,
        examples={"train": EPILOG_TRAIN, "compare": EPILOG_COMPARE},
    )
)
