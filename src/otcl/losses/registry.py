"""Name -> loss class registry: ``build(name, **params)`` and ``available()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

__all__ = ["register", "build", "available", "get"]

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a loss buildable as ``build(name)``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"name: loss {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def available() -> list[str]:
    """Sorted names of every registered loss."""
    return sorted(_REGISTRY)


def get(name: str) -> type[nn.Module]:
    """The loss class registered as ``name`` (ValueError listing the valid names if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown loss {name!r}; expected one of: {', '.join(available())}")
    return _REGISTRY[name]


def parameters(name: str) -> dict[str, object]:
    """Constructor parameters of a named loss with their defaults."""
    cls = get(name)
    params = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            params.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return params


def build(name: str, **params: object) -> nn.Module:
    """Build the loss ``name`` with ``params``; unknown names or parameters raise ValueError.

    Example:
        >>> import otcl
        >>> loss = otcl.losses.build("gca-uot", temperature=0.5, rho=0.2)
    """
    cls = get(name)
    if getattr(cls, "forwards_params", False):
        # wrappers (e.g. DMM) pass unknown keywords to the loss they wrap, whose own
        # constructor check names the invalid ones
        return cls(**params)
    valid = parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"params: unknown parameter(s) {', '.join(unknown)} for loss {name!r}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    return cls(**params)
