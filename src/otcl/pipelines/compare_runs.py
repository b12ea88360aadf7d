"""One run of a comparison: :class:`Run`, what a pipeline says about it (:class:`Runner`),
whether it is new, to resume or finished (:func:`run_state`), and :func:`train_run`.

A directory holding a run made with other settings is refused: the saved config, resolved as
today, against the request, the settings that change neither the run nor its numbers aside
(the trainer's ``volatile`` list, which a resume uses too, less its ``measures``;
:mod:`otcl.pipelines.engine.identity`); so is a run trained on other data (its data
fingerprint, :mod:`otcl.pipelines.engine.fingerprint`, differs; with ``Runner.force`` it is
trained again). :mod:`otcl.pipelines.compare` re-exports every name.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import fingerprint, identity
from .engine.checkpoint import load_checkpoint
from .engine.distributed import agreed, is_main, main_then_broadcast
from .engine.rundir import CHECKPOINT, SUMMARY
from .engine.trainer import EpochTrainer

__all__ = [
    "Log",
    "Run",
    "Runner",
    "make_run",
    "run_state",
    "train_run",
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
