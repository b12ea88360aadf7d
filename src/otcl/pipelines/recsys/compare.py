"""``otcl recsys compare``: baselines, CML ±DMM and two-tower ±DMM over seeds, one table.

Every method and seed is one run directory ``<out>/<method>/seed<k>``, trained by the shared
comparison (:mod:`otcl.pipelines.comparison`): trained methods are
:class:`~otcl.pipelines.recsys.trainer.RecsysTrainer` runs (finished ones are reused, interrupted
ones resumed from their checkpoint), the baselines without a training loop (popularity, EASE and
ItemKNN tuned on the validation pairs, ``implicit``'s ALS and BPR) write their ``summary.json``
atomically. Every trained run is reported at its validation-best epoch (``best_epoch``). The split is the same for
every run (``data.split_seed``); seeds change the model's initialisation and batches.

This module holds what is the pipeline's own: the method names (:func:`parse_method`), the
baselines, the table (nDCG and Recall at 10 and 20, HR@10, MAP@10, the long-tail Recall@10, the
best epochs, the DMM deltas, the robustness drops), ``recsys.png`` (nDCG@10 / Recall@10 with seed
spread, and the drops) and ``recsys-val.png`` (validation nDCG@10 against the epoch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ... import __version__
from ...losses import available
from ..compare import mean_std, pyplot, reuse_line
from ..config import given
from ..engine.rundir import SUMMARY
from ..files import atomic_write_text
from ..plots import error_bars, legend_outside, pm, spread_caption
from ..results import per_seed
from .baselines import (
    IMPLICIT_MODELS,
    ITEM_ITEM,
    Popularity,
    fit_implicit,
    implicit_available,
    score_metrics,
    tune_item_item,
)
from .config import DROP_VARIANTS, RecsysConfig
from .data import Split

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
]

#: what ``otcl recsys compare`` runs when no methods are named
DEFAULT_METHODS = (
    "popularity",
    "ease",
    "itemknn",
    "implicit-als",
    "implicit-bpr",
    "mf-bpr",
    "cml",
    "cml+dmm",
    "tt-infonce",
    "tt-infonce+dmm",
    "tt-gca-uot",
    "tt-gca-uot+dmm",
)

#: columns of the printed table
TABLE_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "hr@10", "map@10")
#: the baselines without a training loop that depend on the split alone (``ease`` and
#: ``itemknn`` tuned on the validation pairs): fitted once per comparison
BASELINES = ("popularity", "ease", "itemknn")


def parse_method(name: str) -> dict[str, Any]:
    """``cml+dmm`` -> ``{"kind": "cml", "loss": "triplet", "dmm": True}`` (see DEFAULT_METHODS).

    Names: ``popularity``, ``ease``, ``itemknn``, ``implicit-als``, ``implicit-bpr`` (baselines),
    ``mf-bpr``,
    ``cml[+dmm]``, ``tt-<otcl loss>[+dmm]`` (two-tower).
    """
    base, dmm = (name[: -len("+dmm")], True) if name.endswith("+dmm") else (name, False)
    if base in BASELINES and not dmm:
        return {"baseline": base}
    if base.startswith("implicit-") and base[len("implicit-") :] in IMPLICIT_MODELS and not dmm:
        return {"baseline": base}
    if base == "mf-bpr" and not dmm:
        return {"kind": "mf", "loss": "bpr", "dmm": False}
    if base == "cml":
        return {"kind": "cml", "loss": "triplet", "dmm": dmm}
    if base.startswith("tt-"):
        loss = base[3:]
        if loss not in available() or loss == "dmm":
            raise ValueError(
                f"methods: unknown loss {loss!r} in {name!r}; two-tower losses: "
                f"{', '.join(n for n in available() if n != 'dmm')}"
            )
        return {"kind": "two-tower", "loss": loss, "dmm": dmm}
    raise ValueError(
        f"methods: unknown method {name!r}; expected popularity, ease, itemknn, implicit-als, "
        "implicit-bpr, mf-bpr, cml, cml+dmm, tt-<loss>, tt-<loss>+dmm"
    )


def method_config(
    cfg: RecsysConfig,
    method: str,
    shared: Mapping[str, Any],
    per_loss: Mapping[str, Mapping[str, Any]],
) -> RecsysConfig:
    """The config of one method (a baseline: ``cfg`` as it is). The two-tower's loss takes the
    shared loss parameters and its own; CML and MF train with losses of their own."""
    p = parse_method(method)
    if "baseline" in p:
        return cfg
    cfg.model.kind = p["kind"]
    cfg.loss.name = p["loss"]
    two_tower = p["kind"] == "two-tower"
    cfg.loss.params = {**shared, **per_loss.get(p["loss"], {})} if two_tower else {}
    cfg.dmm.enabled = p["dmm"]
    return cfg


def method_name(cfg: RecsysConfig) -> str:
    """The method of a run's config (the inverse of :func:`method_config`)."""
    kind, dmm = cfg.model.kind, "+dmm" if cfg.dmm.enabled else ""
    if kind == "mf":
        return "mf-bpr"
    return f"cml{dmm}" if kind == "cml" else f"tt-{cfg.loss.name}{dmm}"


def method_losses(method: str) -> tuple[str, ...]:
    """The otcl losses of a method: the two-tower's (CML and MF have losses of their own)."""
    p = parse_method(method)
    return (p["loss"],) if p.get("kind") == "two-tower" else ()


def is_baseline(method: str) -> bool:
    return "baseline" in parse_method(method)


def skip(method: str) -> str | None:
    if parse_method(method).get("baseline", "").startswith("implicit-"):
        if not implicit_available():
            return "the optional package implicit is not installed"
    return None


def prepare_compare(cfg: RecsysConfig) -> RecsysConfig:
    """A comparison holds out 10% of the items for the cold-start evaluation unless
    ``data.cold_items`` is given."""
    if "cold_items" not in given(cfg.data):
        cfg.data.cold_items = 0.1
    return cfg


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
    from ..comparison import compare as run_compare
    from ..spec import get

    return run_compare(
        get("recsys"), cfg, methods, seeds, out, loss_params=loss_params, jobs=jobs, plot=plot,
        log=log,
    )  # fmt: skip


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
