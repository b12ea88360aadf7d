r"""The base class of every otcl loss: one call signature, strict parameters, training hooks.

Every loss is an :class:`torch.nn.Module` with one call signature,

.. code-block:: python

    loss = loss_fn(z1, z2, labels=None, target=None)   # z1, z2: (N, d) -> scalar

**Parameters.** A loss class declares each parameter once, as an annotated class attribute
(:func:`otcl.losses.params.param`: its default, its check, and the :class:`~otcl.losses.params.Rule`
under which it applies: ``rho`` only with ``constraint="unbalanced"``, ``q`` and ``lam`` only with
the RINCE divergence, ...). The constructor's signature, :attr:`ContrastiveLoss.defaults`,
:attr:`ContrastiveLoss.applies_when` and the errors follow from the declarations. A constructor
argument left at ``None`` takes the loss's default; one that is given but does not apply to the
resulting loss is an error naming it and saying why, never silently ignored:

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

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn

from .._validation import check_embeddings, check_negatives
from ..ot.distributed import Shard
from .params import Param, param

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # pragma: no cover
    from typing_extensions import dataclass_transform

__all__ = ["ContrastiveLoss", "check_batch"]


@dataclass_transform(kw_only_default=True, eq_default=False, field_specifiers=(param,))
class ContrastiveLoss(nn.Module):
    """Base class of the otcl losses: parameters, the call signature and the training hooks.

    A subclass declares its parameters as annotated class attributes (see
    :mod:`otcl.losses.params`); its constructor then takes them (``None`` = the default), checks
    them, stores each as an attribute of the same name and calls :meth:`configure`.
    """

    #: every declared parameter (name -> :class:`~otcl.losses.params.Param`), in order
    params: ClassVar[Mapping[str, Param]] = MappingProxyType({})
    #: every parameter of the loss and its default value
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: parameter -> the condition under which it applies (absent: always applies)
    applies_when: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: the registered name (set by :func:`otcl.losses.register`)
    registry_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = dict(cls.params)
        notes = inspect.get_annotations(cls)
        for name, value in list(vars(cls).items()):
            if isinstance(value, Param):  # a declaration, or a redeclaration of an inherited one
                if name not in params and callable(getattr(super(cls, cls), name, None)):
                    raise TypeError(
                        f"{cls.__name__}.{name}: a parameter may not take the name of a method"
                    )
                new = replace(value, name=name, annotation=notes.get(name))
                params[name] = params[name].override(value) if name in params else new
            elif name in params and name in notes:  # a preset: a new default
                params[name] = replace(params[name], default=value)
            else:
                continue
            delattr(cls, name)  # the instance attribute is set by __init__
        cls.params = MappingProxyType(params)
        if "defaults" not in vars(cls):  # (a loss with a hand-written __init__ may list its own)
            cls.defaults = MappingProxyType({k: p.default for k, p in params.items() if p.setting})
            cls.applies_when = MappingProxyType(
                {k: p.applies.text for k, p in params.items() if p.applies is not None}
            )
        if "__init__" not in vars(cls):
            cls.__init__ = _signed_init(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.apply_params(self.bind_params(args, kwargs))

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def loss_name(cls) -> str:
        """The registered name, else the class name (for messages)."""
        return cls.__dict__.get("registry_name") or cls.__name__

    @classmethod
    def constructor_signature(cls) -> inspect.Signature:
        """The declared parameters as a signature (positional ones first, then keyword-only)."""
        kinds = inspect.Parameter
        first = [p for p in cls.params.values() if not p.kw_only]
        rest = [p for p in cls.params.values() if p.kw_only]
        out = [kinds("self", kinds.POSITIONAL_OR_KEYWORD)]
        for group, kind in ((first, kinds.POSITIONAL_OR_KEYWORD), (rest, kinds.KEYWORD_ONLY)):
            for p in group:
                ann = kinds.empty if p.annotation is None else p.annotation
                out.append(kinds(p.name, kind, default=p.default, annotation=ann))
        return inspect.Signature(out, return_annotation="None")

    @classmethod
    def bind_params(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments by name (the positional ones are the declared positional
        parameters, in order)."""
        names = [k for k, p in cls.params.items() if not p.kw_only]
        if len(args) > len(names):
            raise TypeError(
                f"{cls.__name__}() takes at most {len(names)} positional argument(s) "
                f"({', '.join(names)}), got {len(args)}"
            )
        given = dict(zip(names, args, strict=False))
        twice = sorted(set(given) & set(kwargs))
        if twice:
            raise TypeError(f"{cls.__name__}() got multiple values for {', '.join(twice)}")
        return {**given, **kwargs}

    def apply_params(self, given: Mapping[str, Any]) -> None:
        """Resolve the ``given`` parameters (:meth:`resolve_params`), check and store each
        declared setting as an attribute, then :meth:`configure`."""
        settings = self.resolve_params(given)
        for name, p in self.params.items():
            if p.setting:
                setattr(self, name, p.value(settings[name]))
        self.configure()

    def configure(self) -> None:
        """Checks across parameters and derived state, once every parameter is stored."""

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
        """Why parameter ``name`` does not apply under ``settings`` (its declared
        :class:`~otcl.losses.params.Rule`), or None if it does."""
        p = cls.params.get(name)
        if p is None or p.applies is None:
            return None
        return p.applies.why_not(settings, cls)

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


def _signed_init(cls: type[ContrastiveLoss]) -> Callable[..., None]:
    """A constructor for ``cls`` that shows its declared parameters to :func:`inspect.signature`
    and ``help`` (it calls the inherited one)."""
    parent = super(cls, cls).__init__

    def __init__(self: ContrastiveLoss, *args: Any, **kwargs: Any) -> None:
        parent(self, *args, **kwargs)

    __init__.__signature__ = cls.constructor_signature()  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__.__doc__ = f"Build a {cls.__name__} (``None`` = the default; see the class)."
    return __init__


def check_batch(
    z1: torch.Tensor,
    z2: torch.Tensor,
    negatives: torch.Tensor | None,
    similarity: str,
    check_values: bool,
    shard: Shard | None = None,
) -> None:
    """Check a call's embeddings and extra negatives (``ValueError``): shapes, and with
    ``check_values`` finite values and, for ``similarity="cosine"``, no zero rows (every rank
    alike with ``shard``)."""
    kw = {"check_values": check_values, "nonzero_rows": similarity == "cosine", "shard": shard}
    check_embeddings(z1, z2, **kw)
    check_negatives(negatives, z1, **kw)
