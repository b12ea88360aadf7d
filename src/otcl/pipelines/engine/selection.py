"""Model selection on held-out data: the best epoch's weights, early stopping, exact resume.

A pipeline that has a validation set returns a :class:`SelectionRule` from the trainer's
``selection_rule`` hook and fills ``validate() -> {name: value}``. The loop then, every
``rule.every`` epochs and after the last one:

1. calls ``validate()`` (rank 0) and adds its metrics to the epoch's record as ``val/<name>``;
2. compares ``rule.metric`` with the best value so far (higher is better for ``mode="max"``):
   an improvement keeps a copy of the weights and writes them to ``best.pt``
   (:data:`BEST`, atomically, in the checkpoint format with its SHA-256 check); otherwise the
   patience counter grows;
3. stops training once ``rule.patience`` validations in a row brought no improvement (the
   epoch budget ``train.epochs`` is a ceiling).

The final evaluation (the test set, once) runs on the best weights. The selector's state --
best value, best epoch, patience counter, whether it stopped and the best weights -- is part of
the run's checkpoint, so an interrupted and resumed run selects the same epoch as an
uninterrupted one; ``best.pt`` is the same weights for other tools (:func:`load_best`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_finite_weights, load_checkpoint, save_checkpoint

__all__ = ["BEST", "SelectionRule", "Selector", "load_best"]

#: the best epoch's weights in a run directory
BEST = "best.pt"


@dataclass(frozen=True)
class SelectionRule:
    """How a pipeline selects its model on validation data.

    Attributes:
        metric: the key of ``validate()``'s dict to select on (e.g. ``ndcg@10``).
        every: validate every N epochs (and after the last one), >= 1.
        patience: stop after this many validations in a row without improvement (None: never
            stop early; the best epoch is still selected).
        mode: ``max`` (higher is better) or ``min``.
        min_delta: an improvement must beat the best value by more than this.
    """

    metric: str
    every: int = 1
    patience: int | None = None
    mode: str = "max"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if int(self.every) != self.every or self.every < 1:
            raise ValueError(f"selection every: expected an integer >= 1, got {self.every!r}")
        if self.patience is not None and (int(self.patience) != self.patience or self.patience < 1):
            raise ValueError(
                f"selection patience: expected an integer >= 1 or none, got {self.patience!r}"
            )
        if self.mode not in ("max", "min"):
            raise ValueError(f"selection mode: expected max or min, got {self.mode!r}")
        if not self.min_delta >= 0:
            raise ValueError(f"selection min_delta: expected >= 0, got {self.min_delta!r}")


class Selector:
    """The selection state of one run (see the module docstring)."""

    def __init__(self, rule: SelectionRule) -> None:
        self.rule = rule
        self.best_score: float | None = None
        self.best_epoch: int = 0
        self.bad: int = 0  # validations in a row without improvement
        self.stopped: bool = False  # early stopping triggered
        self.weights: dict[str, torch.Tensor] | None = None  # the best epoch's (CPU copies)

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether epoch ``epoch`` (1-based, completed) is validated."""
        return epoch % self.rule.every == 0 or epoch >= epochs

    def improves(self, score: float) -> bool:
        """Whether ``score`` beats the best value so far (NaN never does)."""
        if not math.isfinite(score):
            return False
        if self.best_score is None:
            return True
        d = self.rule.min_delta
        if self.rule.mode == "max":
            return score > self.best_score + d
        return score < self.best_score - d

    def observe(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record the validation ``metrics`` of ``epoch``; returns whether it is the new best
        (then the weights of ``model`` are copied)."""
        if self.rule.metric not in metrics:
            raise KeyError(
                f"selection: validate() returned {sorted(metrics)}, without the selection "
                f"metric {self.rule.metric!r}"
            )
        score = float(metrics[self.rule.metric])
        if self.improves(score):
            self.best_score, self.best_epoch, self.bad = score, int(epoch), 0
            self.weights = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
            return True
        self.bad += 1
        if self.rule.patience is not None and self.bad >= self.rule.patience:
            self.stopped = True
        return False

    def save_best(self, out: Path) -> Path:
        """Write the best weights to ``out/best.pt`` atomically (checkpoint format)."""
        path = Path(out) / BEST
        save_checkpoint(
            {
                "model": self.weights,
                "epoch": self.best_epoch,
                "score": self.best_score,
                "metric": self.rule.metric,
            },
            path,
        )
        return path

    def load_into(self, model: nn.Module) -> None:
        """Load the best weights into ``model`` (nothing if no validation ran yet)."""
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def summary(self) -> dict[str, Any]:
        """The fields of ``summary.json``: the selection metric, best epoch and value."""
        return {
            "select_metric": f"val/{self.rule.metric}",
            "best_epoch": self.best_epoch,
            "best_val": self.best_score,
            "stopped_early": self.stopped,
        }

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds (see the module docstring)."""
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad": self.bad,
            "stopped": self.stopped,
            "weights": self.weights,
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best_score = None if st["best_score"] is None else float(st["best_score"])
        self.best_epoch = int(st["best_epoch"])
        self.bad = int(st["bad"])
        self.stopped = bool(st["stopped"])
        self.weights = copy.copy(st["weights"])


def load_best(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``best.pt``: ``{"model": weights, "epoch", "score", "metric"}`` (digest and
    finite weights checked)."""
    path = Path(run_dir) / BEST
    if not path.is_file():
        raise ValueError(f"run: no {BEST} in {str(run_dir)!r} (the run validated no epoch)")
    st = load_checkpoint(path, required={"model", "epoch", "score", "metric"})
    check_finite_weights(st["model"], run_dir)
    return st
