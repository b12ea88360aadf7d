"""``otcl recsys compare``: baselines, CML ±DMM and two-tower ±DMM over seeds, one table.

Every method and seed is one run directory ``<out>/<method>/seed<k>``: trained methods are
:class:`~otcl.pipelines.recsys.trainer.RecsysTrainer` runs (finished ones are reused, interrupted
ones resumed from their checkpoint), the baselines without a training loop (popularity,
``implicit``'s ALS and BPR) write their ``summary.json`` atomically. The split is the same for
every run (``data.split_seed``); seeds change the model's initialisation and batches.

Outputs: ``results.json`` (every number, per seed and mean ± std, the DMM deltas paired by seed,
the robustness drops), ``table.md`` (printed too: nDCG and Recall at 10 and 20, HR@10, MAP@10)
and ``recsys.png`` (nDCG@10 / Recall@10 with seed spread, and the robustness drops).
"""

from __future__ import annotations

import copy
import json
import math
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
    paired_delta,
    pyplot,
    reuse_line,
    stderr_log,
    train_runs,
    write_outputs,
)
from ..config import save_config
from ..engine.rundir import SUMMARY
from ..files import atomic_write_text
from .baselines import (
    IMPLICIT_MODELS,
    ITEM_ITEM,
    Popularity,
    fit_implicit,
    implicit_available,
    tune_item_item,
)
from .config import DROP_VARIANTS, RecsysConfig, resolve
from .data import Split
from .trainer import RecsysTrainer, load_data, score_metrics, validate

__all__ = [
    "compare",
    "DEFAULT_METHODS",
    "parse_method",
    "method_config",
    "aggregate",
    "format_table",
    "plot_results",
    "RecsysRunner",
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
#: the baselines without a training loop (``ease`` and ``itemknn`` tuned on validation)
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
    base: RecsysConfig, method: dict[str, Any], seed: int, loss_params
) -> RecsysConfig:
    """The resolved config of one trained method and seed."""
    cfg = copy.deepcopy(base)
    cfg.model.kind = method["kind"]
    cfg.loss.name = method["loss"]
    cfg.loss.params = (
        dict(loss_params.get(method["loss"], {})) if method["kind"] == "two-tower" else {}
    )
    cfg.dmm.enabled = method["dmm"]
    cfg.train.seed = seed
    return resolve(cfg)


class RecsysRunner(Runner):
    """The trained runs of ``otcl recsys compare`` (:class:`RecsysTrainer`; the baselines have
    no training loop and no checkpoint)."""

    config_cls = RecsysConfig
    trainer_cls = RecsysTrainer
    resolve = staticmethod(resolve)

    def load_data(self, cfg: RecsysConfig) -> Any:
        return load_data(cfg)

    def describe(self, summary: dict[str, Any]) -> str:
        score = summary.get("warm/ndcg@10")
        return "" if score is None else f", ndcg@10 {score:.4f}"

    def cost(self, run: Run) -> float:
        """CML's K negatives first, then the two-tower's OT losses, then InfoNCE, then MF."""
        c = run.cfg
        return -({"cml": 0, "two-tower": 1, "mf": 3}[c.model.kind] + (c.loss.name == "infonce"))


def _baseline_one(
    name: str, cfg: RecsysConfig, seed: int, run_dir: Path, s: Split, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fit and evaluate a baseline (no training loop), reusing a finished result."""
    path = run_dir / SUMMARY
    if path.exists():
        log(reuse_line(run_dir))
        return json.loads(path.read_text())
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


def compare(
    cfg: RecsysConfig,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: int = 3,
    out: str | Path = "runs/recsys-compare",
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
        jobs: trained runs at once, each in its own process (one thread each; 1 = in this
            process, one after the other). The runs are independent, so the results do not
            depend on ``jobs``.
    Returns:
        the content of ``results.json``.
    """
    log = log or stderr_log
    if jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs!r}")
    if not methods:
        raise ValueError("methods: expected at least one method, got none")
    parsed = {m: parse_method(m) for m in methods}
    loss_params = loss_params or {}
    used = {p["loss"] for p in parsed.values() if p.get("kind") == "two-tower"}
    check_request(methods, seeds, loss_params, used, what="methods", item="method")
    skipped = {}
    if not implicit_available():
        for m, p in parsed.items():
            if p.get("baseline", "").startswith("implicit-"):
                skipped[m] = "the optional package implicit is not installed"
    # every run's config is built (and checked) before anything is trained or written
    configs = {
        (m, k): method_config(cfg, p, cfg.train.seed + k, loss_params)
        for m, p in parsed.items()
        if "kind" in p
        for k in range(seeds)
    }
    for c in configs.values():
        validate(c)
    with comparison_dir(out) as out:
        data = load_data(cfg)
        save_config(cfg, out / "config.yaml")
        n = len(methods)
        log(f"otcl recsys compare: {data[0]!r}, {data[1]!r}; {n} methods x {seeds} seeds")
        t_start = time.perf_counter()
        runs: dict[str, list[dict[str, Any]]] = {}
        trained: list[Run] = []
        for m, p in parsed.items():
            if m in skipped:
                log(f"skipping {m}: {skipped[m]}")
                continue
            runs[m] = [{} for _ in range(seeds)]
            for k in range(seeds):
                seed = cfg.train.seed + k
                if "baseline" in p and k > 0 and p["baseline"] in BASELINES:
                    # deterministic given the split: the first seed's fit, under each seed
                    runs[m][k] = {**runs[m][0], "seed": seed}
                elif "baseline" in p:
                    run_dir = out / m / f"seed{seed}"
                    runs[m][k] = _baseline_one(p["baseline"], cfg, seed, run_dir, data[1], log)
                else:
                    trained.append(make_run(m, configs[(m, k)], out))
        train_runs(RecsysRunner(), trained, data, jobs=jobs, log=log)
        for run in trained:
            runs[run.method][run.seed - cfg.train.seed] = json.loads(
                (run.dir / SUMMARY).read_text()
            )
        ks = [int(k) for k in cfg.eval.ks]
        results = aggregate(runs, skipped, 10 if 10 in ks else max(ks))
        results["curves"] = validation_curves(trained, cfg.eval.select)
        results["select"] = cfg.eval.select
        results.update(
            {
                "dataset": data[0].name,
                "split": repr(data[1]),
                "seeds": seeds,
                "wall_seconds": time.perf_counter() - t_start,
                "torch": torch.__version__,
                "otcl": __version__,
                "threads": torch.get_num_threads(),
            }
        )
        write_outputs(
            out,
            results,
            format_table(results),
            plot=(lambda: [plot_results(results, out)]) if plot else None,
            log=log,
        )
    return results


def validation_curves(trained: Sequence[Run], metric: str) -> dict[str, list[list[float]]]:
    """Per trained method, per seed: the validation ``metric`` after each validated epoch
    (``[[epoch, value], ...]`` from the run's ``metrics.jsonl``)."""
    curves: dict[str, list[list[list[float]]]] = {}
    for run in sorted(trained, key=lambda r: r.seed):
        path = run.dir / "metrics.jsonl"
        points = []
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if f"val/{metric}" in rec:
                    points.append([rec["epoch"], rec[f"val/{metric}"]])
        curves.setdefault(run.method, []).append(points)
    return curves  # type: ignore[return-value]


def aggregate(
    runs: dict[str, list[dict[str, Any]]], skipped: dict[str, str], k: int = 10
) -> dict[str, Any]:
    """Mean ± std per method, DMM deltas paired by seed, robustness drops (at cut-off ``k``)."""
    methods: dict[str, Any] = {}
    for m, rs in runs.items():
        names = sorted({n for r in rs for n, v in r.items() if "/" in n and isinstance(v, float)})
        stats = {}
        for name in names:
            mean, std = mean_std([r.get(name, float("nan")) for r in rs])
            stats[name] = {"mean": mean, "std": std, "per_seed": [r.get(name) for r in rs]}
        secs = mean_std([r.get("train_seconds", float("nan")) for r in rs])
        methods[m] = {"metrics": stats, "train_seconds": secs[0], "seeds": [r["seed"] for r in rs]}
        if all("best_epoch" in r for r in rs) and rs:  # trained: the validation-selected epoch
            epochs = [r["best_epoch"] for r in rs]
            mean, std = mean_std([float(x) for x in epochs])
            methods[m]["best_epoch"] = {"mean": mean, "std": std, "per_seed": epochs}
            methods[m]["epochs_trained"] = [r.get("epochs") for r in rs]
        if all("hyperparameter" in r for r in rs) and rs:  # tuned on validation
            methods[m]["hyperparameter"] = [r["hyperparameter"] for r in rs]
    deltas = {}
    for m in runs:
        if m.endswith("+dmm") and m[: -len("+dmm")] in runs:
            base = m[: -len("+dmm")]
            deltas[m] = {
                key: paired_delta([r.get(key) for r in runs[base]], [r.get(key) for r in runs[m]])
                for key in (f"warm/recall@{k}", f"warm/ndcg@{k}")
            }
    drops: dict[str, Any] = {}
    for m, rs in runs.items():
        for variant in (*DROP_VARIANTS, "cold"):
            key = f"{variant}/ndcg@{k}"
            if all(key in r for r in rs) and rs:
                if variant == "cold":
                    drops.setdefault(m, {})[variant] = mean_std([r[key] for r in rs])[0]
                else:
                    diffs = [r[f"warm/ndcg@{k}"] - r[key] for r in rs]
                    drops.setdefault(m, {})[variant] = mean_std(diffs)[0]
    return {
        "methods": methods,
        "k": k,
        "dmm_delta": deltas,
        "robustness": drops,
        "skipped": skipped,
    }


def _fmt(stat: dict[str, float] | None) -> str:
    if stat is None or math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def format_table(results: dict[str, Any]) -> str:
    """Markdown tables: warm metrics, DMM deltas, robustness (nDCG@10)."""
    lines = [
        f"{results.get('dataset', '')}: mean ± std over {results.get('seeds', '?')} seeds "
        "(users with a relevant test item); trained methods at their validation-best epoch",
        "",
        "| method | " + " | ".join(TABLE_METRICS) + " | tail recall@10 | best epoch | train s |",
        "|---" * (len(TABLE_METRICS) + 4) + "|",
    ]
    for m, r in results["methods"].items():
        cells = [_fmt(r["metrics"].get(f"warm/{c}")) for c in TABLE_METRICS]
        cells.append(_fmt(r["metrics"].get("tail/recall@10")))
        best = r.get("best_epoch")
        if best is not None:
            cells.append(f"{best['mean']:.1f} ({', '.join(str(e) for e in best['per_seed'])})")
        elif "hyperparameter" in r:
            cells.append("val: " + ", ".join(f"{h:g}" for h in r["hyperparameter"]))
        else:
            cells.append("-")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['train_seconds']:.1f} |")
    for m, why in results.get("skipped", {}).items():
        lines.append(
            f"| {m} | " + " | ".join(["absent"] * (len(TABLE_METRICS) + 2)) + f" | {why} |"
        )
    k = results.get("k", 10)
    if results.get("dmm_delta"):
        lines += ["", f"| DMM vs its base | Δ recall@{k} | Δ ndcg@{k} |", "|---|---|---|"]
        for m, d in results["dmm_delta"].items():
            cells = [
                f"{d[c]['delta']:+.4f} ± {d[c]['delta_std']:.4f} ({100 * d[c]['relative']:+.1f}%)"
                for c in (f"warm/recall@{k}", f"warm/ndcg@{k}")
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if results.get("robustness"):
        cols = (*DROP_VARIANTS, "cold")
        lines += [
            "",
            f"| nDCG@{k} drop (warm - variant); cold: nDCG@{k} on cold items | "
            + " | ".join(cols)
            + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for m, d in results["robustness"].items():
            cells = [f"{d[c]:.4f}" if c in d else "n/a" for c in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], out: Path) -> Path:
    """``recsys.png``: nDCG@10 and Recall@10 per method (error bars: seed std) and drops."""
    plt = pyplot()

    names = list(results["methods"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for ax, key in zip(axes[:2], ("warm/ndcg@10", "warm/recall@10"), strict=True):
        stats = [results["methods"][n]["metrics"].get(key) for n in names]
        means = [s["mean"] if s else 0.0 for s in stats]
        stds = [s["std"] if s else 0.0 for s in stats]
        colors = ["tab:orange" if n.endswith("+dmm") else "tab:blue" for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(key.split("/")[1] + " (orange: +DMM)")
    rob = results.get("robustness", {})
    ax = axes[2]
    cols = list(DROP_VARIANTS)
    width = 0.8 / max(1, len(cols))
    rnames = list(rob)
    for j, c in enumerate(cols):
        ax.bar(
            [i + j * width for i in range(len(rnames))],
            [rob[n].get(c, 0.0) for n in rnames],
            width=width,
            label=c,
        )
    middle = width * (len(cols) - 1) / 2  # the centre of each method's group of bars
    ax.set_xticks([i + middle for i in range(len(rnames))], rnames, rotation=45, ha="right")
    ax.set_title("nDCG@10 drop with item features removed")
    if rnames:
        ax.legend()
    fig.tight_layout()
    path = out / "recsys.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    plot_curves(results, out)
    return path


def plot_curves(results: dict[str, Any], out: Path) -> Path | None:
    """``recsys-val.png``: the validation metric against the epoch, one panel per base method
    with its +DMM variant (every seed; a dot marks each seed's selected epoch)."""
    curves = results.get("curves") or {}
    bases = [m for m in curves if not m.endswith("+dmm")]
    bases += [m[: -len("+dmm")] for m in curves if m.endswith("+dmm")]
    bases = list(dict.fromkeys(bases))
    if not bases:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(bases), figsize=(4.5 * len(bases), 4), squeeze=False)
    for ax, base in zip(axes[0], bases, strict=True):
        for m, color in ((base, "tab:blue"), (base + "+dmm", "tab:orange")):
            for i, pts in enumerate(curves.get(m, [])):
                if not pts:
                    continue
                ep, val = zip(*pts, strict=True)
                ax.plot(ep, val, color=color, alpha=0.8, label=m if i == 0 else None)
                j = max(range(len(val)), key=lambda t: val[t])
                ax.plot([ep[j]], [val[j]], "o", color=color)
        ax.set_title(base)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation " + results.get("select", "ndcg@10"))
        ax.legend()
    fig.tight_layout()
    path = out / "recsys-val.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
