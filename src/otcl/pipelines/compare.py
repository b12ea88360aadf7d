"""Comparisons, shared by every pipeline: methods x seeds, one run directory each, mean ± std.

A comparison (``otcl compare``, ``otcl multimodal compare``, ``otcl recsys compare``) trains
every *method* -- a loss, a loss wrapped in DMM, a model -- with several seeds under one
configuration, each run in ``<out>/<method>/seed<k>``, then aggregates over the seeds. What
every pipeline does the same way lives here:

* :class:`Runner` -- what a pipeline says about its runs: its config class, resolve, trainer,
  the files a finished run holds, and what follows training (e.g. an evaluation);
* :func:`run_state` -- a run directory is ``"new"``, to ``"resume"`` (interrupted) or
  ``"finished"`` (reused as it is); a directory holding a run made with other settings is
  refused (the saved config, resolved as today, against the request, the settings that change
  neither the run nor its numbers aside: the trainer's ``volatile`` list, which a resume uses
  too, less its ``measures``; :mod:`otcl.pipelines.engine.identity`), so results of two
  configurations are never mixed; so is a run trained on other data (its data fingerprint,
  :mod:`otcl.pipelines.engine.fingerprint`, differs; with ``--force`` it is trained again);
* :func:`train_runs` -- trains every run that is not finished, one after the other in this
  process or in worker processes (one thread each; a Ctrl-C checkpoints the running runs);
* :func:`mean_std`, :func:`seed_stats`, :func:`paired_delta` -- statistics over seeds (from
  :mod:`otcl.pipelines.results`);
* :func:`comparison_dir`, :func:`write_outputs`, :func:`pyplot` -- the locked output directory
  and ``results.json``, ``table.md`` and the plots.

The pipeline keeps what is its own: which methods, how a run's numbers are read back, the
table and the plots.

One job per module: :mod:`.compare_runs` holds one run (:class:`Run`, :class:`Runner`,
:func:`run_state`, :func:`train_run`), :mod:`.compare_workers` trains them all
(:func:`train_runs`, :func:`default_jobs`, the worker processes), and this module, which
re-exports both, checks the request and writes the outputs.

Under ``torchrun`` (:mod:`otcl.pipelines.engine.distributed`) every process takes part in every run
(the run's global batch split over them); rank 0 alone holds the output directory, decides
whether a run is new, to resume or finished (:func:`train_run` sends its answer to the others),
runs :meth:`Runner.finish` (the evaluation) and reads back and writes the results. Runs are
trained one after the other then (worker processes do not mix with torchrun).

Example:
    >>> mean_std([0.5, 0.7, None, float("nan")])
    (0.6, 0.14142135623730948)
    >>> paired_delta([0.5, 0.6], [0.55, 0.7])["per_seed"]
    [0.050000000000000044, 0.09999999999999998]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .compare_runs import (
    Log,
    Run,
    Runner,
    make_run,
    reuse_line,
    run_state,
    stderr_log,
    train_run,
)
from .compare_workers import default_jobs, train_runs
from .engine.distributed import agreed, is_main
from .engine.rundir import RunLock, check_owner, prepare_run_dir, write_owner
from .engine.signals import deferred_signals
from .files import atomic_write_text
from .results import mean_std, paired_delta, seed_stats

__all__ = [
    "Run",
    "Runner",
    "make_run",
    "run_state",
    "train_run",
    "train_runs",
    "default_jobs",
    "check_request",
    "mean_std",
    "seed_stats",
    "paired_delta",
    "comparison_dir",
    "write_outputs",
    "pyplot",
    "reuse_line",
    "stderr_log",
]


# -- the request ---------------------------------------------------------------------------
def check_request(
    names: Sequence[str],
    seeds: int,
    loss_params: Mapping[str, Any],
    compared: Iterable[str],
    *,
    what: str = "losses",
    item: str = "loss name",
) -> None:
    """The checks every comparison makes before anything is written: at least one of
    ``names`` (the argument ``what``), ``seeds >= 1``, and per-loss parameters only for
    ``compared`` losses."""
    if not names:
        raise ValueError(f"{what}: expected at least one {item}, got none")
    if seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {seeds!r}")
    stray = sorted(set(loss_params) - set(compared))
    if stray:
        raise ValueError(f"loss_params: parameters given for losses not compared: {stray}")


# -- outputs -------------------------------------------------------------------------------
@contextmanager
def comparison_dir(out: str | os.PathLike[str], pipeline: str | None = None) -> Iterator[Path]:
    """Create ``out`` (a bad one fails before any data loads) and hold its lock: one comparison
    writes a directory at a time (under torchrun: rank 0 does). A directory that another
    command made (a training run, another pipeline's comparison) is refused, and ``out`` is
    recorded as a comparison of ``pipeline`` (:func:`~otcl.pipelines.engine.rundir.check_owner`)."""
    path, lock = Path(out), None
    owner = {"kind": "compare", "pipeline": pipeline}
    with agreed():
        if is_main():
            path = prepare_run_dir(out)
            lock = RunLock(path)
            try:
                check_owner(path, owner)
                write_owner(path, owner)
            except BaseException:
                lock.release()
                raise
    try:
        yield path
    finally:
        if lock is not None:
            lock.release()


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (``ImportError`` without matplotlib); a Ctrl-C
    during the import waits for it to finish."""
    with deferred_signals():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    return plt


def write_outputs(
    out: Path,
    results: dict[str, Any],
    table: str,
    *,
    plot: Callable[[], Sequence[Path]] | None = None,
    log: Log = stderr_log,
) -> None:
    """``results.json`` and ``table.md`` (atomically; the table printed too), then the plots
    (``plot()`` returns their paths; without matplotlib a line says so)."""
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    print(table)
    atomic_write_text(out / "table.md", table + "\n")
    if plot is not None:
        try:
            paths = plot()
            log("plots: " + ", ".join(str(p) for p in paths))
        except ImportError:
            log("matplotlib is not installed: no plots (pip install 'otcl[train]')")
    wall = results.get("wall_seconds")
    log(f"results: {out / 'results.json'}" + (f" ({wall:.0f} s)" if wall is not None else ""))
