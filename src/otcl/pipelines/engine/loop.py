"""The epoch loop: steps, stops at step boundaries, epoch records, checkpoints, the summary.

:func:`run_epochs` trains a built :class:`~otcl.pipelines.engine.trainer.EpochTrainer` from
where it stands (a new run, or a restored checkpoint) to ``train.epochs``. Per step it checks
for a stop (a signal, a caller's request, a deadline: :mod:`.stops`), calls the trainer's
``train_step`` hook and adds the loss on the device; every ``train.log_every`` steps it reads
the loss back once (the only host sync) and stops a diverged run. Per epoch it evaluates
(rank 0), appends the record to ``metrics.jsonl`` (and to the ``train.log`` logger,
:mod:`.loggers`) and writes a checkpoint every
``train.checkpoint_every`` epochs and at the end; then the final evaluation and
``summary.json``. A run that selects its model (:mod:`.selection`) validates every
``rule.every`` epochs (rank 0), keeps the best weights, stops early when its patience runs out
(every rank, at the epoch boundary), and is finally evaluated on its best weights.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..config import save_config
from . import runlog
from .checkpoint import stopped_early
from .distributed import agreed, any_signal, broadcast, mark_agreed
from .loggers import ScalarLogger, open_logger
from .progress import Progress, first_line
from .rundir import CHECKPOINT, CONFIG, write_owner
from .signals import DeferredSignals
from .stops import (
    PeerLost,
    StopRequested,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingStopped,
)

__all__ = ["check_loop", "check_loop_counts", "run_epochs"]


def check_loop(cfg: Any) -> None:
    """Raise ``ValueError`` naming the first invalid loop setting of ``cfg.train``."""
    t = cfg.train
    if t.epochs is None or t.epochs < 1:
        raise ValueError(f"train.epochs: expected an integer >= 1, got {t.epochs!r}")
    if t.batch_size is None or t.batch_size < 2:
        raise ValueError(f"train.batch_size: expected an integer >= 2, got {t.batch_size!r}")


def check_loop_counts(cfg: Any) -> None:
    """Raise ``ValueError`` naming the first invalid count of ``cfg.train`` (every so many
    steps or epochs, a step cap, threads)."""
    t = cfg.train
    for name in ("checkpoint_every", "log_every"):
        if getattr(t, name) < 1:
            raise ValueError(f"train.{name}: expected an integer >= 1, got {getattr(t, name)!r}")
    for name in ("max_steps_per_epoch", "threads"):
        if getattr(t, name) is not None and getattr(t, name) < 1:
            raise ValueError(
                f"train.{name}: expected an integer >= 1 or none, got {getattr(t, name)!r}"
            )


def run_epochs(tr: Any) -> dict[str, Any]:
    """Train ``tr`` (a built :class:`~otcl.pipelines.engine.trainer.EpochTrainer`, which
    imports this module) to ``train.epochs``; returns the summary (every rank gets rank 0's).

    Raises:
        TrainingInterrupted: a SIGINT/SIGTERM reached a step boundary (checkpoint written).
        TrainingStopped: the caller's stop or deadline did (checkpoint written).
        TrainingDiverged: the loss or the weights became NaN/inf.
    """
    t = tr.cfg.train
    epochs = int(t.epochs)
    tr.scalar_logger = ScalarLogger()
    with agreed():
        if tr.is_main:
            if not tr.resumed and tr.global_step == 0:  # a run killed before its checkpoint
                runlog.clear_stale(tr.out, tr.outputs, tr.log)
            write_owner(tr.out, tr.owner)
            save_config(tr.config_to_save(), tr.out / CONFIG, tr.derived())
            tr.scalar_logger = open_logger(getattr(t, "log", "none"), tr.out, tr.epoch)
    try:
        return _run(tr, epochs)
    finally:
        tr.scalar_logger.close()


def _run(tr: Any, epochs: int) -> dict[str, Any]:
    t = tr.cfg.train
    progress = Progress(
        enabled=t.progress and tr.is_main,
        total=tr.total_steps,
        done=tr.global_step,
        epochs=epochs,
        desc=f"train {tr.tag}",
        log=tr.log,
    )
    tr.model.train()
    with DeferredSignals() as signals:
        tr._signals = signals
        try:
            while tr.epoch < epochs and not stopped_early(tr):
                _run_epoch(tr, progress, epochs)
        except StopRequested as stop:
            progress.close()
            path, epoch, step = tr.save(), tr.epoch, tr.step_in_epoch
            if stop.signum is None:
                raise mark_agreed(TrainingStopped(path, epoch, step, stop.reason)) from None
            raise mark_agreed(TrainingInterrupted(path, epoch, step, stop.signum)) from None
        except Exception as e:  # the other ranks may be inside a step: no exchange
            if tr.world > 1 and _connection_lost(e):
                ckpt = tr.out / CHECKPOINT
                lost = 1 - tr.rank if tr.world == 2 else None
                cause = first_line(e)
                if cause.startswith("[") and "] " in cause:  # gloo's source location
                    cause = cause.split("] ", 1)[1]
                raise mark_agreed(
                    PeerLost(lost, tr.out, ckpt if ckpt.exists() else None, cause)
                ) from None
            mark_agreed(e)
            raise
        finally:
            progress.close()
            tr._signals = None
    summary = None
    with agreed():
        if tr.is_main:
            summary = _summary(tr)
    return broadcast(summary)  # type: ignore[return-value]


def _connection_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because a peer's connection closed."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", ())
    text = str(e)
    marks = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    return isinstance(e, RuntimeError) and (
        isinstance(e, backend_error) or any(m in text for m in marks)
    )


def _check_stop(tr: Any) -> None:
    """At a step boundary: stop if a SIGINT/SIGTERM arrived during the last step, a stop was
    requested or the deadline passed -- on any rank under torchrun, so that all stop here."""
    received = tr._signals.received if tr._signals is not None else None
    tr.stops.check(received, any_signal if tr.world > 1 else None)


def _run_epoch(tr: Any, progress: Progress, epochs: int) -> None:
    t = tr.cfg.train
    tr.start_epoch(tr.epoch)
    start = time.perf_counter()
    for step in range(tr.step_in_epoch, tr.steps_per_epoch):
        _check_stop(tr)
        if tr._dm is not None:
            tr._dm.forwards = 0
        try:
            loss = tr.train_step(tr.epoch, step)
        except ValueError as e:  # a loss's input check on embeddings gone NaN/inf
            if tr.global_step > 0 and ("finite" in str(e) or not tr._finite_state()):
                raise TrainingDiverged(
                    f"non-finite values at epoch {tr.epoch + 1}, step {step + 1} "
                    f"({first_line(e)}); lower optim.lr or raise the loss temperature"
                ) from None
            raise
        tr.running_loss.add(loss)
        tr.global_step += 1
        tr.step_in_epoch = step + 1
        postfix = {}
        if (step + 1) % t.log_every == 0 or step + 1 == tr.steps_per_epoch:
            total = tr.running_loss.fold()  # the only host sync of the loop
            if not math.isfinite(total):
                raise TrainingDiverged(
                    f"the loss became {total} by epoch {tr.epoch + 1}, step {step + 1}; lower "
                    "optim.lr or raise the loss temperature"
                )
            postfix = {"epoch": f"{tr.epoch + 1}/{epochs}", "loss": f"{tr.running_loss.mean():.4f}"}
        progress.update(1, **postfix)
    if tr.device.type == "cuda":
        torch.cuda.synchronize(tr.device)
    seconds = tr.epoch_seconds + time.perf_counter() - start
    tr.epoch += 1
    unit = tr.throughput_unit
    record: dict[str, Any] = {
        "epoch": tr.epoch,
        "loss": tr.running_loss.mean(),
        "lr": tr.scheduler.get_last_lr()[0],
        "seconds": seconds,
        f"{unit}_per_s": tr.items_per_step() * tr.steps_per_epoch / max(seconds, 1e-9),
    }
    tr.step_in_epoch = 0
    tr.running_loss.epoch = [0.0, 0]
    tr.epoch_seconds = 0.0
    sel = tr.selector
    stop = False
    with agreed():  # evaluation and files: rank 0 (the others wait here)
        if tr.is_main:
            if sel is not None and sel.due(tr.epoch, epochs):
                record.update(_validate(tr, sel))
                stop = sel.stopped
            if tr.epoch < epochs and not stop:  # the last epoch's metrics: the final evaluation
                record.update(tr.evaluate(final=False))
            runlog.append_record(tr.out, record)
            tr.scalar_logger.log(record, tr.epoch)
            progress.epoch_line(tr.epoch, epochs, runlog.epoch_text(tr.tag, record, epochs, unit))
    if sel is not None:
        sel.stopped = bool(broadcast(stop if tr.is_main else None)) or sel.stopped
        if sel.stopped:
            tr.log(
                f"{tr.tag}: early stop after epoch {tr.epoch}: no better val/{sel.rule.metric} "
                f"in {sel.bad} validation(s); best epoch {sel.best_epoch}"
            )
    if tr.epoch % t.checkpoint_every == 0 or tr.epoch >= epochs or stopped_early(tr):
        tr.save()


def _validate(tr: Any, sel: Any) -> dict[str, Any]:
    """Rank 0: validate, update the selection (the best weights to ``best.pt``), and return the
    record's ``val/...`` fields."""
    metrics = tr.validate()
    if sel.observe(tr.epoch, metrics, tr.model):
        sel.save_best(tr.out)
    out = {f"val/{k}": v for k, v in metrics.items()}
    out["best_epoch"] = sel.best_epoch
    return out


def _summary(tr: Any) -> dict[str, Any]:
    """Rank 0: the final evaluation, into the last record and ``summary.json``."""
    if tr.selector is not None:  # the test set is evaluated once, on the best epoch's weights
        tr.selector.load_into(tr.model)
    t0 = time.perf_counter()
    final = tr.evaluate(final=True)
    summary = runlog.summarize_log(
        tr.out,
        final,
        seed=tr.cfg.train.seed,
        epochs=tr.epoch,
        unit=tr.throughput_unit,
        eval_seconds=time.perf_counter() - t0,
        device=tr.device,
    )
    tr.scalar_logger.log(final, tr.epoch)  # as metrics.jsonl: into the last epoch's record
    if tr.session is not None:
        summary["world_size"] = tr.world
    if tr.selector is not None:
        summary.update(tr.selector.summary())
    summary = tr.summarize(summary)
    runlog.write_summary(tr.out, summary)
    return summary
