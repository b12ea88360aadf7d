r"""Loss wrappers: a loss that adds to, or changes, another loss (as PML's ``SelfSupervisedLoss``).

:class:`LossWrapper` holds the wrapped loss as ``self.base`` -- an otcl loss built by name with
its parameters, or any module called ``base(z1, z2, labels=None, target=None)`` -- and forwards
to it what belongs to it: the training-loop hooks (:meth:`set_epoch`), the layout, and the
diagnostics (``negative_weights``, ``coupling``). A wrapper adds its own terms in ``forward``;
:class:`otcl.losses.DMM` is one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import torch
from torch import nn

from .contrastive import ContrastiveLoss
from .params import param
from .registry import build, get, parameters

__all__ = ["LossWrapper"]


class LossWrapper(ContrastiveLoss):
    """A loss around a base loss.

    Args:
        base: a registered loss name (built with ``base_params`` and the flat ``base_kwargs``)
            or a loss module / callable ``base(z1, z2, labels=None, target=None)``.
        base_params: parameters of the base loss when ``base`` is a name.
        **params: the wrapper's own parameters, and more parameters of the base loss (merged
            into ``base_params``).

    Subclasses declare their own parameters (:mod:`otcl.losses.params`);
    :meth:`parameter_defaults` gives them followed by the default base loss's.
    """

    #: the base loss built when none is named
    default_base: ClassVar[str] = "infonce"

    base: nn.Module | Callable[..., torch.Tensor] | str | None = param(
        default=None, kw_only=False, setting=False
    )
    base_params: Mapping[str, Any] | None = param(default=None, setting=False)

    def __init__(
        self,
        base: nn.Module | Callable[..., torch.Tensor] | str | None = None,
        *,
        base_params: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> None:
        nn.Module.__init__(self)
        own = {k: params.pop(k) for k in list(params) if k in self.params}
        base = self.default_base if base is None else base
        flat = sorted(params)
        params = {**dict(base_params or {}), **params}
        if isinstance(base, str):
            self._check_base_params(base, params, flat=flat)
            self.base = build(base, **params)
        elif callable(base):
            if params:
                raise ValueError(
                    f"base_params: expected none when base is a loss instance, got {sorted(params)}"
                )
            self.base = base
        else:
            raise ValueError(
                f"base: expected a loss name or a loss module, got {type(base).__name__}"
            )
        self.apply_params(own)

    @classmethod
    def parameter_defaults(cls) -> dict[str, Any]:
        """The wrapper's own parameters, then its default base loss's (``build(name)``)."""
        return {**cls.defaults, **parameters(cls.default_base)}

    def _check_base_params(self, base: str, params: dict[str, Any], flat: list[str]) -> None:
        """Unknown keywords name both valid lists: the wrapper's own and the base loss's."""
        if getattr(get(base), "parameter_defaults", None) is not None:
            return  # a wrapper as base checks its own keywords
        valid = parameters(base)
        unknown = sorted(set(params) - set(valid))
        if not unknown:
            return
        who = self.loss_name()
        where = "parameter(s)" if set(unknown) & set(flat) else "base_params"
        raise ValueError(
            f"params: unknown {where} {', '.join(unknown)} for loss {who!r} with base {base!r}; "
            f"valid: {', '.join(sorted(self.defaults))} ({who}'s own) or "
            f"{', '.join(sorted(valid))} (passed to {base!r})"
        )

    # -- forwarded to the base -------------------------------------------------------------
    @property
    def layout(self) -> str | None:
        """The base loss's layout (None if it has none)."""
        return getattr(self.base, "layout", None)

    def set_epoch(self, epoch: float) -> None:
        """Forward the epoch to the base loss (its own schedules)."""
        hook = getattr(self.base, "set_epoch", None)
        if hook is not None:
            hook(epoch)

    def negative_weights(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The base loss's negative weights (for :mod:`otcl.diagnostics`), if it has them."""
        fn = getattr(self.base, "negative_weights", None)
        if fn is None:
            raise AttributeError(f"{type(self.base).__name__} exposes no negative_weights")
        return fn(*args, **kwargs)

    def coupling(self, *args: Any, **kwargs: Any) -> Any:
        """The base loss's model plan (for :mod:`otcl.diagnostics`), if it has one."""
        fn = getattr(self.base, "coupling", None)
        if fn is None:
            raise AttributeError(f"{type(self.base).__name__} exposes no coupling")
        return fn(*args, **kwargs)

    def base_loss(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        col_prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The base loss of a batch (``negatives`` and ``col_prior`` passed only when given)."""
        extra = {} if negatives is None else {"negatives": negatives}
        if col_prior is not None:
            extra["col_prior"] = col_prior
        base = cast(Callable[..., torch.Tensor], self.base)  # built in __init__
        return base(z1, z2, labels=labels, target=target, **extra)
