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

import copy
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import fingerprint, identity
from .engine.checkpoint import load_checkpoint
from .engine.distributed import agreed, current, is_main, launched, main_then_broadcast
from .engine.rundir import (
    CHECKPOINT,
    SUMMARY,
    RunLock,
    check_owner,
    prepare_run_dir,
    write_owner,
)
from .engine.signals import deferred_signals
from .engine.stops import TrainingInterrupted
from .engine.trainer import EpochTrainer
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

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    """The default ``log``: one line on standard error."""
    print(line, file=sys.stderr)


def reuse_line(run_dir: str | os.PathLike[str]) -> str:
    """What a comparison says of a run it reuses."""
    return f"{run_dir}: finished earlier, reusing its results"


# -- runs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One cell of a comparison: ``method`` trained with ``cfg`` (its seed) in ``dir``."""

    method: str
    seed: int
    cfg: Any
    dir: Path


def make_run(method: str, cfg: Any, out: str | os.PathLike[str]) -> Run:
    """The run of ``method`` with ``cfg`` (a copy) in ``<out>/<method>/seed<cfg.train.seed>``."""
    cfg = copy.deepcopy(cfg)
    run_dir = Path(out) / method / f"seed{cfg.train.seed}"
    cfg.train.out = str(run_dir)
    return Run(method, int(cfg.train.seed), cfg, run_dir)


class Runner:
    """What a pipeline says about the runs of its comparison; subclass it at module level
    (worker processes receive an instance by pickling).

    Attributes:
        config_cls: the pipeline's config class (``from_dict`` of a saved config).
        trainer_cls: its :class:`~otcl.pipelines.engine.trainer.EpochTrainer`, built as
            ``trainer_cls(cfg, run_dir, data=data, resume=..., log=log)``.
        needs: files besides ``summary.json`` that a finished run holds (its evaluation).
        force: a run whose data changed since it was trained (its
            :mod:`~otcl.pipelines.engine.fingerprint`) is trained again from scratch instead
            of refused.
    """

    config_cls: type[Any]
    trainer_cls: type[EpochTrainer]
    needs: tuple[str, ...] = ()
    force: bool = False

    def resolve(self, cfg: Any) -> Any:
        """The config a run uses (the pipeline's presets); a new object."""
        raise NotImplementedError

    def load_data(self, cfg: Any) -> Any:
        """The dataset of ``cfg`` (a worker process loads it once for all its runs)."""
        raise NotImplementedError

    def data_key(self, cfg: Any) -> str:
        """Runs with the same key share the loaded data (default: the ``data`` section)."""
        return json.dumps(cfg.to_dict().get("data"), sort_keys=True, default=repr)

    def finish(self, run: Run, data: Any) -> None:
        """After a run trained (or resumed) to its end, e.g. evaluate it into a file of
        :attr:`needs`."""

    def describe(self, summary: dict[str, Any]) -> str:
        """Appended to the line of a run a worker finished, e.g. ``", ndcg@10 0.2012"``."""
        return ""

    def cost(self, run: Run) -> float:
        """Worker processes take the costliest runs first (so that none idles at the end)."""
        return 0.0


def run_state(runner: Runner, run: Run) -> str:
    """``"new"`` (no checkpoint), ``"resume"`` (a checkpoint of an unfinished run or a run
    without its results) or ``"finished"`` (reuse it).

    Raises:
        ValueError: the directory holds a run made or measured with other settings (the saved
            config, resolved as today -- a setting added since takes its preset -- differs
            from ``run.cfg`` in a setting a resume refuses, or in one of the trainer's
            ``measures``, e.g. the evaluation: its numbers were measured another way).
    """
    ckpt = run.dir / CHECKPOINT
    if not ckpt.exists():
        return "new"
    st = load_checkpoint(ckpt)
    saved = runner.resolve(runner.config_cls.from_dict(st["config"])).to_dict()
    now = runner.resolve(run.cfg).to_dict()
    trainer = runner.trainer_cls
    if identity.changed(saved, now, identity.unmeasured(trainer.volatile, trainer.measures)):
        raise ValueError(
            f"out: {str(run.dir)!r} holds a run with a different configuration; choose "
            "another --out (or delete that run)"
        )
    try:
        fingerprint.check_fingerprint(
            st.get(fingerprint.KEY),
            fingerprint.config_fingerprint(run.cfg),
            str(run.dir),
            "use a new --out, or --force to train the runs of changed data again",
        )
    except fingerprint.DataChanged:
        if not getattr(runner, "force", False):
            raise
        shutil.rmtree(run.dir)  # --force: this run is trained again from scratch
        return "new"
    files = (SUMMARY, *runner.needs)
    done = st.get("done", True) and all((run.dir / f).exists() for f in files)
    return "finished" if done else "resume"


def train_run(runner: Runner, run: Run, data: Any, log: Log = stderr_log) -> str:
    """Reuse, resume or train ``run`` (then :meth:`Runner.finish`); returns its state before.

    Under torchrun rank 0 reads the state (the others may not see the run directory), every
    rank trains, and rank 0 alone finishes the run while the others wait.
    """
    state = main_then_broadcast(lambda: run_state(runner, run))
    if state == "finished":
        log(reuse_line(run.dir))
        return state
    if state == "resume":
        log(f"{run.dir}: resuming")
    trainer = runner.trainer_cls(run.cfg, run.dir, data=data, resume=state == "resume", log=log)
    trainer.fit()
    with agreed():
        if is_main():
            runner.finish(run, data)
    return state


def train_runs(
    runner: Runner,
    runs: Sequence[Run],
    data: Any,
    *,
    jobs: int = 1,
    log: Log = stderr_log,
    start_method: str = "spawn",
) -> None:
    """Bring every run of ``runs`` to its end: finished ones are reused, interrupted ones
    resumed, the others trained.

    Args:
        data: the loaded dataset, shared by the runs of this process (``jobs=1``).
        jobs: 1 = one run after the other in this process; more = that many worker processes
            (``start_method``: ``spawn``, a fresh interpreter, by default), each with one thread,
            its own copy of the data (:meth:`Runner.load_data`) and one run at a time. Runs are
            independent, so the results do not depend on ``jobs``.

    Raises:
        TrainingInterrupted: (``jobs=1``) a Ctrl-C or SIGTERM; the run saved its checkpoint.
        KeyboardInterrupt: (workers) a Ctrl-C; the running runs saved their checkpoints.
    """
    if jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs!r}")
    session = current()
    if jobs > 1 and session is not None and session.world > 1:
        raise ValueError(
            f"jobs: {jobs} worker processes do not mix with torchrun (its processes train each "
            "run together); use --jobs 1"
        )
    if jobs == 1:
        for run in runs:
            train_run(runner, run, data, log)
        return
    pending = []
    for run in runs:
        if run_state(runner, run) == "finished":
            log(reuse_line(run.dir))
        else:
            pending.append(run)
    _train_parallel(runner, pending, jobs, log, start_method)


def default_jobs(device: str) -> int:
    """Worker processes of a comparison on ``train.device``: the CPU cores this process may
    use, at most 2 (small runs gain little from more on a shared machine); 1 on an accelerator."""
    if device not in ("auto", "cpu") or launched():  # torchrun: the processes share each run
        return 1
    import torch

    if device == "auto" and torch.cuda.is_available():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(2, cores))


def _worker(conn: Any, runner: Runner) -> None:
    """A worker process: trains the runs it receives one at a time (each dataset loaded once).

    It runs in a process group of its own, so that a signal reaches it once: from the
    comparison, which forwards the SIGINT or SIGTERM it receives, or sent to the worker alone.
    The running trainer then saves its checkpoint at the end of the step and the worker exits
    with status 130 (143); the run resumes when the comparison is run again. It answers
    ``"done"`` per run, or ``("failed", message)`` for an error of the run (bad data, a full
    disk, divergence).
    """
    os.setpgid(0, 0)
    import torch

    from .engine.stops import TrainingDiverged

    torch.set_num_threads(1)
    loaded: tuple[str, Any] = ("", None)
    try:
        while True:
            task = conn.recv()
            if task is None:
                return
            cfg_dict, method, run_dir = task
            cfg = runner.config_cls.from_dict(cfg_dict)
            run = Run(method, int(cfg.train.seed), cfg, Path(run_dir))
            tag = f"[{run.dir.parent.name}/{run.dir.name}]"
            try:
                key = runner.data_key(cfg)
                if loaded[0] != key:
                    loaded = (key, runner.load_data(cfg))
                train_run(
                    runner, run, loaded[1], lambda s, t=tag: print(f"{t} {s}", file=sys.stderr)
                )
            except TrainingDiverged as e:
                conn.send(("failed", f"training diverged: {e}"))
                return
            except ValueError as e:
                conn.send(("failed", str(e)))
                return
            except TrainingInterrupted:
                raise
            except OSError as e:
                where = f"{e.filename}: " if e.filename else ""
                conn.send(("failed", f"cannot write {where}{e.strerror or e}"))
                return
            conn.send("done")
    except TrainingInterrupted as e:
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
    except (EOFError, BrokenPipeError):  # the comparison is gone
        sys.exit(130)


#: a worker's exit status (or ``-signal``) that means it stopped after a signal
_STOPPED = {
    128 + signal.SIGINT: signal.SIGINT,
    128 + signal.SIGTERM: signal.SIGTERM,
    -signal.SIGINT: signal.SIGINT,
    -signal.SIGTERM: signal.SIGTERM,
}


def _how(exitcode: int | None) -> str:
    """How a worker process ended, in words."""
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _train_parallel(
    runner: Runner, pending: Sequence[Run], jobs: int, log: Log, start_method: str
) -> None:
    """Train ``pending`` in ``jobs`` worker processes, each taking one run at a time.

    A run is handed to a worker only when it is idle. Whatever stops one run stops the
    comparison, with every running run checkpointed (the workers get SIGINT or SIGTERM and
    save at the end of their step), and no new run starts:

    * SIGINT or SIGTERM to this process: forwarded to the workers (each in its own process
      group, so a signal to the whole group reaches them once, from here);
    * SIGINT or SIGTERM to one worker: it saves and exits; the others are sent the same signal;
    * a run's error, or a worker that dies (``kill -9``, the OOM killer): the others are sent
      SIGTERM, then :class:`~otcl.pipelines.engine.stops.RunFailed` names the run and how it
      ended.

    Raises:
        RunsInterrupted: after a signal (exit status 128 + signal), naming the runs saved.
        RunFailed: a run failed.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from .engine.signals import interrupt_signal
    from .engine.stops import RunFailed, RunsInterrupted

    if not pending:
        return
    n_workers = min(jobs, len(pending))
    log(f"training {len(pending)} runs in {n_workers} worker processes")
    queue = sorted(pending, key=runner.cost, reverse=True)  # stable: ties keep their order
    ctx = mp.get_context(start_method)
    workers: dict[Any, Any] = {}  # conn -> process
    busy: dict[Any, Run] = {}
    stopped: list[Path] = []  # runs interrupted (checkpointed)
    failures: list[str] = []
    signum: int | None = None
    finished = 0
    t0 = time.perf_counter()

    def assign(conn: Any) -> None:
        if queue and signum is None and not failures:
            run = queue.pop(0)
            cfg = copy.deepcopy(run.cfg)
            cfg.train.progress = False  # one line per finished run here instead of bars
            conn.send((cfg.to_dict(), run.method, str(run.dir)))
            busy[conn] = run

    def stop(sig: int) -> None:
        """Send ``sig`` to the workers still running a run (the idle ones get the end)."""
        for conn, proc in workers.items():
            if proc.is_alive():
                try:
                    if conn in busy:
                        os.kill(proc.pid, sig)
                    else:
                        conn.send(None)
                except (ProcessLookupError, BrokenPipeError, OSError):
                    pass

    def ended(conn: Any) -> None:
        """A busy worker's pipe closed: it stopped after a signal, or it died."""
        nonlocal signum
        run = busy.pop(conn)
        proc = workers[conn]
        proc.join(60)
        sig = _STOPPED.get(proc.exitcode)  # type: ignore[arg-type]
        if sig is not None:
            stopped.append(run.dir)
            if signum is None and not failures:
                signum = sig
                stop(sig)
        else:
            failures.append(f"{run.dir}: its worker process {_how(proc.exitcode)}")
            if len(failures) == 1 and signum is None:
                stop(signal.SIGTERM)

    try:
        try:
            for _ in range(n_workers):
                conn, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, runner))
                proc.start()
                child.close()
                workers[conn] = proc
                assign(conn)
            while busy:
                for conn in wait(list(busy)):
                    try:
                        msg = conn.recv()
                    except (EOFError, ConnectionResetError):
                        ended(conn)
                        continue
                    run = busy.pop(conn)
                    if isinstance(msg, tuple) and msg[0] == "failed":
                        failures.append(f"{run.dir}: {msg[1]}")
                        if len(failures) == 1 and signum is None:
                            stop(signal.SIGTERM)
                        continue
                    finished += 1
                    summary = json.loads((run.dir / SUMMARY).read_text())
                    log(
                        f"[{finished}/{len(pending)}] {run.dir.parent.name}/{run.dir.name} done "
                        f"in {summary.get('train_seconds', 0.0):.0f} s"
                        f"{runner.describe(summary)} ({time.perf_counter() - t0:.0f} s elapsed)"
                    )
                    assign(conn)
        except KeyboardInterrupt as e:  # SIGINT or SIGTERM to this process: to the workers
            if signum is None:
                signum = interrupt_signal(e)
                stop(signum)
            while busy:
                for conn in wait(list(busy)):
                    try:
                        conn.recv()  # a run that finished meanwhile
                        busy.pop(conn)
                    except (EOFError, ConnectionResetError):
                        ended(conn)
        stop(signal.SIGTERM)  # the idle workers: their end (nothing is busy any more)
        for proc in workers.values():
            proc.join()
    except BaseException:  # a second signal, an error here: no waiting any longer
        for proc in workers.values():
            if proc.is_alive():
                proc.kill()
            proc.join()
        raise
    if failures:
        more = f" (and {len(failures) - 1} more: {'; '.join(failures[1:])})" if failures[1:] else ""
        saved = f"; the running runs saved their checkpoints: {', '.join(map(str, stopped))}"
        raise RunFailed(f"compare: {failures[0]}{more}{saved if stopped else ''}")
    if signum is not None:
        raise RunsInterrupted(stopped, signum)


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
