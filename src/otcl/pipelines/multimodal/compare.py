"""``otcl multimodal compare``: methods (a loss, or ``<loss>+dmm``) x seeds, robustness table.

Every method is trained with ``seeds`` seeds into ``<out>/<method>/seed<k>`` and evaluated
(:mod:`.robustness`) by the shared comparison (:mod:`otcl.pipelines.comparison`): finished runs
are reused and interrupted ones resumed. This module holds what is the pipeline's own: method
names, a run's numbers (the robustness report flattened into metrics), the tables and plots.

Metrics of a run (``results.json``'s ``methods.<m>.metrics``): the headline numbers of its
summary (``full_<metric>``, ``missing_<metric>``, ``R@1``, ``R@10``, ``medR``,
``seconds_per_epoch``), ``subset/<present>/<metric>`` (the probe with only those modalities
present, and ``retrieve_missing_R@1``), ``retrieval/<a->b>/<k>`` (every pairwise direction),
``pairwise/<k>`` (their mean) and ``noise/<snr>dB/<noisy>/<metric>``.

Plots: ``robustness.png`` (the probe metric per missing-modality subset; retrieval R@1 of the
missing part when the data has no labels) and ``retrieval.png`` (pairwise R@1 / R@5 / R@10).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..compare import pyplot
from ..comparison import compare_pipeline
from ..engine.rundir import SUMMARY
from ..engine.runtime import pick_device
from ..loss_methods import loss_method_config
from ..plots import error_bars, legend_outside, pm, spread_caption
from .config import MultimodalConfig
from .trainer import ROBUSTNESS

__all__ = [
    "compare",
    "DEFAULT_LOSSES",
    "method_config",
    "record",
    "info",
    "format_tables",
    "plot_results",
]

#: the methods compared when none are named: the InfoNCE baseline and an OT coupling, each
#: with and without DMM
DEFAULT_LOSSES = ("infonce", "infonce+dmm", "gca-uot", "gca-uot+dmm")


def method_config(
    cfg: MultimodalConfig,
    method: str,
    shared: Mapping[str, Any],
    per_loss: Mapping[str, Mapping[str, Any]],
) -> MultimodalConfig:
    """``gca-uot`` or ``gca-uot+dmm`` (DMM around gca-uot) as a config."""
    return loss_method_config(
        cfg, method, shared, per_loss, unknown="methods: unknown method {method!r}; expected a "
        "loss name or <loss>+dmm, from: {names}",
    )  # fmt: skip


def record(run_dir: Path) -> dict[str, float]:
    """A finished run's numbers: its summary's headline and its robustness report, flat."""
    summary = json.loads((run_dir / SUMMARY).read_text())
    rep = json.loads((run_dir / ROBUSTNESS).read_text())
    out = {k: v for k, v in summary.items() if k.startswith(("full_", "missing_"))}
    out.update({k: summary.get(k) for k in ("R@1", "R@10", "medR", "seconds_per_epoch")})
    for row in rep["subsets"]:
        for k, v in row["metrics"].items():
            out[f"subset/{row['name']}/{k}"] = v
        if "retrieval" in row:
            out[f"subset/{row['name']}/retrieve_missing_R@1"] = row["retrieval"]["R@1"]
    for pair, m in rep["retrieval"].items():
        out.update({f"retrieval/{pair}/{k}": v for k, v in m.items()})
    for k in ("R@1", "R@5", "R@10"):
        out[f"pairwise/{k}"] = statistics.fmean(v[k] for v in rep["retrieval"].values())
    for row in rep["noise"]:
        noisy = row["noisy"] if isinstance(row["noisy"], str) else "+".join(row["noisy"])
        tag = f"noise/{row['snr_db']}dB/{noisy}"
        out[f"{tag}/mean_R@1"] = row["mean_R@1"]
        out.update({f"{tag}/{k}": v for k, v in row["metrics"].items()})
    return out


def _primary(task: str | None) -> str | None:
    return {"classification": "accuracy", "regression": "acc2"}.get(task)  # type: ignore[arg-type]


def info(cfg: MultimodalConfig, data: Any) -> dict[str, Any]:
    """The setting the tables' header states."""
    return {
        "dataset": cfg.data.dataset,
        "data": repr(data),
        "task": data.task,
        "primary_metric": _primary(data.task),
        "objective": cfg.objective.kind,
        "missing": cfg.eval.missing,
        "probe": cfg.eval.probe or ("knn" if data.task == "classification" else "ridge"),
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "device": pick_device(cfg.train.device).type,
    }


def compare(
    cfg: MultimodalConfig,
    losses: Sequence[str] = DEFAULT_LOSSES,
    seeds: int = 3,
    out: str | Path = "runs/multimodal/compare",
    *,
    loss_params: dict[str, dict[str, Any]] | None = None,
    plot: bool = True,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every method with ``seeds`` seeds (``cfg.train.seed`` + 0..seeds-1).

    Args:
        cfg: the shared configuration (its ``loss.params`` apply to every method).
        losses: methods: loss names, ``<loss>+dmm`` for DMM around a loss.
        loss_params: per-loss parameters on top of the shared ones, e.g.
            ``{"gca-uot": {"rho": 0.5}, "dmm": {"margin": 0.3}}``.
    Returns:
        the content of ``results.json`` (:mod:`otcl.pipelines.results`).
    """
    return compare_pipeline(
        "multimodal", cfg, losses, seeds, out, loss_params=loss_params, plot=plot, jobs=jobs,
        log=log,
    )  # fmt: skip


def _subsets(v: Mapping[str, Any]) -> list[str]:
    """The present-modality subsets of a method's metrics, in report order."""
    out: list[str] = []
    for k in v["metrics"]:
        if k.startswith("subset/"):
            name = k[len("subset/") : k.rindex("/")]
            if name not in out:
                out.append(name)
    return out


def _stat(v: Mapping[str, Any], key: str) -> dict[str, float]:
    return v["metrics"].get(key, {"mean": float("nan"), "std": float("nan")})


def _pm(ms: dict[str, float], seeds: int, scale: float = 100.0, digits: int = 1) -> str:
    return pm(ms["mean"], ms["std"], seeds, digits, scale)


def format_tables(results: dict[str, Any]) -> str:
    """Markdown: the summary per method and the per-subset robustness table (mean ± std)."""
    i = results["info"]
    primary = i["primary_metric"]
    vs = results["methods"]
    seeds = min(len(v["seeds"]) for v in vs.values())
    how = "dropped" if i["missing"] == "drop" else "zero-filled"
    head = (
        f"{i['data']}; objective {i['objective']}, {i['epochs']} epochs, batch "
        f"{i['batch_size']}, probe {i['probe']}, missing modalities {how}; "
        f"{spread_caption(seeds)}; device {i['device']}"
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
    for name, v in vs.items():
        n = len(v["seeds"])
        cells = [
            name,
            *(_pm(_stat(v, c[0]), n) for c in cols),
            _pm(_stat(v, "R@1"), n),
            _pm(_stat(v, "R@10"), n),
            _pm(_stat(v, "medR"), n, 1.0),
            _pm(_stat(v, "seconds_per_epoch"), n, 1.0, 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    key, what = (
        (primary, f"{primary} (%) of the probe")
        if primary
        else ("retrieve_missing_R@1", "R@1 (%) of the missing modalities from the present ones")
    )
    lines += ["", f"Present modalities -> {what}:", ""]
    hdr = ["present", *vs]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    first = next(iter(vs.values()))
    for sub in _subsets(first):
        if f"subset/{sub}/{key}" not in first["metrics"]:
            continue
        cells = [
            sub,
            *(_pm(_stat(v, f"subset/{sub}/{key}"), len(v["seeds"])) for v in vs.values()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``robustness.png`` and ``retrieval.png`` (see the module docstring)."""
    plt = pyplot()

    methods = results["methods"]
    vs = list(methods.values())
    names = list(methods)
    primary = results["info"]["primary_metric"]
    key = primary or "retrieve_missing_R@1"
    rows = [s for s in _subsets(vs[0]) if f"subset/{s}/{key}" in vs[0]["metrics"]]
    seeds = min(len(v["seeds"]) for v in vs)
    width = 0.8 / len(vs)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(rows) + 2.5) + 1.6, 4.2))
    lows, highs = [], []
    for j, v in enumerate(vs):
        means = [100 * _stat(v, f"subset/{s}/{key}")["mean"] for s in rows]
        stds = [100 * _stat(v, f"subset/{s}/{key}")["std"] for s in rows]
        xs = [i + (j - (len(vs) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, means, width, yerr=error_bars(stds, seeds), capsize=2, label=names[j])
        spread = stds if seeds > 1 else [0.0] * len(stds)
        lows += [m - s for m, s in zip(means, spread, strict=True) if not math.isnan(m)]
        highs += [m + s for m, s in zip(means, spread, strict=True) if not math.isnan(m)]
    if lows:  # zoom on the bars: differences between variants are small next to the level
        span = max(highs) - min(lows)
        ax.set_ylim(max(0.0, min(lows) - 0.15 * span - 1), min(100.0, max(highs) + 0.1 * span + 1))
    ax.set_xticks(range(len(rows)), rows, rotation=40, ha="right", fontsize=8)
    ylabel = f"test {primary} (%)" if primary else "R@1 (%), missing from present"
    ax.set_ylabel(ylabel)
    ax.set_xlabel("modalities present at test time")
    ax.set_title(
        f"{results['info']['dataset']}: missing modalities ({results['info']['missing']}), "
        f"{spread_caption(seeds)}",
        fontsize=10,
    )
    legend_outside(ax)
    fig.tight_layout()
    rob = out / "robustness.png"
    fig.savefig(rob, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(vs) + 2) + 1.2, 4))
    ks = ("R@1", "R@5", "R@10")
    w = 0.8 / len(ks)
    for j, k in enumerate(ks):
        xs = [i + (j - 1) * w for i in range(len(vs))]
        ax.bar(
            xs,
            [100 * _stat(v, f"pairwise/{k}")["mean"] for v in vs],
            w,
            yerr=error_bars([100 * _stat(v, f"pairwise/{k}")["std"] for v in vs], seeds),
            capsize=2,
            label=k,
        )
    ax.set_xticks(range(len(vs)), names, rotation=20, ha="right")
    ax.set_ylabel("cross-modal recall (%), mean over pairs")
    ax.set_title(
        f"{results['info']['dataset']}: pairwise retrieval, {spread_caption(seeds)}", fontsize=10
    )
    legend_outside(ax)
    fig.tight_layout()
    ret = out / "retrieval.png"
    fig.savefig(ret, dpi=120)
    plt.close(fig)
    return [rob, ret]
