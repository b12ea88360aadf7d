"""A comparison of any pipeline, from its :class:`~otcl.pipelines.spec.Pipeline` spec alone.

:func:`compare` trains every method x seed of a request into ``<out>/<method>/seed<k>`` with
the shared machinery of :mod:`otcl.pipelines.compare` (reuse of finished runs, resume of
interrupted ones, refusal of a directory holding other settings, ``jobs`` worker processes,
torchrun), then writes ONE ``results.json`` schema for every pipeline
(:mod:`otcl.pipelines.results`), the pipeline's table (printed and ``table.md``) and plots.

**Merging.** The table covers every finished run in ``out`` that matches the request's
configuration, not only the runs requested: a comparison of one method and one seed into a
directory holding five methods and three seeds keeps the five rows (its own run reused or
added). A run made with other settings is left out with a line that says so. Plots are redrawn
from the merged results; with ``plot=False`` the plots of an earlier comparison are removed
(they would no longer match the table).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from .compare import (
    Run,
    Runner,
    check_request,
    comparison_dir,
    make_run,
    run_state,
    stderr_log,
    train_runs,
    write_outputs,
)
from .config import save_config
from .engine.distributed import agreed, broadcast, is_main, local_main_first, main_log
from .engine.rundir import SUMMARY
from .engine.trainer import EpochTrainer
from .results import RESULTS, aggregate
from .spec import Pipeline, get

__all__ = ["compare", "compare_pipeline", "SpecRunner", "method_configs"]

Log = Callable[[str], None]


class SpecRunner(Runner):
    """The :class:`~otcl.pipelines.compare.Runner` of a spec (pickled to worker processes)."""

    def __init__(self, spec: Pipeline, evaluate: bool = True, force: bool = False) -> None:
        self.spec = spec
        self.force: bool = force
        self.config_cls: type[Any] = spec.config_cls
        self.trainer_cls: type[EpochTrainer] = spec.trainer_cls
        #: evaluate each run after training (into ``spec.eval_file``)
        self.evaluate: bool = evaluate and spec.eval_after_train and spec.evaluate is not None
        self.needs: tuple[str, ...] = (
            *spec.finished_files,
            *((cast(str, spec.eval_file),) if self.evaluate else ()),
        )

    def resolve(self, cfg: Any) -> Any:
        return self.spec.resolve(cfg)

    def load_data(self, cfg: Any) -> Any:
        return self.spec.load_data(cfg)

    def data_key(self, cfg: Any) -> str:
        if self.spec.data_key is not None:
            return self.spec.data_key(cfg)
        return super().data_key(cfg)

    def finish(self, run: Run, data: Any) -> None:
        if self.evaluate:
            t = run.cfg.train
            self.spec.evaluate(run.dir, device=t.device, data=data, progress=t.progress)  # type: ignore[misc]

    def describe(self, summary: dict[str, Any]) -> str:
        return self.spec.describe_run(summary)

    def cost(self, run: Run) -> float:
        return self.spec.cost(run.cfg)


def method_configs(
    spec: Pipeline,
    base: Any,
    method: str,
    seeds: Sequence[int],
    per_loss: Mapping[str, Mapping[str, Any]],
) -> list[Any]:
    """The config of ``method`` for each seed (``spec.method_config``, then the seed)."""
    shared = dict(getattr(getattr(base, "loss", None), "params", {}) or {})
    out = []
    for seed in seeds:
        cfg = spec.method_config(copy.deepcopy(base), method, shared, per_loss)
        cfg.train.seed = int(seed)
        out.append(cfg)
    return out


def _check_params(spec: Pipeline, methods: Sequence[str], base: Any, per_loss: Mapping) -> None:
    """Per-loss parameters only for a loss some method trains with (``dmm`` for ``+dmm``)."""
    used: set[str] = set()
    for m in methods:
        used |= set(spec.method_losses(m))
    shared = getattr(getattr(base, "loss", None), "params", None)
    if shared and not used:
        raise ValueError("--loss-param: no compared method trains with an otcl loss")
    check_request(methods, 1, per_loss, used, what="methods", item="method")


def compare(
    spec: Pipeline,
    cfg: Any,
    methods: Sequence[str] | None = None,
    seeds: int = 3,
    out: str | Path | None = None,
    *,
    loss_params: Mapping[str, Mapping[str, Any]] | None = None,
    jobs: int = 1,
    evaluate: bool = True,
    plot: bool = True,
    force: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Train (or reuse) every method of ``methods`` with ``seeds`` seeds and tabulate.

    Args:
        spec: the pipeline.
        cfg: the shared configuration; its ``loss.params`` go to every method's loss.
        methods: method names (default ``spec.methods``); ``<m>+dmm`` wraps ``<m>`` in DMM.
        seeds: seeds per method, ``cfg.train.seed + 0 .. seeds - 1``.
        out: the comparison directory (default ``runs/<pipeline>-compare``).
        loss_params: ``{loss: params}`` on top of the shared ones (``"dmm"``: every ``+dmm``).
        jobs: worker processes (1: one run after the other in this process).
        evaluate: run the spec's evaluation after each run (where it has one).
        force: train again the runs whose data changed since they were trained (else such a
            run is refused).
    Returns:
        the content of ``results.json`` (see :mod:`otcl.pipelines.results`).
    """
    log = main_log(log or stderr_log)
    methods = list(spec.methods if methods is None else methods)
    if not methods:
        raise ValueError("methods: expected at least one method, got none")
    if seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {seeds!r}")
    if jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs!r}")
    per_loss = {k: dict(v) for k, v in (loss_params or {}).items()}
    base = spec.prepare_compare(copy.deepcopy(cfg))
    _check_params(spec, methods, base, per_loss)
    seed_list = [int(base.train.seed) + k for k in range(seeds)]
    skipped: dict[str, str] = {}
    grid: list[Run] = []
    baselines: list[tuple[str, int]] = []
    for m in methods:  # every run's settings are checked before anything is written
        configs = method_configs(spec, base, m, seed_list, per_loss)  # an unknown name: here
        reason = spec.skip(m)
        if reason:
            skipped[m] = reason
            continue
        if spec.is_baseline(m):
            baselines += [(m, s) for s in seed_list]
            continue
        for c in configs:
            spec.check(spec.resolve(c))
    out = Path(out if out is not None else f"runs/{spec.name}-compare")
    with comparison_dir(out, spec.name) as out:
        resolved = spec.resolve(base)
        with agreed():
            if is_main():
                save_config(resolved, out / "config.yaml")
        data = local_main_first(lambda: spec.load_data(resolved))
        log(f"otcl {spec.name} compare: {data!r}; {', '.join(methods)}; {seeds} seed(s); out {out}")
        t0 = time.perf_counter()
        with agreed():
            if is_main():
                for m, s in baselines:
                    cfg_s = method_configs(spec, base, m, [s], per_loss)[0]
                    spec.baseline(m, cfg_s, out / m / f"seed{s}", data, log)  # type: ignore[misc]
        for m in methods:
            if m in skipped:
                log(f"skipping {m}: {skipped[m]}")
            elif not spec.is_baseline(m):
                grid += [
                    make_run(m, c, out) for c in method_configs(spec, base, m, seed_list, per_loss)
                ]
        runner = SpecRunner(spec, evaluate, force)
        train_runs(runner, grid, data, jobs=jobs, log=log)
        results: dict[str, Any] = {}
        with agreed():  # rank 0 reads the runs back and writes the results
            if is_main():
                order, cells = _collect(spec, runner, base, methods, per_loss, out, log)
                records = [
                    {"method": m, "seed": s, "dir": str(d), "metrics": spec.record(d)}
                    for m, s, d in cells
                ]
                info = spec.info(resolved, data) if spec.info is not None else {}
                results = aggregate(
                    spec, resolved, order, records, skipped, info, spec.delta_metrics
                )
                results["wall_seconds"] = time.perf_counter() - t0
                _write(spec, results, out, plot, log)
        return broadcast(results)


def compare_pipeline(
    name: str,
    cfg: Any,
    methods: Sequence[str] | None,
    seeds: int,
    out: str | Path | None,
    **options: Any,
) -> dict[str, Any]:
    """:func:`compare` of the pipeline registered as ``name`` (its spec looked up when called):
    what a pipeline's Python entry point (``otcl.pipelines.recsys.compare.compare``, ...) runs
    with its own defaults. ``options``: the keywords of :func:`compare`."""
    return compare(get(name), cfg, methods, seeds, out, **options)


def _finished(runner: SpecRunner, spec: Pipeline, method: str, run_dir: Path, want: Any) -> bool:
    """Whether ``run_dir`` holds a finished run of ``want``'s configuration (a trained method:
    :func:`~otcl.pipelines.compare.run_state`'s rule; a baseline: its summary)."""
    if spec.is_baseline(method):
        return (run_dir / SUMMARY).exists()
    try:
        return run_state(runner, Run(method, int(want.train.seed), want, run_dir)) == "finished"
    except ValueError:  # made with other settings
        return False


def _collect(
    spec: Pipeline,
    runner: SpecRunner,
    base: Any,
    methods: Sequence[str],
    per_loss: Mapping[str, Mapping[str, Any]],
    out: Path,
    log: Log,
) -> tuple[list[str], list[tuple[str, int, Path]]]:
    """The methods (in table order) and the finished (method, seed, dir) cells of ``out``
    that match the request: its own runs, and those of earlier comparisons with its settings.

    The order: the earlier ``results.json``'s methods, then the request's, then the others.
    """
    found: dict[str, dict[int, Path]] = {}
    for d in sorted(p for p in out.glob("*/seed*") if p.is_dir()):
        method, tail = d.parent.name, d.name[len("seed") :]
        if not tail.lstrip("-").isdigit():
            continue
        try:
            want = method_configs(spec, base, method, [int(tail)], per_loss)[0]
        except ValueError:  # not a method of this pipeline (or not with these parameters)
            continue
        if _finished(runner, spec, method, d, want):
            found.setdefault(method, {})[int(tail)] = d
        elif (d / SUMMARY).exists() and method not in methods:
            log(f"{d}: not in the table (made with other settings)")
    before: list[str] = []
    prev = out / RESULTS
    if prev.exists():
        try:
            before = list(json.loads(prev.read_text()).get("methods", {}))
        except (ValueError, AttributeError):
            before = []
    order = [m for m in before if m in found]
    order += [m for m in methods if m in found and m not in order]
    order += sorted(m for m in found if m not in order)
    cells = [(m, s, found[m][s]) for m in order for s in sorted(found[m])]
    return order, cells


def _write(spec: Pipeline, results: dict[str, Any], out: Path, plot: bool, log: Log) -> None:
    """``results.json``, the table and the plots (stale plots removed when none are drawn)."""
    table = spec.table(results) if spec.table is not None else json.dumps(results["methods"])
    draw = None
    plot_fn = spec.plot
    if plot and plot_fn is not None:
        draw = lambda: plot_fn(results, out)  # noqa: E731
    else:
        for name in spec.plot_files:
            if (out / name).exists():
                (out / name).unlink()
                log(f"{out / name}: removed (an earlier plot, no longer the table's)")
    write_outputs(out, results, table, plot=draw, log=log)
