"""The domain-target sweep through the shared comparison machinery (:mod:`otcl.pipelines.compare`).

Every method x seed is a run in ``<out>/<method>/seed<k>``: finished runs are reused,
interrupted ones resumed, a directory holding other settings refused; ``jobs`` worker processes
train runs side by side. ``<out>`` receives ``results.json`` (method x seed x metric),
``table.md``, ``sweep.png`` and one sample grid per domain (``domain-<name>.png``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..compare import (
    Run,
    Runner,
    comparison_dir,
    make_run,
    mean_std,
    stderr_log,
    train_runs,
    write_outputs,
)
from ..config import save_config
from .compare import METHODS, format_table, info, method_config, parse_method, plot_sweep, record
from .config import Config, resolve
from .evaluate import evaluate_run
from .trainer import EVAL_FILE, DomainTrainer, check_config, load_data

__all__ = ["DomainRunner", "sweep"]


class DomainRunner(Runner):
    """The runs of the sweep: :class:`DomainTrainer`, then the probes (``eval.json``)."""

    config_cls = Config
    trainer_cls = DomainTrainer
    needs = (EVAL_FILE,)

    def resolve(self, cfg: Config) -> Config:
        return resolve(cfg)

    def load_data(self, cfg: Config) -> Any:
        return load_data(cfg)

    def finish(self, run: Run, data: Any) -> None:
        evaluate_run(run.dir, device=run.cfg.train.device, data=data)

    def describe(self, summary: dict[str, Any]) -> str:
        return f", final loss {summary.get('final_loss', float('nan')):.4f}"


def sweep(
    cfg: Config,
    methods: Sequence[str] = METHODS,
    seeds: int = 3,
    out: str | Path = "runs/domains-compare",
    *,
    jobs: int = 1,
    plot: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) and probe every method with ``seeds`` seeds; returns ``results.json``."""
    log = log or stderr_log
    if not methods:
        raise ValueError("methods: expected at least one method, got none")
    if seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {seeds!r}")
    for m in methods:
        parse_method(m)
    base = resolve(copy.deepcopy(cfg))
    shared = dict(base.loss.params)
    grid = []
    for m in methods:
        for k in range(seeds):
            c = method_config(copy.deepcopy(base), m, shared, {})
            c.train.seed = base.train.seed + k
            check_config(resolve(c))  # every run checked before anything is written
            grid.append(make_run(m, c, out))
    with comparison_dir(out) as out_dir:
        save_config(base, out_dir / "config.yaml")
        data = load_data(base)
        log(f"otcl domains compare: {data!r}; {len(methods)} methods; {seeds} seed(s)")
        _grids(data, out_dir, log)
        t0 = time.perf_counter()
        train_runs(DomainRunner(), grid, data, jobs=jobs, log=log)
        records = [
            {"method": r.method, "seed": r.seed, "dir": str(r.dir), "metrics": record(r.dir)}
            for r in grid
        ]
        results = _aggregate(base, methods, records, info(base, data))
        results["wall_seconds"] = time.perf_counter() - t0
        write_outputs(
            out_dir,
            results,
            format_table(results),
            plot=(lambda: plot_sweep(results, out_dir)) if plot else None,
            log=log,
        )
    return results


def _grids(data: Any, out: Path, log: Callable[[str], None]) -> None:
    try:
        from ..sources.images import save_domain_grids

        paths = save_domain_grids(data, out)
        log("domain samples: " + ", ".join(str(p) for p in paths))
    except ImportError:
        log("Pillow is not installed: no sample grids")


def _aggregate(base: Config, methods, records, inf) -> dict[str, Any]:
    import platform

    import torch

    from ... import __version__

    table: dict[str, Any] = {}
    for m in methods:
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"])
        names: list[str] = []
        for r in rs:
            names += [k for k in r["metrics"] if k not in names]
        stats = {}
        for k in names:
            vals = [r["metrics"].get(k) for r in rs]
            mean, std = mean_std(vals)
            stats[k] = {"mean": mean, "std": std, "n": len(vals), "per_seed": vals}
        table[m] = {"seeds": [r["seed"] for r in rs], "metrics": stats}
    return {
        "schema": "otcl-results/1",
        "pipeline": "domains",
        "methods": table,
        "runs": records,
        "deltas": {},
        "skipped": {},
        "info": inf,
        "config": base.to_dict(),
        "versions": {
            "otcl": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
