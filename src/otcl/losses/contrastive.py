r"""The base class of every otcl loss: one call signature, strict parameters, training hooks.

Every loss is an :class:`torch.nn.Module` with one call signature,

.. code-block:: python

    loss = loss_fn(z1, z2, labels=None, target=None)   # z1, z2: (N, d) -> scalar

**Parameters.** A loss class lists every parameter it takes with its default in
:attr:`ContrastiveLoss.defaults` and, for the parameters that matter only in some settings, the
condition in :attr:`ContrastiveLoss.applies_when` (``rho`` only with ``constraint="unbalanced"``,
``q`` and ``lam`` only with the RINCE divergence, ...). A constructor argument left at ``None``
takes the loss's default; one that is given but does not apply to the resulting loss is an
error naming it and saying why, never silently ignored:

>>> import otcl
>>> otcl.losses.build("gca-ince", rho=5.0)
Traceback (most recent call last):
...
ValueError: rho: applies only to constraint='unbalanced'; gca-ince has constraint='balanced'

**Training-loop hooks** (do-nothing defaults, so a loop calls them on any loss):

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

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["ContrastiveLoss"]


class ContrastiveLoss(nn.Module):
    """Base class of the otcl losses: parameters, the call signature and the training hooks."""

    #: every parameter of the loss and its default value
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: parameter -> the condition under which it applies (absent: always applies)
    applies_when: ClassVar[Mapping[str, str]] = {}
    #: the registered name (set by :func:`otcl.losses.register`)
    registry_name: ClassVar[str | None] = None

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def loss_name(cls) -> str:
        """The registered name, else the class name (for messages)."""
        return cls.__dict__.get("registry_name") or cls.__name__

    @classmethod
    def resolve_params(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """The loss's settings from the explicitly ``given`` parameters (``None`` = not given).

        Unknown names raise ``ValueError`` listing the valid ones; a given parameter that does
        not apply (:meth:`inapplicable`) raises ``ValueError`` saying why.
        """
        given = {k: v for k, v in given.items() if v is not None}
        unknown = sorted(set(given) - set(cls.defaults))
        if unknown:
            raise ValueError(
                f"params: unknown parameter(s) {', '.join(unknown)} for loss "
                f"{cls.loss_name()!r}; valid: {', '.join(sorted(cls.defaults))}"
            )
        settings = cls.derive({**cls.defaults, **given}, given)
        for name in given:
            why = cls.inapplicable(name, settings)
            if why is not None:
                raise ValueError(f"{name}: {why}")
        return settings

    @classmethod
    def derive(cls, settings: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        """Settings that follow from others (e.g. IOT's ``relax`` picks the constraint)."""
        return settings

    @classmethod
    def inapplicable(cls, name: str, settings: Mapping[str, Any]) -> str | None:
        """Why parameter ``name`` does not apply under ``settings``, or None if it does."""
        return None

    # -- training-loop hooks ---------------------------------------------------------------
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
