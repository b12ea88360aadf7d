"""``otcl compare``: train several losses under the same budget and seeds, tabulate and plot.

For every loss and seed a full run (``<out>/<loss>/seed<k>``) is trained and evaluated (kNN and
linear probe); runs already finished are reused and interrupted ones resumed, so a killed
comparison restarts where it stopped. The table gives mean +- std over seeds; ``results.json``
holds every number, ``accuracy.png`` the accuracies with error bars and ``curves.png`` the
training curves (normalised loss and kNN accuracy per epoch).

Under ``torchrun`` every run is trained by all the processes (the global batch split over them,
see :mod:`otcl.pipelines.run`); rank 0 decides which runs to reuse or resume, evaluates them
and writes the table, results and plots.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ...losses import available
from .._signals import deferred_signals
from ..config import save_config
from ..distributed import (
    agreed,
    broadcast,
    is_main,
    local_main_first,
    main_log,
    main_then_broadcast,
)
from ..run import (
    CHECKPOINT,
    METRICS,
    SUMMARY,
    RunLock,
    atomic_write_text,
    load_checkpoint,
    prepare_run_dir,
    read_jsonl,
)
from .config import Config, resolve
from .evaluate import evaluate_run
from .trainer import SSLTrainer, load_data

__all__ = ["compare", "DEFAULT_LOSSES", "format_table", "plot_results"]

#: the losses ``otcl compare`` runs when none are named
DEFAULT_LOSSES = ("infonce", "iot-uni", "gca-ince", "gca-rince", "gca-uot", "hcl", "ot-hard", "dmm")

#: settings that may differ between a finished run and a new request without invalidating it
_VOLATILE = {("train", "out"), ("train", "progress"), ("train", "device"), ("train", "threads")}


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(cfg)
    for sec, key in _VOLATILE:
        d.get(sec, {}).pop(key, None)
    return d


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


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
    log = main_log(log or (lambda s: print(s, file=sys.stderr)))  # under torchrun: rank 0
    unknown = [name for name in losses if name not in available()]
    if unknown:
        raise ValueError(
            f"losses: unknown loss(es) {', '.join(unknown)}; expected names from: "
            f"{', '.join(available())}"
        )
    if not losses:
        raise ValueError("losses: expected at least one loss name, got none")
    if seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {seeds!r}")
    loss_params = loss_params or {}
    stray = sorted(set(loss_params) - set(losses))
    if stray:
        raise ValueError(f"loss_params: parameters given for losses not compared: {stray}")
    base = resolve(cfg)
    if base.eval.knn_every == 0:  # kNN curves for the plot, about 10 points per run
        base.eval.knn_every = max(1, int(base.train.epochs or 1) // 10)
    lock = None
    with agreed():
        if is_main():
            out = prepare_run_dir(out)  # a bad --out fails before the data loads
            lock = RunLock(out)  # one comparison writes a directory at a time
    try:
        return _compare(base, losses, seeds, Path(out), loss_params, evaluate, plot, log)
    finally:
        if lock is not None:
            lock.release()


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
    runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for name in losses:
        for k in range(seeds):
            run_cfg = copy.deepcopy(base)
            run_cfg.loss.name = name
            run_cfg.loss.params = {**base.loss.params, **loss_params.get(name, {})}
            run_cfg.train.seed = base.train.seed + k
            run_dir = out / name / f"seed{run_cfg.train.seed}"
            run_cfg.train.out = str(run_dir)
            runs.append(_one_run(run_cfg, run_dir, data, evaluate, log))
    results: dict[str, Any] = {}
    with agreed():  # rank 0 writes and prints the results, the others wait
        if is_main():
            results = _aggregate(base, losses, runs, data)
            results["wall_seconds"] = time.perf_counter() - t_start
            atomic_write_text(out / "results.json", json.dumps(results, indent=2))
            table = format_table(results)
            print(table)
            atomic_write_text(out / "table.md", table + "\n")
            if plot:
                try:
                    paths = plot_results(results, runs, out)
                    log("plots: " + ", ".join(str(p) for p in paths))
                except ImportError:
                    log("matplotlib is not installed: no plots (pip install 'otcl[train]')")
            log(f"results: {out / 'results.json'}")
    return broadcast(results)


def _state(cfg: Config, run_dir: Path, evaluate: bool) -> str:
    """``"new"``, ``"resume"`` or ``"done"``: what to do with ``run_dir`` (read by rank 0)."""
    ckpt = run_dir / CHECKPOINT
    if not ckpt.exists():
        return "new"
    st = load_checkpoint(ckpt)
    # the saved config resolved as today (a setting added since then takes its preset)
    saved = resolve(Config.from_dict(st["config"])).to_dict()
    if _comparable(saved) != _comparable(resolve(cfg).to_dict()):
        raise ValueError(
            f"out: {str(run_dir)!r} holds a run with a different configuration; "
            "choose another --out (or delete that run)"
        )
    done = (run_dir / SUMMARY).exists() and ((run_dir / "eval.json").exists() or not evaluate)
    return "done" if done else "resume"


def _one_run(
    cfg: Config, run_dir: Path, data, evaluate: bool, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """Train (every rank), evaluate and read back (rank 0; None on the others) one run."""
    summary_path, eval_path = run_dir / SUMMARY, run_dir / "eval.json"
    state = main_then_broadcast(lambda: _state(cfg, run_dir, evaluate))
    if state == "done":
        log(f"{run_dir}: finished earlier, reusing its results")
    else:
        if state == "resume":
            log(f"{run_dir}: resuming")
        SSLTrainer(cfg, run_dir, data=data, resume=state == "resume", log=log).fit()
        with agreed():
            if evaluate and is_main():
                evaluate_run(
                    str(run_dir), device=cfg.train.device, data=data, progress=cfg.train.progress
                )
    if not is_main():
        return None
    summary = json.loads(summary_path.read_text())
    ev = json.loads(eval_path.read_text()) if evaluate else {}
    rec = {
        "loss": cfg.loss.name,
        "seed": cfg.train.seed,
        "dir": str(run_dir),
        "knn": ev.get("knn", summary.get("knn")),
        "linear": ev.get("linear"),
        "seconds_per_epoch": summary.get("seconds_per_epoch"),
        "views_per_s": summary.get("views_per_s"),
        "final_loss": summary.get("final_loss"),
        "metrics": read_jsonl(run_dir / METRICS),
    }
    lin = "" if rec["linear"] is None else f", linear {rec['linear']:.4f}"
    log(f"{cfg.loss.name} seed {cfg.train.seed}: kNN {rec['knn']:.4f}{lin}")
    return rec


def _aggregate(base: Config, losses, runs, data) -> dict[str, Any]:
    rows = []
    for name in losses:
        rs = [r for r in runs if r["loss"] == name]
        knn = _mean_std([r["knn"] for r in rs])
        lin = _mean_std([r["linear"] for r in rs if r["linear"] is not None])
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
    with deferred_signals():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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
