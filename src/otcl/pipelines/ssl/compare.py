"""``otcl compare``: train several losses under the same budget and seeds, tabulate and plot.

For every loss and seed a full run (``<out>/<loss>/seed<k>``) is trained and evaluated (kNN and
linear probe); runs already finished are reused and interrupted ones resumed, so a killed
comparison restarts where it stopped. The table gives mean +- std over seeds; ``results.json``
holds every number, ``accuracy.png`` the accuracies with error bars and ``curves.png`` the
training curves (normalised loss and kNN accuracy per epoch).

Under ``torchrun`` every run is trained by all the processes (the global batch split over them);
rank 0 decides which runs to reuse or resume, evaluates them and writes the results.
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
    mean_std,
    pyplot,
    stderr_log,
    train_run,
    write_outputs,
)
from ..config import save_config
from ..engine.distributed import agreed, broadcast, is_main, local_main_first, main_log
from ..engine.rundir import METRICS, SUMMARY
from ..files import read_jsonl
from .config import Config, resolve
from .evaluate import evaluate_run
from .trainer import SSLTrainer, load_data

__all__ = ["compare", "DEFAULT_LOSSES", "format_table", "plot_results", "SSLRunner"]

#: the losses ``otcl compare`` runs when none are named
DEFAULT_LOSSES = ("infonce", "iot-uni", "gca-ince", "gca-rince", "gca-uot", "hcl", "ot-hard", "dmm")


class SSLRunner(Runner):
    """The runs of ``otcl compare``: :class:`SSLTrainer`, then ``otcl eval`` (``eval.json``)."""

    config_cls = Config
    trainer_cls = SSLTrainer
    resolve = staticmethod(resolve)

    def __init__(self, evaluate: bool = True) -> None:
        self.evaluate = evaluate
        self.needs = ("eval.json",) if evaluate else ()

    def load_data(self, cfg: Config) -> Any:
        return load_data(cfg, progress=cfg.train.progress)

    def finish(self, run: Run, data: Any) -> None:
        if self.evaluate:
            c = run.cfg.train
            evaluate_run(str(run.dir), device=c.device, data=data, progress=c.progress)


def compare(
    cfg: Config,
    losses: Sequence[str] = DEFAULT_LOSSES,
    seeds: int = 3,
    out: str | Path = "runs/compare",
    *,
    loss_params: dict[str, dict[str, Any]] | None = None,
    evaluate: bool = True,
    plot: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every loss with ``seeds`` seeds (``cfg.train.seed`` + 0..seeds-1).

    Args:
        cfg: the shared configuration (its ``loss.params`` apply to every loss).
        losses: registered loss names.
        loss_params: per-loss parameters, ``{"gca-uot": {"rho": 0.5}}``, on top of the shared ones.
    Returns:
        the content of ``results.json``.
    """
    log = main_log(log or stderr_log)  # under torchrun: rank 0
    unknown = [name for name in losses if name not in available()]
    if unknown:
        raise ValueError(
            f"losses: unknown loss(es) {', '.join(unknown)}; expected names from: "
            f"{', '.join(available())}"
        )
    loss_params = loss_params or {}
    check_request(losses, seeds, loss_params, losses)
    base = resolve(cfg)
    if base.eval.knn_every == 0:  # kNN curves for the plot, about 10 points per run
        base.eval.knn_every = max(1, int(base.train.epochs or 1) // 10)
    with comparison_dir(out) as out:  # a bad --out fails before the data loads
        return _compare(base, losses, seeds, out, loss_params, evaluate, plot, log)


def _compare(
    base: Config,
    losses: Sequence[str],
    seeds: int,
    out: Path,
    loss_params: dict[str, dict[str, Any]],
    evaluate: bool,
    plot: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    with agreed():
        if is_main():
            save_config(base, out / "config.yaml")
    data = local_main_first(lambda: load_data(base, progress=base.train.progress and is_main()))
    log(f"otcl compare: {data!r}; losses {', '.join(losses)}; {seeds} seed(s); out {out}")
    grid: list[Run] = []
    for name in losses:
        for k in range(seeds):
            run_cfg = copy.deepcopy(base)
            run_cfg.loss.name = name
            run_cfg.loss.params = {**base.loss.params, **loss_params.get(name, {})}
            run_cfg.train.seed = base.train.seed + k
            grid.append(make_run(name, run_cfg, out))
    t_start = time.perf_counter()
    runs = []
    runner = SSLRunner(evaluate)
    for run in grid:  # each run's numbers show as it finishes
        train_run(runner, run, data, log)
        if is_main():
            runs.append(_record(run, evaluate, log))
    results: dict[str, Any] = {}
    with agreed():  # rank 0 writes the results, the others wait for them
        if is_main():
            results = _aggregate(base, losses, runs, data)
            results["wall_seconds"] = time.perf_counter() - t_start
            write_outputs(
                out,
                results,
                format_table(results),
                plot=(lambda: plot_results(results, runs, out)) if plot else None,
                log=log,
            )
    return broadcast(results)


def _record(run: Run, evaluate: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The numbers of a finished run (its summary, ``eval.json`` and metrics log)."""
    summary = json.loads((run.dir / SUMMARY).read_text())
    ev = json.loads((run.dir / "eval.json").read_text()) if evaluate else {}
    rec = {
        "loss": run.method,
        "seed": run.seed,
        "dir": str(run.dir),
        "knn": ev.get("knn", summary.get("knn")),
        "linear": ev.get("linear"),
        "seconds_per_epoch": summary.get("seconds_per_epoch"),
        "views_per_s": summary.get("views_per_s"),
        "final_loss": summary.get("final_loss"),
        "metrics": read_jsonl(run.dir / METRICS),
    }
    lin = "" if rec["linear"] is None else f", linear {rec['linear']:.4f}"
    log(f"{run.method} seed {run.seed}: kNN {rec['knn']:.4f}{lin}")
    return rec


def _aggregate(base: Config, losses, runs, data) -> dict[str, Any]:
    rows = []
    for name in losses:
        rs = [r for r in runs if r["loss"] == name]
        knn = mean_std([r["knn"] for r in rs])
        lin = mean_std([r["linear"] for r in rs if r["linear"] is not None])
        spe = [r["seconds_per_epoch"] for r in rs if r["seconds_per_epoch"] is not None]
        rows.append(
            {
                "loss": name,
                "seeds": len(rs),
                "knn_mean": knn[0],
                "knn_std": knn[1],
                "linear_mean": lin[0],
                "linear_std": lin[1],
                "seconds_per_epoch": statistics.median(spe) if spe else None,
                "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in rs],
            }
        )
    dev = str(base.train.device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "dataset": base.data.dataset,
        "data": repr(data),
        "epochs": base.train.epochs,
        "batch_size": base.train.batch_size,
        "arch": base.model.arch,
        "knn_k": base.eval.knn_k,
        "knn_t": base.eval.knn_t,
        "linear_epochs": base.eval.linear_epochs,
        "device": dev,
        "torch": torch.__version__,
        "otcl": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
        "config": base.to_dict(),
    }


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table: loss, kNN and linear accuracy (mean +- std, %), seconds per epoch."""
    head = (
        f"{results['dataset']}, {results['arch']}, {results['epochs']} epochs, batch "
        f"{results['batch_size']}, kNN k={results['knn_k']} t={results['knn_t']}, linear probe "
        f"{results['linear_epochs']} epochs (final epoch), device {results['device']}"
    )
    lines = [
        head,
        "",
        "| loss | seeds | kNN acc (%) | linear acc (%) | s / epoch |",
        "|---|---|---|---|---|",
    ]

    def pct(m: float, s: float) -> str:
        return "n/a" if math.isnan(m) else f"{100 * m:.2f} ± {100 * s:.2f}"

    for r in results["rows"]:
        spe = r["seconds_per_epoch"]
        lines.append(
            f"| {r['loss']} | {r['seeds']} | {pct(r['knn_mean'], r['knn_std'])} | "
            f"{pct(r['linear_mean'], r['linear_std'])} | "
            f"{'n/a' if spe is None else f'{spe:.3f}'} |"
        )
    return "\n".join(lines)


def plot_results(results: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """``accuracy.png`` (bars with std error bars) and ``curves.png`` (per-epoch curves)."""
    plt = pyplot()
    rows = results["rows"]
    names = [r["loss"] for r in rows]
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    w = 0.38
    for off, key, label in ((-w / 2, "knn", "kNN"), (w / 2, "linear", "linear probe")):
        means = [100 * r[f"{key}_mean"] for r in rows]
        stds = [100 * r[f"{key}_std"] for r in rows]
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
        f"{results['dataset']}: {results['epochs']} epochs, mean ± std over seeds", fontsize=10
    )
    ax.legend()
    fig.tight_layout()
    acc_path = out / "accuracy.png"
    fig.savefig(acc_path, dpi=120)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        rs = [r for r in runs if r["loss"] == name and r["metrics"]]
        if not rs:
            continue
        epochs = [m["epoch"] for m in rs[0]["metrics"]]
        curves = []
        for r in rs:
            ls = [m["loss"] for m in r["metrics"]]
            first = ls[0] if ls and ls[0] != 0 else 1.0
            curves.append([v / first for v in ls])
        n = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        (line,) = a1.plot(epochs[:n], mean, label=name)
        pts: dict[int, list[float]] = {}
        for r in rs:
            for m in r["metrics"]:
                if "knn" in m:
                    pts.setdefault(m["epoch"], []).append(100 * m["knn"])
        if pts:
            es = sorted(pts)
            mk = [statistics.fmean(pts[e]) for e in es]
            sk = [statistics.stdev(pts[e]) if len(pts[e]) > 1 else 0.0 for e in es]
            a2.plot(es, mk, marker="o", ms=3, color=line.get_color(), label=name)
            a2.fill_between(
                es,
                [m - s for m, s in zip(mk, sk, strict=True)],
                [m + s for m, s in zip(mk, sk, strict=True)],
                color=line.get_color(),
                alpha=0.15,
            )
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss / first-epoch loss")
    a1.set_title("training loss (mean over seeds)", fontsize=10)
    a2.set_xlabel("epoch")
    a2.set_ylabel("kNN accuracy (%)")
    a2.set_title("kNN accuracy during training (mean ± std)", fontsize=10)
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.tight_layout()
    cur_path = out / "curves.png"
    fig.savefig(cur_path, dpi=120)
    plt.close(fig)
    return [acc_path, cur_path]
