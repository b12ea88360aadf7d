"""``otcl recsys compare``: baselines, CML ±DMM and two-tower ±DMM over seeds, one table.

Every method and seed is one run directory ``<out>/<method>/seed<k>``, trained by the shared
comparison (:mod:`otcl.pipelines.comparison`): trained methods are
:class:`~otcl.pipelines.recsys.trainer.RecsysTrainer` runs (finished ones are reused, interrupted
ones resumed from their checkpoint), the baselines without a training loop (popularity, EASE and
ItemKNN tuned on the validation pairs, ``implicit``'s ALS and BPR) write their ``summary.json``
atomically. Every trained run is reported at its validation-best epoch (``best_epoch``). The
split is the same for every run (``data.split_seed``); seeds change the model's initialisation
and batches.

What is the pipeline's own is here and in two modules beside it: the method names, their
configs and the comparison's preset (:mod:`.methods`: :func:`parse_method`); a run's numbers,
the baselines' runs and the scheduling of the trained ones (this module); the table and the
plots (:mod:`.tables`: nDCG and Recall at 10 and 20, HR@10, MAP@10, the long-tail Recall@10, the
best epochs, the DMM deltas, the robustness drops, ``recsys.png`` and ``recsys-val.png``). The
names of both modules are importable from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ... import __version__
from ..compare import reuse_line
from ..comparison import compare_pipeline
from ..engine.rundir import SUMMARY
from ..files import atomic_write_text
from .baselines import ITEM_ITEM, Popularity, fit_implicit, score_metrics, tune_item_item
from .config import RecsysConfig
from .data import Split
from .methods import (
    BASELINES,
    DEFAULT_METHODS,
    is_baseline,
    method_config,
    method_losses,
    method_name,
    parse_method,
    prepare_compare,
    skip,
)
from .tables import (
    TABLE_METRICS,
    format_table,
    plot_curves,
    plot_results,
    robustness,
    validation_curves,
)

__all__ = [
    "compare",
    "DEFAULT_METHODS",
    "parse_method",
    "method_config",
    "method_name",
    "record",
    "robustness",
    "format_table",
    "plot_results",
    "plot_curves",
    # the other hooks of the pipeline's spec, and names of .methods and .tables
    "BASELINES",
    "TABLE_METRICS",
    "baseline",
    "cost",
    "describe_run",
    "info",
    "is_baseline",
    "method_losses",
    "prepare_compare",
    "skip",
    "validation_curves",
]


def cost(cfg: RecsysConfig) -> float:
    """CML's K negatives first, then the two-tower's OT losses, then InfoNCE, then MF."""
    return -({"cml": 0, "two-tower": 1, "mf": 3}[cfg.model.kind] + (cfg.loss.name == "infonce"))


def describe_run(summary: dict[str, Any]) -> str:
    score = summary.get("warm/ndcg@10")
    return "" if score is None else f", ndcg@10 {score:.4f}"


def record(run_dir: Path) -> dict[str, float]:
    """A finished run's numbers: every ``<variant>/<metric>@<k>``, its training seconds, and
    the validation selection (a trained run's ``best_epoch`` and ``best_val``; a tuned
    baseline's ``hyperparameter`` and ``best_val``)."""
    s = json.loads((run_dir / SUMMARY).read_text())
    out = {k: v for k, v in s.items() if "/" in k and isinstance(v, float)}
    out["train_seconds"] = s.get("train_seconds", float("nan"))
    for key in ("best_epoch", "best_val", "hyperparameter"):
        if isinstance(s.get(key), (int, float)):
            out[key] = float(s[key])
    return out


def info(cfg: RecsysConfig, data: Any) -> dict[str, Any]:
    """The cut-off of the deltas and drops (10 if evaluated), the data and the threads."""
    import torch

    ks = [int(k) for k in cfg.eval.ks]
    return {
        "k": 10 if 10 in ks else max(ks),
        "dataset": data[0].name,
        "split": repr(data[1]),
        "threads": torch.get_num_threads(),
    }


def baseline(
    method: str, cfg: RecsysConfig, run_dir: Path, data: Any, log: Callable[[str], None]
) -> None:
    """Fit and evaluate a baseline (no training loop) into ``run_dir``, unless finished."""
    _baseline_one(parse_method(method)["baseline"], cfg, int(cfg.train.seed), run_dir, data[1], log)


def compare(
    cfg: RecsysConfig,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: int = 3,
    out: str | Path = "runs/recsys/compare",
    *,
    loss_params: dict[str, dict[str, Any]] | None = None,
    plot: bool = True,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every method with ``seeds`` seeds (``cfg.train.seed + 0..seeds-1``) and tabulate.

    Args:
        cfg: the shared configuration (data, eval, train settings; the model kind, loss and
            DMM switch come from each method).
        methods: names understood by :func:`parse_method`.
        loss_params: per-loss parameters of the two-tower losses, ``{"gca-uot": {"rho": 0.5}}``.
        jobs: trained runs at once, each in its own process (1 = in this process).
    Returns:
        the content of ``results.json`` (:mod:`otcl.pipelines.results`).
    """
    return compare_pipeline(
        "recsys", cfg, methods, seeds, out, loss_params=loss_params, plot=plot, jobs=jobs, log=log
    )


def _baseline_one(
    name: str, cfg: RecsysConfig, seed: int, run_dir: Path, s: Split, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fit and evaluate a baseline (no training loop), reusing a finished result."""
    path = run_dir / SUMMARY
    if path.exists():
        log(reuse_line(run_dir))
        return json.loads(path.read_text())
    if name in BASELINES:  # determined by the split: another seed's fit is this one's
        for other in sorted(run_dir.parent.glob(f"seed*/{SUMMARY}")):
            summary = {**json.loads(other.read_text()), "seed": seed}
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(summary, indent=2))
            return summary
    t0 = time.perf_counter()
    e = cfg.eval
    tuned: dict[str, Any] = {}
    if name == "popularity":
        score = Popularity(s).scorer()
    elif name in ITEM_ITEM:  # the hyperparameter chosen on the validation pairs
        model, value, val = tune_item_item(name, s, metric=e.select, users=e.users, block=e.block)
        score = model.scorer()
        tuned = {"hyperparameter": value, "best_val": val[str(value)], "val_grid": val}
    else:
        threads = int(cfg.train.threads or 0)
        score = fit_implicit(name[len("implicit-") :], s, seed=seed, threads=threads)
    fit_seconds = time.perf_counter() - t0
    summary = {
        "model": name,
        "seed": seed,
        **score_metrics(score, s, cfg),
        **tuned,
        "train_seconds": fit_seconds,
        "otcl": __version__,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=2))
    return summary
