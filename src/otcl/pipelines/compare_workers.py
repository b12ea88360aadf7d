"""How the runs of a comparison are trained: :func:`train_runs`, one after the other in this
process or in worker processes (one thread each; a Ctrl-C checkpoints the running runs), and
:func:`default_jobs`, how many workers a comparison takes by default.

The worker pool hands a run to a worker only when it is idle, costliest runs first
(:meth:`~otcl.pipelines.compare_runs.Runner.cost`); whatever stops one run stops the
comparison, every running run checkpointed. :mod:`otcl.pipelines.compare` re-exports the
public names.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compare_runs import Log, Run, Runner, reuse_line, run_state, stderr_log, train_run
from .engine.distributed import current, launched
from .engine.rundir import SUMMARY
from .engine.stops import TrainingInterrupted

__all__ = ["train_runs", "default_jobs"]


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
    ctx: Any = mp.get_context(start_method)  # a context of the start method's kind
    workers: dict[Any, Any] = {}  # conn -> process
    busy: dict[Any, Run] = {}
    stopped: list[Path] = []  # runs interrupted (checkpointed)
    failures: list[str] = []
    signum: int | None = None
    finished = 0
    t0 = time.perf_counter()

    def ready() -> list[Any]:
        """The pipes of busy workers that hold a message or closed (blocks until one does)."""
        return wait(list(busy))

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
                for conn in ready():
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
                for conn in ready():
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
