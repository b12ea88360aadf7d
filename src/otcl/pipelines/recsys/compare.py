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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ...losses import available
from ..config import save_config
from ..run import CHECKPOINT, SUMMARY, TrainingInterrupted, atomic_write_text, load_checkpoint
from ..ssl.compare import _comparable, _mean_std  # same reuse rule and statistics as otcl compare
from .baselines import IMPLICIT_MODELS, Popularity, fit_implicit, implicit_available
from .config import DROP_VARIANTS, RecsysConfig, resolve
from .data import Ratings, Split
from .metrics import rank_metrics
from .trainer import RecsysTrainer, load_data, validate

__all__ = ["compare", "DEFAULT_METHODS", "parse_method", "format_table", "plot_results"]

#: what ``otcl recsys compare`` runs when no methods are named
DEFAULT_METHODS = (
    "popularity",
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


def parse_method(name: str) -> dict[str, Any]:
    """``cml+dmm`` -> ``{"kind": "cml", "loss": "triplet", "dmm": True}`` (see DEFAULT_METHODS).

    Names: ``popularity``, ``implicit-als``, ``implicit-bpr`` (baselines), ``mf-bpr``,
    ``cml[+dmm]``, ``tt-<otcl loss>[+dmm]`` (two-tower).
    """
    base, dmm = (name[: -len("+dmm")], True) if name.endswith("+dmm") else (name, False)
    if base == "popularity" and not dmm:
        return {"baseline": "popularity"}
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
        f"methods: unknown method {name!r}; expected popularity, implicit-als, implicit-bpr, "
        "mf-bpr, cml, cml+dmm, tt-<loss>, tt-<loss>+dmm"
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


def _finished(cfg: RecsysConfig, run_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run of ``cfg`` in ``run_dir``; None if it must (re)start.

    A checkpoint of other settings is an error (nothing is overwritten).
    """
    ckpt = run_dir / CHECKPOINT
    if not ckpt.exists():
        return None
    st = load_checkpoint(ckpt)
    if _comparable(st["config"]) != _comparable(cfg.to_dict()):
        raise ValueError(
            f"out: {str(run_dir)!r} holds a run with other settings; use another --out "
            "or remove that directory"
        )
    if st.get("done") and (run_dir / SUMMARY).exists():
        return json.loads((run_dir / SUMMARY).read_text())
    return None


def _train_one(
    cfg: RecsysConfig, run_dir: Path, data: tuple[Ratings, Split], log: Callable[[str], None]
) -> dict[str, Any]:
    """Train (or reuse / resume) one run; returns its summary."""
    summary = _finished(cfg, run_dir)
    if summary is not None:
        log(f"reusing {run_dir}")
        return summary
    resume = (run_dir / CHECKPOINT).exists()
    if resume:
        log(f"resuming {run_dir}")
    return RecsysTrainer(cfg, run_dir, data=data, resume=resume, log=log).fit()


def _baseline_one(
    name: str, cfg: RecsysConfig, seed: int, run_dir: Path, s: Split, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fit and evaluate a baseline (no training loop), reusing a finished result."""
    path = run_dir / SUMMARY
    if path.exists():
        log(f"reusing {run_dir}")
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    if name == "popularity":
        score = Popularity(s).scorer()
    else:
        threads = int(cfg.train.threads or 0)
        score = fit_implicit(name[len("implicit-") :], s, seed=seed, threads=threads)
    fit_seconds = time.perf_counter() - t0
    e = cfg.eval
    res = rank_metrics(
        score,
        (s.test_user, s.test_item),
        (s.seen_user, s.seen_item),
        s.n_users,
        s.n_items,
        ks=tuple(int(k) for k in e.ks),
        users=e.users,
        eval_users=s.test_users,
        candidates=s.warm_items,
        block=e.block,
    )
    summary = {
        "model": name,
        "seed": seed,
        **{f"warm/{k}": v for k, v in res.items()},
        "train_seconds": fit_seconds,
        "otcl": __version__,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=2))
    return summary


def _worker(conn: Any) -> None:
    """A worker process: trains the runs it receives one at a time (the data loaded once).

    Each result is the run's ``summary.json``; the worker answers ``"done"``. Ctrl-C (or
    SIGTERM) reaches the worker too: the running trainer saves its checkpoint at the end of the
    step and the worker exits with status 130 (143); the run resumes when the comparison is
    run again.
    """
    torch.set_num_threads(1)
    loaded: tuple[str, Any] = ("", None)
    try:
        while True:
            task = conn.recv()
            if task is None:
                return
            cfg_dict, run_dir = task
            cfg = RecsysConfig.from_dict(cfg_dict)
            key = json.dumps(cfg_dict["data"], sort_keys=True)
            if loaded[0] != key:
                loaded = (key, load_data(cfg))
            tag = f"[{Path(run_dir).parent.name}/{Path(run_dir).name}]"
            _train_one(
                cfg, Path(run_dir), loaded[1], lambda s, t=tag: print(f"{t} {s}", file=sys.stderr)
            )
            conn.send("done")
    except TrainingInterrupted as e:
        sys.exit(e.exit_status)
    except (KeyboardInterrupt, EOFError):
        sys.exit(130)


def _train_parallel(
    pending: list[tuple[str, int, RecsysConfig, Path]],
    jobs: int,
    log: Callable[[str], None],
    start_method: str = "spawn",
) -> dict[tuple[str, int], dict[str, Any]]:
    """Train ``pending`` runs in ``jobs`` worker processes, each taking one run at a time.

    ``spawn`` by default (a fresh interpreter, safe with torch's threads). A run is handed to a
    worker only when it is idle, so after a Ctrl-C no new run starts: the running ones save
    their checkpoints, every worker exits, and ``KeyboardInterrupt`` is re-raised here.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    done: dict[tuple[str, int], dict[str, Any]] = {}
    if not pending:
        return done
    n_workers = min(jobs, len(pending))
    log(f"training {len(pending)} runs in {n_workers} worker processes")
    # longest runs first (CML's K negatives, then OT losses), so no worker idles at the end
    cost = {"cml": 0, "two-tower": 1, "mf": 3}
    queue = sorted(pending, key=lambda r: cost[r[2].model.kind] + (r[2].loss.name == "infonce"))
    ctx = mp.get_context(start_method)
    workers = []
    busy: dict[Any, tuple[str, int, Path]] = {}
    failed: list[str] = []
    t0 = time.perf_counter()

    def assign(conn: Any) -> None:
        if queue and not failed:
            m, k, c, run_dir = queue.pop(0)
            c = copy.deepcopy(c)
            c.train.progress = False  # one line per finished run here instead of bars
            conn.send((c.to_dict(), str(run_dir)))
            busy[conn] = (m, k, run_dir)

    try:
        for _ in range(n_workers):
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child,))
            proc.start()
            child.close()
            workers.append((proc, conn))
            assign(conn)
        while busy:
            for conn in wait(list(busy)):
                m, k, run_dir = busy.pop(conn)
                try:
                    conn.recv()
                except EOFError:  # the worker died; its error is above
                    failed.append(str(run_dir))
                    continue
                done[(m, k)] = summary = json.loads((run_dir / SUMMARY).read_text())
                score = summary.get("warm/ndcg@10")
                note = "" if score is None else f", ndcg@10 {score:.4f}"
                log(
                    f"[{len(done)}/{len(pending)}] {run_dir.parent.name}/{run_dir.name} done "
                    f"in {summary.get('train_seconds', 0.0):.0f} s{note} "
                    f"({time.perf_counter() - t0:.0f} s elapsed)"
                )
                assign(conn)
        for proc, conn in workers:
            if proc.is_alive():
                conn.send(None)
            proc.join()
    except KeyboardInterrupt:
        for proc, _ in workers:  # they got the Ctrl-C too: a running run saves its checkpoint
            proc.join()
        raise
    except BaseException:  # SIGTERM or an error here: the workers checkpoint on SIGTERM too
        for proc, _ in workers:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        raise
    if failed:
        raise RuntimeError(f"compare: run(s) failed, see the errors above: {', '.join(failed)}")
    return done


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
    log = log or (lambda s: print(s, file=sys.stderr))
    if not methods:
        raise ValueError("methods: expected at least one method, got none")
    if seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {seeds!r}")
    if jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs!r}")
    parsed = {m: parse_method(m) for m in methods}
    loss_params = loss_params or {}
    used = {p["loss"] for p in parsed.values() if p.get("kind") == "two-tower"}
    stray = sorted(set(loss_params) - used)
    if stray:
        raise ValueError(f"loss_params: parameters given for losses not compared: {stray}")
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
    out = Path(out)
    data = load_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    log(f"otcl recsys compare: {data[0]!r}, {data[1]!r}; {len(methods)} methods x {seeds} seeds")
    t_start = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    pending: list[tuple[str, int, RecsysConfig, Path]] = []
    for m, p in parsed.items():
        if m in skipped:
            log(f"skipping {m}: {skipped[m]}")
            continue
        runs[m] = [{} for _ in range(seeds)]
        for k in range(seeds):
            seed = cfg.train.seed + k
            run_dir = out / m / f"seed{seed}"
            if "baseline" in p:
                runs[m][k] = _baseline_one(p["baseline"], cfg, seed, run_dir, data[1], log)
            else:
                c = copy.deepcopy(configs[(m, k)])
                c.train.out = str(run_dir)
                done = _finished(c, run_dir) if jobs > 1 else None
                if done is not None:
                    log(f"reusing {run_dir}")
                    runs[m][k] = done
                else:
                    pending.append((m, k, c, run_dir))
    if jobs == 1:
        for m, k, c, run_dir in pending:
            runs[m][k] = _train_one(c, run_dir, data, log)
    else:
        for (m, k), summary in _train_parallel(pending, jobs, log).items():
            runs[m][k] = summary
    ks = [int(k) for k in cfg.eval.ks]
    results = aggregate(runs, skipped, 10 if 10 in ks else max(ks))
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
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    table = format_table(results)
    print(table)
    atomic_write_text(out / "table.md", table + "\n")
    if plot:
        try:
            log(f"plot: {plot_results(results, out)}")
        except ImportError:
            log("matplotlib is not installed: no plot (pip install 'otcl[train]')")
    log(f"results: {out / 'results.json'}")
    return results


def aggregate(
    runs: dict[str, list[dict[str, Any]]], skipped: dict[str, str], k: int = 10
) -> dict[str, Any]:
    """Mean ± std per method, DMM deltas paired by seed, robustness drops (at cut-off ``k``)."""
    methods: dict[str, Any] = {}
    for m, rs in runs.items():
        names = sorted({n for r in rs for n, v in r.items() if "/" in n and isinstance(v, float)})
        stats = {}
        for name in names:
            mean, std = _mean_std([r.get(name, float("nan")) for r in rs])
            stats[name] = {"mean": mean, "std": std, "per_seed": [r.get(name) for r in rs]}
        secs = _mean_std([r.get("train_seconds", float("nan")) for r in rs])
        methods[m] = {"metrics": stats, "train_seconds": secs[0], "seeds": [r["seed"] for r in rs]}
    deltas = {}
    for m in runs:
        if m.endswith("+dmm") and m[: -len("+dmm")] in runs:
            base = m[: -len("+dmm")]
            d = {}
            for key in (f"warm/recall@{k}", f"warm/ndcg@{k}"):
                a = [r.get(key) for r in runs[base]]
                b = [r.get(key) for r in runs[m]]
                diffs = [
                    y - x for x, y in zip(a, b, strict=False) if x is not None and y is not None
                ]
                mean, std = _mean_std(diffs)
                ref = _mean_std([x for x in a if x is not None])[0]
                d[key] = {
                    "delta": mean,
                    "delta_std": std,
                    "relative": mean / ref if ref else float("nan"),
                    "per_seed": diffs,
                }
            deltas[m] = d
    drops: dict[str, Any] = {}
    for m, rs in runs.items():
        for variant in (*DROP_VARIANTS, "cold"):
            key = f"{variant}/ndcg@{k}"
            if all(key in r for r in rs) and rs:
                if variant == "cold":
                    drops.setdefault(m, {})[variant] = _mean_std([r[key] for r in rs])[0]
                else:
                    diffs = [r[f"warm/ndcg@{k}"] - r[key] for r in rs]
                    drops.setdefault(m, {})[variant] = _mean_std(diffs)[0]
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
        "(users with a relevant test item)",
        "",
        "| method | " + " | ".join(TABLE_METRICS) + " | train s |",
        "|---" * (len(TABLE_METRICS) + 2) + "|",
    ]
    for m, r in results["methods"].items():
        cells = [_fmt(r["metrics"].get(f"warm/{c}")) for c in TABLE_METRICS]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['train_seconds']:.1f} |")
    for m, why in results.get("skipped", {}).items():
        lines.append(f"| {m} | " + " | ".join(["absent"] * len(TABLE_METRICS)) + f" | {why} |")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    return path
