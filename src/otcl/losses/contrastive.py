r"""The base class of every otcl loss and the hooks a training loop may call.

Every loss is an :class:`torch.nn.Module` with one call signature,

.. code-block:: python

    loss = loss_fn(z1, z2, labels=None, target=None)   # z1, z2: (N, d) -> scalar

and two hooks with do-nothing defaults, so a training loop calls them on any loss without
checking what the loss is:

* :meth:`ContrastiveLoss.set_epoch` -- once at the start of every epoch (schedules such as DMM's
  ramp-up weight read it);
* :meth:`ContrastiveLoss.prepare_inputs` -- once per step, before the loss, with the encoder and
  the raw inputs of the anchors; it returns extra keyword arguments for the call (DMM returns its
  input-space mixed anchors, ``{"mixed": ...}``; every other loss ``{}``).

A training step therefore reads::

    loss_fn.set_epoch(epoch)                               # per epoch
    extra = loss_fn.prepare_inputs(encoder, x1)            # per step, {} for most losses
    loss = loss_fn(encoder(x1), encoder(x2), **extra)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ContrastiveLoss"]


class ContrastiveLoss(nn.Module):
    """Base class of the otcl losses: the call signature and the training-loop hooks."""

    def set_epoch(self, epoch: float) -> None:
        """Tell the loss which epoch starts (``epoch >= 0``). Default: nothing to do."""

    def prepare_inputs(
        self,
        encoder: Callable[[Any], torch.Tensor],
        x1: Any,
        x2: Any = None,
    ) -> dict[str, Any]:
        """Extra keyword arguments for this step's call, computed from the raw inputs.

        Args:
            encoder: maps a batch of inputs to (B, d) embeddings (with gradients).
            x1: the anchors' raw inputs (a tensor, or a dict/list of them, one per modality).
            x2: the positives' raw inputs, for losses that need them.
        Returns:
            ``{}`` by default; see :class:`otcl.losses.DMM` for a loss that uses it.
        """
        return {}
