"""``otcl compare``: train several losses under the same budget and seeds, tabulate and plot.

For every method (a loss, or ``<loss>+dmm``: DMM around it) and seed a full run
(``<out>/<method>/seed<k>``) is trained and evaluated (kNN and linear probe) by the shared
comparison (:mod:`otcl.pipelines.comparison`): runs already finished are reused and interrupted
ones resumed, so a killed comparison restarts where it stopped. This module holds what is the
image pipeline's own: how a method name becomes a config, what a run's numbers are, the table
(mean +- std over seeds) and the plots (``accuracy.png``: the accuracies with error bars,
``curves.png``: normalised loss and kNN accuracy per epoch).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..compare import pyplot
from ..comparison import compare_pipeline
from ..engine.rundir import METRICS, SUMMARY
from ..files import read_jsonl
from ..loss_methods import loss_method_config, loss_method_name
from ..plots import error_bars, integer_epochs, legend_outside, pm, spread_caption
from .config import Config

__all__ = [
    "compare",
    "DEFAULT_LOSSES",
    "method_config",
    "method_name",
    "record",
    "info",
    "format_table",
    "plot_results",
]

#: the methods ``otcl compare`` runs when none are named (``infonce+dmm``: DMM around InfoNCE)
DEFAULT_LOSSES = (
    "infonce",
    "iot-uni",
    "gca-ince",
    "gca-rince",
    "gca-uot",
    "hcl",
    "ot-hard",
    "infonce+dmm",
)


def method_config(
    cfg: Config, method: str, shared: Mapping[str, Any], per_loss: Mapping[str, Mapping[str, Any]]
) -> Config:
    """``gca-uot`` -> ``loss.name="gca-uot"``; ``gca-uot+dmm`` -> ``loss.name="dmm"`` with
    ``base="gca-uot"``. Parameters: the shared ones, then the loss's own, then (``+dmm``) DMM's."""
    return loss_method_config(
        cfg, method, shared, per_loss, unknown="methods: unknown loss {base!r}; expected a loss "
        "name, or <loss>+dmm for DMM around it, from: {names}",
    )  # fmt: skip


#: the method of a run's config (the inverse of :func:`method_config`)
method_name = loss_method_name


def record(run_dir: Path) -> dict[str, float]:
    """A finished run's numbers: kNN and linear-probe accuracy (``eval.json``; kNN of the
    summary without it), seconds per epoch, views per second, final loss."""
    summary = json.loads((run_dir / SUMMARY).read_text())
    path = run_dir / "eval.json"
    ev = json.loads(path.read_text()) if path.exists() else {}
    out = {
        "knn": ev.get("knn", summary.get("knn")),
        "linear": ev.get("linear"),
        "seconds_per_epoch": summary.get("seconds_per_epoch"),
        "views_per_s": summary.get("views_per_s"),
        "final_loss": summary.get("final_loss"),
    }
    return {k: v for k, v in out.items() if v is not None}


def info(cfg: Config, data: Any) -> dict[str, Any]:
    """The setting the table's header states."""
    dev = str(cfg.train.device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "dataset": cfg.data.dataset,
        "data": repr(data),
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "arch": cfg.model.arch,
        "knn_k": cfg.eval.knn_k,
        "knn_t": cfg.eval.knn_t,
        "linear_epochs": cfg.eval.linear_epochs,
        "device": dev,
    }


def prepare_compare(cfg: Config) -> Config:
    """A comparison's shared config: the presets, and kNN curves for the plot (about 10 points
    per run) unless ``eval.knn_every`` is set."""
    from .config import resolve

    base = resolve(cfg)
    if base.eval.knn_every == 0:
        base.eval.knn_every = max(1, int(base.train.epochs or 1) // 10)
    return base


def compare(
    cfg: Config,
    losses: Sequence[str] = DEFAULT_LOSSES,
    seeds: int = 3,
    out: str | Path = "runs/ssl/compare",
    *,
    loss_params: dict[str, dict[str, Any]] | None = None,
    evaluate: bool = True,
    plot: bool = True,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every method with ``seeds`` seeds (``cfg.train.seed`` + 0..seeds-1).

    Args:
        cfg: the shared configuration (its ``loss.params`` apply to every loss).
        losses: loss names, or ``<loss>+dmm`` for DMM around a loss.
        loss_params: per-loss parameters, ``{"gca-uot": {"rho": 0.5}}``, on top of the shared ones.
    Returns:
        the content of ``results.json`` (:mod:`otcl.pipelines.results`).
    """
    return compare_pipeline(
        "ssl", cfg, losses, seeds, out, loss_params=loss_params, jobs=jobs, evaluate=evaluate,
        plot=plot, log=log,
    )  # fmt: skip


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method: kNN and linear mean and std, the median seconds per epoch."""
    rows = []
    for name, m in results["methods"].items():
        st = m["metrics"]
        nan = {"mean": float("nan"), "std": float("nan"), "per_seed": []}
        spe = [v for v in st.get("seconds_per_epoch", nan)["per_seed"] if v is not None]
        rows.append(
            {
                "loss": name,
                "seeds": len(m["seeds"]),
                "knn_mean": st.get("knn", nan)["mean"],
                "knn_std": st.get("knn", nan)["std"],
                "linear_mean": st.get("linear", nan)["mean"],
                "linear_std": st.get("linear", nan)["std"],
                "seconds_per_epoch": statistics.median(spe) if spe else None,
            }
        )
    return rows


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table: method, kNN and linear accuracy (mean +- std over several seeds, the
    value alone over one; %), seconds per epoch."""
    i = results["info"]
    head = (
        f"{i['dataset']}, {i['arch']}, {i['epochs']} epochs, batch "
        f"{i['batch_size']}, kNN k={i['knn_k']} t={i['knn_t']}, linear probe "
        f"{i['linear_epochs']} epochs (final epoch), device {i['device']}"
    )
    rows = _rows(results)
    seeds = max((r["seeds"] for r in rows), default=0)
    lines = [
        f"{head}; {spread_caption(seeds)}",
        "",
        "| loss | seeds | kNN acc (%) | linear acc (%) | s / epoch |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        spe = r["seconds_per_epoch"]
        n = r["seeds"]
        lines.append(
            f"| {r['loss']} | {n} | {pm(r['knn_mean'], r['knn_std'], n, 2, 100)} | "
            f"{pm(r['linear_mean'], r['linear_std'], n, 2, 100)} | "
            f"{'n/a' if spe is None else f'{spe:.3f}'} |"
        )
    return "\n".join(lines)


def plot_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``accuracy.png`` (bars; seed-std error bars over several seeds) and ``curves.png`` (one
    panel of training loss per method, on its own scale, and the kNN accuracy per epoch)."""
    plt = pyplot()
    rows = _rows(results)
    runs = [
        {"loss": r["method"], "metrics": read_jsonl(Path(r["dir"]) / METRICS)}
        for r in results["runs"]
    ]
    names = [r["loss"] for r in rows]
    seeds = max((r["seeds"] for r in rows), default=0)
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2) + 1.6, 4))
    w = 0.38
    for off, key, label in ((-w / 2, "knn", "kNN"), (w / 2, "linear", "linear probe")):
        means = [100 * r[f"{key}_mean"] for r in rows]
        stds = error_bars([100 * r[f"{key}_std"] for r in rows], seeds)
        ax.bar([i + off for i in x], means, w, yerr=stds, capsize=3, label=label)
    finite = [
        100 * r[f"{k}_mean"]
        for r in rows
        for k in ("knn", "linear")
        if not math.isnan(r[f"{k}_mean"])
    ]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(max(0, lo - max(2.0, (hi - lo))), min(100, hi + max(1.0, 0.3 * (hi - lo))))
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{results['info']['dataset']}: {results['info']['epochs']} epochs, "
        f"{spread_caption(seeds)}",
        fontsize=10,
    )
    legend_outside(ax)
    fig.tight_layout()
    acc_path = out / "accuracy.png"
    fig.savefig(acc_path, dpi=120)
    plt.close(fig)
    cur_path = out / "curves.png"
    _plot_curves(plt, names, runs, seeds, cur_path)
    return [acc_path, cur_path]


def _plot_curves(plt: Any, names: list[str], runs: list[dict[str, Any]], seeds: int, path: Path):
    """``curves.png``: a small panel of training loss per method (its own y scale: the losses
    of different methods are not on one scale, and normalised they overlap), and below one
    panel of kNN accuracy per epoch (where monitored)."""
    cols = min(4, max(1, len(names)))
    nrows = math.ceil(len(names) / cols) if names else 1
    fig = plt.figure(figsize=(3.2 * cols + 1.6, 2.3 * nrows + 3.2))
    grid = fig.add_gridspec(nrows + 1, cols, height_ratios=[1.0] * nrows + [1.4])
    knn_ax = fig.add_subplot(grid[nrows, :])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>p*h"
    any_knn = False
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        color, marker = colors[i % len(colors)], markers[i % len(markers)]
        rs = [r for r in runs if r["loss"] == name and r["metrics"]]
        ax.set_title(name, fontsize=9)
        integer_epochs(ax, "epoch" if i // cols == nrows - 1 else "")
        if i % cols == 0:
            ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
        if not rs:
            continue
        n = min(len(r["metrics"]) for r in rs)
        epochs = [m["epoch"] for m in rs[0]["metrics"][:n]]
        curves = [[m["loss"] for m in r["metrics"][:n]] for r in rs]
        mean = [statistics.fmean(c[j] for c in curves) for j in range(n)]
        ax.plot(epochs, mean, color=color, marker=marker, ms=3)
        if len(curves) > 1:
            sd = [statistics.stdev(c[j] for c in curves) for j in range(n)]
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(mean, sd, strict=True)],
                [m + s for m, s in zip(mean, sd, strict=True)],
                color=color,
                alpha=0.2,
            )
        pts: dict[int, list[float]] = {}
        for r in rs:
            for m in r["metrics"]:
                if "knn" in m:
                    pts.setdefault(m["epoch"], []).append(100 * m["knn"])
        if pts:
            any_knn = True
            es = sorted(pts)
            mk = [statistics.fmean(pts[e]) for e in es]
            knn_ax.plot(es, mk, marker=marker, ms=4, color=color, label=name)
            if seeds > 1:
                sk = [statistics.stdev(pts[e]) if len(pts[e]) > 1 else 0.0 for e in es]
                knn_ax.fill_between(
                    es,
                    [m - s for m, s in zip(mk, sk, strict=True)],
                    [m + s for m, s in zip(mk, sk, strict=True)],
                    color=color,
                    alpha=0.12,
                )
    integer_epochs(knn_ax)
    knn_ax.set_ylabel("kNN accuracy (%)")
    knn_ax.set_title(f"kNN accuracy during training, {spread_caption(seeds)}", fontsize=10)
    if any_knn:
        legend_outside(knn_ax)
    fig.suptitle(f"training loss per method, {spread_caption(seeds)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
