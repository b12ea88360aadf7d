"""``otcl multimodal compare``: losses x (+-DMM) x seeds, robustness table, results.json, plots.

Every *variant* (a loss, or DMM wrapping it: ``gca-uot+dmm``) is trained with ``seeds`` seeds
into ``<out>/<variant>/seed<k>`` and evaluated (:mod:`.robustness`). Finished runs are reused and
interrupted ones resumed, so a killed comparison restarts where it stopped. Outputs in ``out``:

* ``results.json`` -- every number: per variant the mean and std over seeds of the headline
  metrics, of the probe metric for every subset of present modalities, of the retrieval of the
  missing modalities from the present ones, of every pairwise retrieval direction and of noise;
  and each run's own report;
* ``table.md`` -- the summary table and the robustness table (mean +- std over seeds);
* ``robustness.png`` -- the probe metric per missing-modality subset (retrieval R@1 of the missing
  part when the data has no labels), one bar per variant, std error bars;
* ``retrieval.png`` -- pairwise cross-modal R@1 / R@5 / R@10 per variant, std error bars.

Under ``torchrun`` every run is trained by all the processes (the global batch split over them);
rank 0 decides which runs to reuse or resume and writes the tables, results and plots.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ...losses import available
from ..compare import (
    Run,
    Runner,
    check_request,
    comparison_dir,
    make_run,
    pyplot,
    seed_stats,
    stderr_log,
    train_runs,
    write_outputs,
)
from ..config import save_config
from ..engine.distributed import agreed, broadcast, is_main, local_main_first, main_log
from ..engine.rundir import SUMMARY
from ..engine.runtime import pick_device
from .config import MultimodalConfig, check, resolve
from .trainer import ROBUSTNESS, MultimodalTrainer, load_data, variant_name

__all__ = [
    "compare",
    "DEFAULT_LOSSES",
    "DMM_CHOICES",
    "format_tables",
    "plot_results",
    "MultimodalRunner",
]

#: the losses compared when none are named: the InfoNCE baseline and an OT coupling
DEFAULT_LOSSES = ("infonce", "gca-uot")
#: ``both``: each loss with and without DMM; ``on``: with only; ``off``: without only
DMM_CHOICES = ("both", "off", "on")


class MultimodalRunner(Runner):
    """The runs of ``otcl multimodal compare``: a :class:`MultimodalTrainer` run evaluates
    itself into ``robustness.json`` after its last epoch."""

    config_cls = MultimodalConfig
    trainer_cls = MultimodalTrainer
    needs = (ROBUSTNESS,)
    resolve = staticmethod(resolve)

    def load_data(self, cfg: MultimodalConfig) -> Any:
        return load_data(cfg)


def _variants(
    losses: Sequence[str], dmm: str, loss_params: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """(loss name, its own params) of every variant, in table order."""
    out = []
    for name in losses:
        own = dict(loss_params.get(name, {}))
        if dmm in ("both", "off"):
            out.append((name, own))
        if dmm in ("both", "on"):
            out.append(("dmm", {**own, **loss_params.get("dmm", {}), "base": name}))
    return out


def compare(
    cfg: MultimodalConfig,
    losses: Sequence[str] = DEFAULT_LOSSES,
    seeds: int = 3,
    out: str | Path = "runs/mm-compare",
    *,
    dmm: str = "both",
    loss_params: dict[str, dict[str, Any]] | None = None,
    plot: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every variant with ``seeds`` seeds (``cfg.train.seed`` + 0..seeds-1).

    Args:
        cfg: the shared configuration (its ``loss.params`` apply to every variant).
        losses: registered loss names (not ``dmm``: it is the ``dmm`` switch).
        dmm: ``"both"``, ``"on"`` or ``"off"`` (see :data:`DMM_CHOICES`).
        loss_params: per-loss parameters on top of the shared ones, e.g.
            ``{"gca-uot": {"rho": 0.5}, "dmm": {"margin": 0.3}}``.
    Returns:
        the content of ``results.json``.
    """
    log = main_log(log or stderr_log)  # under torchrun: rank 0
    if not losses:
        raise ValueError("losses: expected at least one loss name, got none")
    unknown = [n for n in losses if n not in available() or n == "dmm"]
    if unknown:
        raise ValueError(
            f"losses: {', '.join(unknown)} cannot be compared; expected names from "
            f"{', '.join(n for n in available() if n != 'dmm')} (DMM is --dmm on/off/both)"
        )
    if dmm not in DMM_CHOICES:
        raise ValueError(f"dmm: expected one of {', '.join(DMM_CHOICES)}, got {dmm!r}")
    loss_params = loss_params or {}
    check_request(losses, seeds, loss_params, [*losses, *(["dmm"] if dmm != "off" else [])])
    base = copy.deepcopy(cfg)
    variants: dict[str, list[MultimodalConfig]] = {}  # variant -> the config of each seed
    for loss, params in _variants(losses, dmm, loss_params):
        for k in range(seeds):
            run_cfg = copy.deepcopy(base)
            run_cfg.loss.name = loss
            run_cfg.loss.params = {**base.loss.params, **params}
            run_cfg.train.seed = base.train.seed + k
            run_cfg = resolve(run_cfg)
            check(run_cfg)  # every run's settings, before anything is written or trained
            variants.setdefault(variant_name(run_cfg), []).append(run_cfg)
    with comparison_dir(out) as out:
        with agreed():
            if is_main():
                save_config(resolve(base), out / "config.yaml")
        data = local_main_first(lambda: load_data(resolve(base)))
        t0 = time.perf_counter()
        grid: list[Run] = []
        for variant, configs in variants.items():
            log(f"otcl multimodal compare: {variant} ({seeds} seeds) on {data!r}")
            runs = [make_run(variant, c, out) for c in configs]
            train_runs(MultimodalRunner(), runs, data, log=log)
            grid += runs
        names = list(variants)
        results: dict[str, Any] = {}
        with agreed():  # rank 0 reads the runs back and writes the results
            if is_main():
                runs = [_record(run) for run in grid]
                results = _aggregate(resolve(base), names, runs, data)
                results["wall_seconds"] = time.perf_counter() - t0
                write_outputs(
                    out,
                    results,
                    format_tables(results),
                    plot=(lambda: plot_results(results, out)) if plot else None,
                    log=log,
                )
        return broadcast(results)


def _record(run: Run) -> dict[str, Any]:
    """A finished run's summary and robustness report."""
    summary = json.loads((run.dir / SUMMARY).read_text())
    report = json.loads((run.dir / ROBUSTNESS).read_text())
    return {
        "variant": run.method,
        "seed": run.seed,
        "dir": str(run.dir),
        "summary": summary,
        "report": report,
    }


def _primary(task: str | None) -> str | None:
    return {"classification": "accuracy", "regression": "acc2"}.get(task)  # type: ignore[arg-type]


def _aggregate(base: MultimodalConfig, names: list[str], runs, data) -> dict[str, Any]:
    task = data.task
    primary = _primary(task)
    variants = []
    for name in names:
        rs = [r for r in runs if r["variant"] == name]
        reps = [r["report"] for r in rs]
        sums = [r["summary"] for r in rs]
        keys = [k for k in sums[0] if k.startswith(("full_", "missing_"))]
        keys += ["R@1", "R@10", "medR", "seconds_per_epoch"]
        summary = {k: seed_stats([s.get(k) for s in sums]) for k in keys}
        subset_rows = []
        for i, row in enumerate(reps[0]["subsets"]):
            entry: dict[str, Any] = {"name": row["name"], "present": row["present"]}
            for k in row["metrics"]:
                entry[k] = seed_stats([rep["subsets"][i]["metrics"][k] for rep in reps])
            if "retrieval" in row:
                entry["retrieve_missing_R@1"] = seed_stats(
                    [rep["subsets"][i]["retrieval"]["R@1"] for rep in reps]
                )
            subset_rows.append(entry)
        pairs = {
            p: {k: seed_stats([rep["retrieval"][p][k] for rep in reps]) for k in m}
            for p, m in reps[0]["retrieval"].items()
        }
        recall = {
            k: seed_stats(
                [statistics.fmean(v[k] for v in rep["retrieval"].values()) for rep in reps]
            )
            for k in ("R@1", "R@5", "R@10")
        }
        noise = []
        for i, row in enumerate(reps[0]["noise"]):
            entry = {"snr_db": row["snr_db"], "noisy": row["noisy"]}
            entry["mean_R@1"] = seed_stats([rep["noise"][i]["mean_R@1"] for rep in reps])
            if primary and primary in row["metrics"]:
                entry[primary] = seed_stats([rep["noise"][i]["metrics"][primary] for rep in reps])
            noise.append(entry)
        variants.append(
            {
                "variant": name,
                "seeds": len(rs),
                "summary": summary,
                "subsets": subset_rows,
                "pairwise_mean": recall,
                "retrieval": pairs,
                "noise": noise,
                "runs": [{"seed": r["seed"], "dir": r["dir"], **r["summary"]} for r in rs],
            }
        )
    return {
        "dataset": base.data.dataset,
        "data": repr(data),
        "task": task,
        "primary_metric": primary,
        "objective": base.objective.kind,
        "missing": base.eval.missing,
        "probe": base.eval.probe or ("knn" if task == "classification" else "ridge"),
        "epochs": base.train.epochs,
        "batch_size": base.train.batch_size,
        "device": pick_device(base.train.device).type,
        "torch": torch.__version__,
        "otcl": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "variants": variants,
        "config": base.to_dict(),
    }


def _pm(ms: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(ms["mean"]):
        return "n/a"
    return f"{scale * ms['mean']:.{digits}f} ± {scale * ms['std']:.{digits}f}"


def format_tables(results: dict[str, Any]) -> str:
    """Markdown: the summary per variant and the per-subset robustness table (mean ± std)."""
    primary = results["primary_metric"]
    vs = results["variants"]
    seeds = min(v["seeds"] for v in vs)
    how = "dropped" if results["missing"] == "drop" else "zero-filled"
    head = (
        f"{results['data']}; objective {results['objective']}, {results['epochs']} epochs, batch "
        f"{results['batch_size']}, probe {results['probe']}, missing modalities {how}; "
        f"mean ± std over {seeds} seeds; device {results['device']}"
    )
    cols = []
    if primary:
        cols += [
            (f"full_{primary}", f"{primary}, all present (%)"),
            (f"missing_{primary}", f"{primary}, mean over missing subsets (%)"),
        ]
    lines = [head, ""]
    hdr = [
        "variant",
        *(c[1] for c in cols),
        "pairwise R@1 (%)",
        "pairwise R@10 (%)",
        "pairwise medR",
        "s / epoch",
    ]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for v in vs:
        s = v["summary"]
        cells = [
            v["variant"],
            *(_pm(s[c[0]]) for c in cols),
            _pm(s["R@1"]),
            _pm(s["R@10"]),
            _pm(s["medR"], 1.0),
            _pm(s["seconds_per_epoch"], 1.0, 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    key, what = (
        (primary, f"{primary} (%) of the probe")
        if primary
        else ("retrieve_missing_R@1", "R@1 (%) of the missing modalities from the present ones")
    )
    lines += ["", f"Present modalities -> {what}:", ""]
    hdr = ["present", *(v["variant"] for v in vs)]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for i, row in enumerate(vs[0]["subsets"]):
        if key not in row:
            continue
        cells = [row["name"], *(_pm(v["subsets"][i][key]) for v in vs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``robustness.png`` and ``retrieval.png`` (see the module docstring)."""
    plt = pyplot()

    vs = results["variants"]
    primary = results["primary_metric"]
    key = primary or "retrieve_missing_R@1"
    rows = [r for r in vs[0]["subsets"] if key in r]
    idx = [i for i, r in enumerate(vs[0]["subsets"]) if key in r]
    width = 0.8 / len(vs)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(rows) + 2.5), 4.2))
    lows, highs = [], []
    for j, v in enumerate(vs):
        means = [100 * v["subsets"][i][key]["mean"] for i in idx]
        stds = [100 * v["subsets"][i][key]["std"] for i in idx]
        xs = [i + (j - (len(vs) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=v["variant"])
        lows += [m - s for m, s in zip(means, stds, strict=True) if not math.isnan(m)]
        highs += [m + s for m, s in zip(means, stds, strict=True) if not math.isnan(m)]
    if lows:  # zoom on the bars: differences between variants are small next to the level
        span = max(highs) - min(lows)
        ax.set_ylim(max(0.0, min(lows) - 0.15 * span - 1), min(100.0, max(highs) + 0.1 * span + 1))
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=40, ha="right", fontsize=8)
    ylabel = f"test {primary} (%)" if primary else "R@1 (%), missing from present"
    ax.set_ylabel(ylabel)
    ax.set_xlabel("modalities present at test time")
    ax.set_title(
        f"{results['dataset']}: missing modalities ({results['missing']}), mean ± std over seeds",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    rob = out / "robustness.png"
    fig.savefig(rob, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(vs) + 2), 4))
    ks = ("R@1", "R@5", "R@10")
    w = 0.8 / len(ks)
    for j, k in enumerate(ks):
        xs = [i + (j - 1) * w for i in range(len(vs))]
        ax.bar(
            xs,
            [100 * v["pairwise_mean"][k]["mean"] for v in vs],
            w,
            yerr=[100 * v["pairwise_mean"][k]["std"] for v in vs],
            capsize=2,
            label=k,
        )
    ax.set_xticks(range(len(vs)), [v["variant"] for v in vs], rotation=20, ha="right")
    ax.set_ylabel("cross-modal recall (%), mean over pairs")
    ax.set_title(f"{results['dataset']}: pairwise retrieval, mean ± std over seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    ret = out / "retrieval.png"
    fig.savefig(ret, dpi=120)
    plt.close(fig)
    return [rob, ret]
