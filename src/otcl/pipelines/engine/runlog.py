"""A run's records: ``metrics.jsonl`` (one line per epoch), ``summary.json``, stale outputs.

The log always matches the checkpoint: a resume cuts it back to the checkpoint's epoch
(:func:`trim_log`), and a new run first removes the records of an earlier run that saved no
checkpoint (:func:`clear_stale`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ..files import append_jsonl, atomic_write_text, read_jsonl, write_jsonl
from .rundir import METRICS, SUMMARY

__all__ = [
    "BASE_KEYS",
    "RunningLoss",
    "clear_stale",
    "trim_log",
    "append_record",
    "epoch_text",
    "summarize_log",
    "write_summary",
]

#: the fields every epoch record has (besides ``<unit>_per_s``)
BASE_KEYS = ("epoch", "loss", "lr", "seconds")


class RunningLoss:
    """The mean loss of the current epoch, summed on the device step by step and read back to
    the host only in :meth:`fold` (every ``train.log_every`` steps).

    Args:
        device: where the steps' losses are.
        reduce: applied in place to the device sum before it is read (under torchrun, the mean
            over ranks of a loss that is each rank's own); None for none.

    Attributes:
        epoch: ``[sum, count]`` of the losses folded so far this epoch (checkpointed).
    """

    def __init__(
        self, device: torch.device, reduce: Callable[[torch.Tensor], Any] | None = None
    ) -> None:
        self._sum = torch.zeros((), device=device)
        self._count = 0
        self.reduce = reduce
        self.epoch: list[Any] = [0.0, 0]

    def add(self, loss: torch.Tensor) -> None:
        """Add one step's detached loss (no host sync)."""
        self._sum += loss
        self._count += 1

    def fold(self) -> float:
        """Fold the device sum into :attr:`epoch` (one host sync); returns the epoch's sum."""
        if self._count:
            if self.reduce is not None:
                self.reduce(self._sum)
            self.epoch[0] += float(self._sum)
            self.epoch[1] += self._count
            self._sum.zero_()
            self._count = 0
        return self.epoch[0]

    def mean(self) -> float:
        """The mean of the losses folded so far this epoch (0 before any)."""
        return self.epoch[0] / max(1, self.epoch[1])


def clear_stale(run_dir: Path, outputs: Iterable[str], log: Callable[[str], None]) -> None:
    """Remove the ``outputs`` (e.g. ``metrics.jsonl``) that a run killed before its first
    checkpoint left in ``run_dir``, saying so."""
    stale = [f for f in outputs if (run_dir / f).exists()]
    if stale:
        log(
            f"{run_dir}: removing {', '.join(stale)} of an earlier run that saved no "
            "checkpoint; starting afresh"
        )
        for f in stale:
            (run_dir / f).unlink()


def trim_log(run_dir: Path, epoch: int) -> None:
    """Drop the records of epochs after ``epoch`` (finished after the checkpoint: redone)."""
    log = run_dir / METRICS
    write_jsonl(log, [r for r in read_jsonl(log) if r.get("epoch", 0) <= epoch])


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one epoch's record to ``metrics.jsonl``."""
    append_jsonl(run_dir / METRICS, record)


def epoch_text(tag: str, record: dict[str, Any], epochs: int, unit: str) -> str:
    """The line of an epoch: ``<tag> epoch 3/10: loss 4.1234, 2.10 s, 900 views/s, knn ...``."""
    extras = "".join(
        f", {k} {v:.4f}"
        for k, v in record.items()
        if k not in BASE_KEYS and not k.endswith("_per_s")
    )
    return (
        f"{tag} epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, "
        f"{record['seconds']:.2f} s, {record[f'{unit}_per_s']:.0f} {unit}/s{extras}"
    )


def summarize_log(
    run_dir: Path,
    final: dict[str, Any],
    *,
    seed: int,
    epochs: int,
    unit: str,
    eval_seconds: float,
    device: torch.device,
) -> dict[str, Any]:
    """The generic fields of ``summary.json`` from the metrics log, once ``final`` (the final
    evaluation) is added to its last record: medians of the epoch time and the throughput
    (without the first epoch, which includes warm-up), totals, versions."""
    records = read_jsonl(run_dir / METRICS)
    if records and final:
        records[-1].update(final)
        write_jsonl(run_dir / METRICS, records)
    secs = [r["seconds"] for r in records]
    steady = secs[1:] if len(secs) > 1 else secs  # the first epoch includes warm-up
    key = f"{unit}_per_s"
    rates = [r[key] for r in records if key in r]
    return {
        "seed": seed,
        "epochs": epochs,
        "final_loss": records[-1]["loss"] if records else None,
        **final,
        "seconds_per_epoch": statistics.median(steady) if steady else None,
        key: statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None,
        "train_seconds": sum(secs),
        "eval_seconds": eval_seconds,
        "device": str(device),
        "torch": torch.__version__,
        "otcl": __version__,
    }


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` atomically."""
    atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2))
