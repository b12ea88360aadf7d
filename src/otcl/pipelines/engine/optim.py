"""The optimizer and its schedule: parameter groups, torch's fused kernels where they exist,
linear warm-up then cosine (or constant) learning rate.

The base learning rate scales with the global batch: ``optim.lr x batch / 128``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig, given
from .progress import first_line

__all__ = [
    "LR_RULE",
    "effective_lr",
    "check_optim",
    "param_groups",
    "build_optimizer",
    "lr_factor",
    "build_scheduler",
]


#: how ``optim.lr`` becomes the optimizer's learning rate (every optimizer, SGD and Adam alike)
LR_RULE = "optim.lr x train.batch_size / 128 (the learning rate per 128 samples)"


def effective_lr(o: OptimConfig, batch_size: int) -> float:
    """The learning rate the optimizer runs at (before warm-up and schedule):
    ``o.lr x batch_size / 128`` (:data:`LR_RULE`)."""
    return float(o.lr) * batch_size / 128.0  # type: ignore[arg-type]


def check_optim(o: OptimConfig) -> None:
    """Raise ``ValueError`` naming the first invalid setting of the ``optim`` section."""
    if o.lr is None or not o.lr > 0:
        raise ValueError(f"optim.lr: expected a learning rate > 0, got {o.lr!r}")
    if o.optimizer not in ("sgd", "adam", "adamw"):
        raise ValueError(f"optim.optimizer: expected sgd, adam or adamw, got {o.optimizer!r}")
    if o.schedule not in ("cosine", "constant"):
        raise ValueError(f"optim.schedule: expected cosine or constant, got {o.schedule!r}")
    if not 0.0 <= o.momentum < 1.0:
        raise ValueError(f"optim.momentum: expected a number in [0, 1), got {o.momentum!r}")
    if o.optimizer != "sgd" and ({"momentum", "nesterov"} & given(o) or o.nesterov):
        raise ValueError(
            f"optim.momentum / optim.nesterov: apply only to optim.optimizer=sgd, got "
            f"{o.optimizer!r} (Adam's moments are fixed)"
        )
    if o.nesterov and o.momentum == 0:
        raise ValueError("optim.nesterov: needs optim.momentum > 0, got 0")
    if o.weight_decay is not None and not o.weight_decay >= 0:
        raise ValueError(f"optim.weight_decay: expected a number >= 0, got {o.weight_decay!r}")
    if not o.warmup_epochs >= 0:
        raise ValueError(f"optim.warmup_epochs: expected a number >= 0, got {o.warmup_epochs!r}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in two groups: weights (``ndim > 1``) with
    ``weight_decay``, biases and norm scales without."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    o: OptimConfig,
    batch_size: int,
    device: torch.device,
    log: Callable[[str], None],
) -> torch.optim.Optimizer:
    """``o.optimizer`` over :func:`param_groups` of ``model`` at lr ``o.lr x batch_size/128``;
    with ``o.fused`` torch's fused implementation where this torch and ``device`` have one (else
    the default one, said in ``log``)."""
    groups = param_groups(model, o.weight_decay or 0.0)
    kwargs: dict[str, Any] = {"lr": effective_lr(o, batch_size)}
    if o.optimizer == "sgd":
        cls: type[torch.optim.Optimizer] = torch.optim.SGD
        kwargs.update(momentum=o.momentum, nesterov=o.nesterov)
    else:
        cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
    if o.fused:
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError) as e:  # no fused kernel here
            log(
                f"optim.fused: torch {torch.__version__} has no fused {o.optimizer} for "
                f"{device.type} ({first_line(e)}); using the default implementation"
            )
    return cls(groups, **kwargs)


def lr_factor(o: OptimConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at global step ``step``: linear warm-up over
    ``o.warmup_epochs``, then ``o.schedule`` (cosine to 0 at ``total_steps``, or constant)."""
    warm = int(round(o.warmup_epochs * steps_per_epoch))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if o.schedule == "constant":
        return 1.0
    span = max(1, total_steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, factor: Callable[[int], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step scheduler: the base learning rate times ``factor(step)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
