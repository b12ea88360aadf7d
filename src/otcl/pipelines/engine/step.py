"""What a pipeline's ``build`` and step call on the trainer: :class:`StepTools`.

:class:`~otcl.pipelines.engine.trainer.EpochTrainer` inherits these methods; they are the
mechanics of one step that every pipeline shares:

* the batch -- :meth:`StepTools.fit_batch` (the batch size against the data),
  :meth:`~StepTools.batch_indices` and :meth:`~StepTools.global_batch_indices` (a permutation
  per ``(seed, epoch)``, this rank's rows of it under torchrun);
* randomness and precision -- :meth:`~StepTools.step_generator` (seeded by the global step:
  a resumed run draws the same), :meth:`~StepTools.autocast`;
* the loss -- :meth:`~StepTools.loss_params`, :meth:`~StepTools.build_loss`, the memory bank
  (:meth:`~StepTools.bank_negatives`, :meth:`~StepTools.enqueue`);
* the update -- :meth:`~StepTools.optimize` (backward, optimizer, schedule) and
  :meth:`~StepTools.lr_factor` (the schedule).

The attributes declared here are set when the trainer is assembled (:mod:`.assemble`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from . import optim, runtime
from .distributed import DistributedModel, Session, mark_agreed

__all__ = ["StepTools"]


class StepTools:
    """The step mechanics of :class:`~otcl.pipelines.engine.trainer.EpochTrainer` (a mixin)."""

    #: the resolved configuration (a copy of the one given, with presets applied)
    cfg: Any
    #: torchrun's process group (None: one process)
    session: Session | None
    device: torch.device
    #: the autocast dtype of ``train.amp`` (None: full precision)
    amp_dtype: torch.dtype | None
    #: the global batch (all processes together); each rank gets ``local_batch_size`` rows of
    #: it, the slice ``local_rows``
    batch_size: int
    local_batch_size: int
    local_rows: slice
    #: the batch size the caller asked for (None: the pipeline's preset, or a resume)
    batch_requested: int | None
    steps_per_epoch: int
    total_steps: int
    #: steps completed over the whole run
    global_step: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    #: the AMP gradient scaler (enabled under fp16 only)
    scaler: Any
    #: the loss is multiplied by this before backward (see ``loss_is_global``)
    loss_scale: int = 1
    _loss_global: bool = False
    _dm: DistributedModel | None = None
    _order_cache: tuple[tuple[int, int], torch.Tensor] | None = None
    #: the queue of ``loss.memory_bank`` (None without one; in the checkpoint)
    memory_bank: Any = None
    _enqueue: torch.Tensor | None = None

    def fit_batch(self, n: int, what: str) -> None:
        """Fit the batch to ``n`` training items (``what``, e.g. "training pairs") and set
        ``steps_per_epoch``: a batch size the caller asked for that is larger is refused (it
        is never clamped silently), a preset's is cut to ``n``.

        Raises:
            ValueError: the requested batch size exceeds ``n``, or fewer than 2 items.
        """
        if n < 2:
            raise ValueError(f"data: only {n} {what}; need at least 2")
        if self.batch_requested is not None and self.batch_size > n:
            raise ValueError(
                f"train.batch_size: {self.batch_size} is more than the {n} {what}; use "
                f"--batch-size {n} or less"
            )
        self.batch_size = min(self.batch_size, n)
        self.steps_per_epoch = n // self.batch_size

    def loss_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters of an otcl loss for this run: under torchrun ``gather_distributed=True``
        is added (negatives and couplings from the global batch) unless ``params`` sets it."""
        if self.session is None or "gather_distributed" in params:
            return dict(params)
        return {**params, "gather_distributed": True}

    def build_loss(self) -> nn.Module:
        """``otcl.losses.build(cfg.loss.name, **cfg.loss.params)`` on the run's device (with
        :meth:`loss_params`: the global batch under torchrun)."""
        from ...losses import build

        return build(self.cfg.loss.name, **self.loss_params(self.cfg.loss.params)).to(self.device)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate at global step ``step`` (warm-up, cosine)."""
        return optim.lr_factor(self.cfg.optim, step, self.steps_per_epoch, self.total_steps)

    def batch_indices(self, n: int, epoch: int, step: int) -> torch.Tensor:
        """Indices (CPU, int64) of this rank's rows of batch ``step`` in a permutation of
        ``range(n)`` that depends only on ``(seed, epoch)``: every sample once per epoch, the
        same order on resume and whatever the number of processes (rank r takes rows
        ``local_rows`` of the global batch; one process takes it whole)."""
        return self.global_batch_indices(n, epoch, step)[self.local_rows]

    def global_batch_indices(self, n: int, epoch: int, step: int) -> torch.Tensor:
        """The whole global batch ``step`` (every rank gets the same): for a pipeline that draws
        per-sample randomness for the global batch and keeps ``local_rows`` of it."""
        order = self._order_cache
        if order is None or order[0] != (n, epoch):
            order = ((n, epoch), runtime.epoch_order(self.cfg.train.seed, n, epoch))
            self._order_cache = order
        return order[1][step * self.batch_size : (step + 1) * self.batch_size]

    def bank_negatives(self) -> torch.Tensor | None:
        """The ``negatives=`` of this step from ``loss.memory_bank`` (K, d), oldest first;
        None without a bank or while it is empty. Under torchrun a loss that gathers the global
        batch gets this rank's share of the queue (it gathers the others' itself)."""
        if self.memory_bank is None:
            return None
        return self.memory_bank(share=self._loss_global)

    def enqueue(self, z: torch.Tensor) -> None:
        """Hand this step's embeddings (B, d) to the bank: stored (detached) after the
        optimizer step, so they are negatives from the next step on. A no-op without a bank."""
        if self.memory_bank is not None:
            self._enqueue = z.detach()

    def step_generator(self, tag: str, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded by ``(seed, tag, global step)`` on ``device`` (default: the run's)."""
        dev = device if device is not None else self.device
        return runtime.step_generator(self.cfg.train.seed, tag, self.global_step, dev)

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast to ``train.amp``'s dtype (a no-op without one)."""
        return runtime.autocast(self.device, self.amp_dtype)

    def optimize(self, loss: torch.Tensor) -> None:
        """Backward (scaled under fp16, times :attr:`loss_scale` under torchrun), optimizer
        step, scheduler step."""
        if self._dm is not None and self._dm.forwards == 0:
            raise mark_agreed(
                RuntimeError(
                    f"{type(self).__name__}: the step never called self.forward_model; under "
                    "torchrun the model must be called through it (DistributedDataParallel "
                    "all-reduces the gradients only then)"
                )
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.loss_scale != 1:
            loss = loss * self.loss_scale
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self._enqueue is not None:
            self.memory_bank.update(self._enqueue)
            self._enqueue = None
