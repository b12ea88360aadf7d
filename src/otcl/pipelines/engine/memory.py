"""A run's memory bank: ``loss.memory_bank=K`` keeps the last K embeddings of earlier steps
as extra negatives (:class:`otcl.losses.MemoryBank`, MoCo's queue).

The trainer builds the bank after the pipeline's ``build`` (:func:`build_bank`), a pipeline
step asks it for ``negatives=`` (:meth:`~otcl.pipelines.engine.trainer.EpochTrainer.
bank_negatives`) and hands over the batch to enqueue
(:meth:`~otcl.pipelines.engine.trainer.EpochTrainer.enqueue`), which the trainer stores after
the optimizer step: a batch is never its own negative. The queue is in the checkpoint, so a
resumed run sees the same negatives as an uninterrupted one. Under ``torchrun`` the bank holds
the global batch (every rank the same queue); a loss that couples the global batch
(``gather_distributed``) receives this rank's share of it and gathers the rest itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ...losses import MemoryBank

__all__ = ["check_memory_bank", "build_bank"]


def check_memory_bank(cfg: Any, supported: bool, pipeline: str) -> None:
    """Raise ``ValueError`` naming ``loss.memory_bank`` when it is invalid or ``supported`` is
    False (a pipeline whose step takes no extra negatives)."""
    loss = getattr(cfg, "loss", None)
    size = getattr(loss, "memory_bank", 0)
    if size is None or isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"loss.memory_bank: expected an integer >= 0 (0: no bank), got {size!r}")
    if size and not supported:
        raise ValueError(
            f"loss.memory_bank: not supported by {pipeline} (its step takes no extra "
            "negatives); leave it 0"
        )


def takes_negatives(loss_fn: nn.Module) -> bool:
    """Whether ``loss_fn``'s call accepts ``negatives=``."""
    try:
        params = inspect.signature(loss_fn.forward).parameters
    except (TypeError, ValueError):
        return False
    return "negatives" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def build_bank(
    loss_fn: nn.Module, loss_name: str, size: int, dim: int, world: int, device: torch.device
) -> MemoryBank:
    """The run's bank of ``size`` embeddings of width ``dim`` on ``device``.

    Raises:
        ValueError: the loss takes no ``negatives=``, or ``size`` does not split over the
            ``world`` ranks.
    """
    if not takes_negatives(loss_fn):
        raise ValueError(
            f"loss.memory_bank: the loss {loss_name!r} ({type(loss_fn).__name__}) takes no "
            "negatives=; use an otcl loss or leave loss.memory_bank 0"
        )
    if size % world:
        raise ValueError(
            f"loss.memory_bank: expected a size divisible by the {world} processes, got {size}"
        )
    return MemoryBank(size, dim, gather_distributed=True).to(device)
