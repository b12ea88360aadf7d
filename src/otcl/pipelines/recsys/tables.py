"""The table and plots of ``otcl recsys compare``, from its ``results.json``.

:func:`format_table`: nDCG and Recall at 10 and 20, HR@10, MAP@10, the long-tail Recall@10,
the best epochs, the DMM deltas and the robustness drops (:func:`robustness`);
:func:`plot_results`: ``recsys.png`` (nDCG@10 / Recall@10 with seed spread, and the drops) and
``recsys-val.png`` (:func:`plot_curves`: validation nDCG@10 against the epoch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..compare import mean_std, pyplot
from ..plots import error_bars, legend_outside, pm, spread_caption
from ..results import per_seed
from .config import DROP_VARIANTS

__all__ = [
    "TABLE_METRICS",
    "robustness",
    "format_table",
    "plot_results",
    "validation_curves",
    "plot_curves",
]

#: columns of the printed table
TABLE_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "hr@10", "map@10")


def robustness(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per method: the nDCG@k drop (warm - variant, mean over seeds of the paired drops) with
    item features removed, and the nDCG@k on cold items."""
    k = results["info"].get("k", 10)
    drops: dict[str, dict[str, float]] = {}
    for m, v in results["methods"].items():
        for variant in (*DROP_VARIANTS, "cold"):
            key = f"{variant}/ndcg@{k}"
            if key not in v["metrics"]:
                continue
            vals = per_seed(results, m, key)
            if any(x is None for x in vals) or not vals:
                continue
            if variant == "cold":
                drops.setdefault(m, {})[variant] = mean_std(vals)[0]
            else:
                warm = per_seed(results, m, f"warm/ndcg@{k}")
                diffs = [w - x for w, x in zip(warm, vals, strict=True)]  # type: ignore[operator]
                drops.setdefault(m, {})[variant] = mean_std(diffs)[0]
    return drops


def _fmt(stat: dict[str, float] | None, seeds: int) -> str:
    if stat is None:
        return "n/a"
    return pm(stat["mean"], stat["std"], seeds, 4)


def _selection(metrics: Mapping[str, Any]) -> str:
    """The table's best-epoch cell: the mean and every seed's validation-best epoch, or a tuned
    baseline's validation-chosen value."""
    best = metrics.get("best_epoch")
    if best is not None:
        seeds = ", ".join("-" if e is None else f"{e:g}" for e in best["per_seed"])
        return f"{best['mean']:.1f} ({seeds})"
    value = metrics.get("hyperparameter")
    if value is not None:
        return "val: " + ", ".join(f"{h:g}" for h in value["per_seed"] if h is not None)
    return "-"


def format_table(results: dict[str, Any]) -> str:
    """Markdown tables: warm metrics, DMM deltas, robustness (nDCG@10)."""
    seeds = max((len(v["seeds"]) for v in results["methods"].values()), default=0)
    lines = [
        f"{results['info'].get('dataset', '')}: {spread_caption(seeds)} "
        "(users with a relevant test item); trained methods at their validation-best epoch",
        "",
        "| method | " + " | ".join(TABLE_METRICS) + " | tail recall@10 | best epoch | train s |",
        "|---" * (len(TABLE_METRICS) + 4) + "|",
    ]
    for m, r in results["methods"].items():
        n = len(r["seeds"])
        cells = [_fmt(r["metrics"].get(f"warm/{c}"), n) for c in TABLE_METRICS]
        cells.append(_fmt(r["metrics"].get("tail/recall@10"), n))
        cells.append(_selection(r["metrics"]))
        secs = r["metrics"].get("train_seconds", {"mean": float("nan")})["mean"]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {secs:.1f} |")
    for m, why in results.get("skipped", {}).items():
        absent = " | ".join(["absent"] * (len(TABLE_METRICS) + 2))
        lines.append(f"| {m} | {absent} | {why} |")
    k = results["info"].get("k", 10)
    deltas = {m: d["metrics"] for m, d in results.get("deltas", {}).items() if d["metrics"]}
    if deltas:
        lines += ["", f"| DMM vs its base | Δ recall@{k} | Δ ndcg@{k} |", "|---|---|---|"]
        for m, d in deltas.items():
            cells = [
                f"{d[c]['delta']:+.4f}"
                + (f" ± {d[c]['delta_std']:.4f}" if seeds > 1 else "")
                + f" ({100 * d[c]['relative']:+.1f}%)"
                for c in (f"warm/recall@{k}", f"warm/ndcg@{k}")
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    rob = robustness(results)
    if rob:
        cols = (*DROP_VARIANTS, "cold")
        lines += [
            "",
            f"| nDCG@{k} drop (warm - variant); cold: nDCG@{k} on cold items | "
            + " | ".join(cols)
            + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for m, d in rob.items():
            cells = [f"{d[c]:.4f}" if c in d else "n/a" for c in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _robustness_spread(results: dict[str, Any], k: int) -> dict[str, dict[str, float]]:
    """Per method and variant of :func:`robustness`: the seed std of the same quantity."""
    out: dict[str, dict[str, float]] = {}
    for m, v in results["methods"].items():
        warm = per_seed(results, m, f"warm/ndcg@{k}")
        for variant in (*DROP_VARIANTS, "cold"):
            key = f"{variant}/ndcg@{k}"
            vals = per_seed(results, m, key) if key in v["metrics"] else []
            if not vals or any(x is None for x in vals):
                continue
            if variant != "cold":
                vals = [w - x for w, x in zip(warm, vals, strict=True)]  # type: ignore[operator]
            out.setdefault(m, {})[variant] = mean_std(vals)[1]
    return out


def plot_results(results: dict[str, Any], out: Path) -> list[Path]:
    """``recsys.png``: nDCG@k and Recall@k per method, the nDCG@k drop with item features
    removed, and nDCG@k on cold-start items; error bars are the seed std (none with one
    seed), every axis labelled, legends outside the bars."""
    plt = pyplot()

    k = results["info"].get("k", 10)
    names = list(results["methods"])
    seeds = max((len(v["seeds"]) for v in results["methods"].values()), default=0)
    fig, axes = plt.subplots(2, 2, figsize=(15, 9))
    colors = ["tab:orange" if n.endswith("+dmm") else "tab:blue" for n in names]
    for ax, key, label in (
        (axes[0, 0], f"warm/ndcg@{k}", f"nDCG@{k}"),
        (axes[0, 1], f"warm/recall@{k}", f"Recall@{k}"),
    ):
        stats = [results["methods"][n]["metrics"].get(key) for n in names]
        means = [s["mean"] if s else 0.0 for s in stats]
        stds = error_bars([s["std"] if s else 0.0 for s in stats], seeds)
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel(f"{label} (warm items)")
        ax.set_xlabel("method (orange: +DMM)")
        ax.set_title(f"{label}, {spread_caption(seeds)}", fontsize=10)
    rob = robustness(results)
    spread = _robustness_spread(results, k)
    ax = axes[1, 0]
    cols = list(DROP_VARIANTS)
    width = 0.8 / max(1, len(cols))
    rnames = [n for n in rob if any(c in rob[n] for c in cols)]
    for j, c in enumerate(cols):
        ax.bar(
            [i + j * width for i in range(len(rnames))],
            [rob[n].get(c, 0.0) for n in rnames],
            width=width,
            yerr=error_bars([spread.get(n, {}).get(c, 0.0) for n in rnames], seeds),
            capsize=2,
            label=c,
        )
    middle = width * (len(cols) - 1) / 2  # the centre of each method's group of bars
    ax.set_xticks([i + middle for i in range(len(rnames))], rnames, rotation=45, ha="right")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel(f"nDCG@{k} drop (warm - variant)")
    ax.set_xlabel("method (models with item features)")
    ax.set_title("item features removed at test time", fontsize=10)
    if rnames:
        legend_outside(ax, title="removed")
    else:
        ax.text(0.5, 0.5, "no model with item features", ha="center", transform=ax.transAxes)
    ax = axes[1, 1]
    cold = [n for n in rob if "cold" in rob[n]]
    ax.bar(
        range(len(cold)),
        [rob[n]["cold"] for n in cold],
        yerr=error_bars([spread.get(n, {}).get("cold", 0.0) for n in cold], seeds),
        color=["tab:orange" if n.endswith("+dmm") else "tab:blue" for n in cold],
        capsize=3,
    )
    ax.set_xticks(range(len(cold)), cold, rotation=45, ha="right")
    ax.set_ylabel(f"nDCG@{k} on cold-start items")
    ax.set_xlabel("method (orange: +DMM)")
    ax.set_title("cold start: items never seen in training", fontsize=10)
    if not cold:
        ax.text(0.5, 0.5, "no cold items (data.cold_items=0)", ha="center", transform=ax.transAxes)
    fig.suptitle(f"{results['info'].get('dataset', '')}: {spread_caption(seeds)}", fontsize=11)
    fig.tight_layout()
    path = out / "recsys.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    curves = plot_curves(results, out)
    return [path] if curves is None else [path, curves]


def validation_curves(run_dir: Path, metric: str = "ndcg@10") -> list[tuple[int, float]]:
    """``[(epoch, validation metric), ...]`` of a trained run (its ``metrics.jsonl``)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(int(r["epoch"]), float(r[f"val/{metric}"])) for r in recs if f"val/{metric}" in r]


def plot_curves(results: dict[str, Any], out: Path, metric: str = "ndcg@10") -> Path | None:
    """``recsys-val.png``: the validation ``metric`` against the epoch, one panel per trained
    base method with its +DMM variant (every seed; a dot marks each seed's selected epoch)."""
    runs: dict[str, list[list[tuple[int, float]]]] = {}
    for r in results.get("runs", []):
        pts = validation_curves(Path(r["dir"]), metric)
        if pts:
            runs.setdefault(r["method"], []).append(pts)
    bases = list(dict.fromkeys(m.removesuffix("+dmm") for m in runs))
    if not bases:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(bases), figsize=(4.5 * len(bases), 4), squeeze=False)
    for ax, base in zip(axes[0], bases, strict=True):
        for m, color in ((base, "tab:blue"), (base + "+dmm", "tab:orange")):
            for i, pts in enumerate(runs.get(m, [])):
                ep, val = zip(*pts, strict=True)
                ax.plot(ep, val, color=color, alpha=0.8, label=m if i == 0 else None)
                j = max(range(len(val)), key=lambda t: val[t])
                ax.plot([ep[j]], [val[j]], "o", color=color)
        ax.set_title(base)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {metric}")
        ax.legend()
    fig.tight_layout()
    path = out / "recsys-val.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
