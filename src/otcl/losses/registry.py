"""Name -> loss class registry: ``build(name, **params)`` and ``available()``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from .contrastive import ContrastiveLoss

__all__ = [
    "available",
    "build",
    "conditions",
    "describe",
    "get",
    "inapplicable_params",
    "parameters",
    "plain_text",
    "register",
]

L = TypeVar("L", bound=ContrastiveLoss)

_REGISTRY: dict[str, type[ContrastiveLoss]] = {}


def register(name: str) -> Callable[[type[L]], type[L]]:
    """Class decorator: make a loss buildable as ``build(name)``."""

    def deco(cls: type[L]) -> type[L]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"name: loss {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def available() -> list[str]:
    """Sorted names of every registered loss."""
    return sorted(_REGISTRY)


def get(name: str) -> type[ContrastiveLoss]:
    """The loss class registered as ``name`` (ValueError listing the valid names if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown loss {name!r}; expected one of: {', '.join(available())}")
    return _REGISTRY[name]


def parameters(name: str) -> dict[str, Any]:
    """Every parameter of a named loss with its default (what ``build(name)`` uses).

    For a wrapper (``dmm``) its own parameters followed by those of its default base loss.
    """
    cls = get(name)
    params = getattr(cls, "parameter_defaults", None)
    if params is not None:
        return dict(params())
    return dict(cls.defaults)


def conditions(name: str) -> dict[str, str]:
    """Parameter -> when it applies, for the parameters of ``name`` that do not always apply."""
    cls = get(name)
    return dict(getattr(cls, "applies_when", {}))


_GREEK = {
    "varepsilon": "ε", "epsilon": "ε", "lambda": "λ", "theta": "θ", "beta": "β", "tau": "τ",
    "rho": "ρ", "omega": "ω", "alpha": "α", "gamma": "γ", "sigma": "σ", "pi": "π", "mu": "μ",
    "nu": "ν",
}  # fmt: skip


def _plain_math(tex: str) -> str:
    tex = re.sub(r"\\(?:mathrm|mathbf|text|operatorname)\{([^{}]*)\}", r"\1", tex)
    tex = re.sub(r"\\(?:left|right|big|Big)\b", "", tex)
    tex = re.sub(r"\\[,;!]\s*|\\quad\b|\\qquad\b", " ", tex)
    tex = tex.replace("\\|", "||").replace("\\ne", "≠").replace("\\le", "≤").replace("\\ge", "≥")
    tex = re.sub(r"\\([A-Za-z]+)", lambda m: _GREEK.get(m.group(1), m.group(1)), tex)
    tex = re.sub(r"_\{([^{}]*)\}", r"_\1", tex)
    tex = re.sub(r"\^\{([^{}]*)\}", r"^\1", tex)
    return re.sub(r"\s+", " ", tex.replace("{", "").replace("}", "")).strip()


def plain_text(rst: str) -> str:
    """reStructuredText of a docstring line as plain text (for a terminal): ``x`` -> x,
    :math:`P_\\theta` -> P_θ, :class:`~otcl.losses.DMM` -> DMM."""
    text = re.sub(r":math:`([^`]*)`", lambda m: _plain_math(m.group(1)), rst)
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]*)`", r"\1", text)  # :class:, :meth:, :func:
    return re.sub(r"``([^`]*)``", r"\1", text)


def describe(name: str) -> dict[str, Any]:
    """A loss's one-line summary (plain text) and every parameter with its default and when it
    applies.

    Returns:
        ``{"name", "summary", "parameters": {param: {"default", "applies_when"}}, "base"}``;
        ``applies_when`` is ``"always"`` or the condition (see ``ContrastiveLoss.applies_when``);
        for a wrapper, ``base`` names its default base loss, whose parameters follow its own.
    """
    cls = get(name)
    doc = (cls.__doc__ or "").strip().splitlines()
    cond = conditions(name)
    base = getattr(cls, "default_base", None)
    if base is not None:
        cond = {**conditions(base), **cond}
    params = {
        k: {"default": v, "applies_when": cond.get(k, "always")}
        for k, v in parameters(name).items()
    }
    summary = plain_text(doc[0]) if doc else ""
    return {"name": name, "summary": summary, "parameters": params, "base": base}


def inapplicable_params(name: str, params: dict[str, Any]) -> dict[str, str]:
    """The given ``params`` that do not apply to loss ``name``, each with the reason.

    ``build(name, **params)`` raises for the first of them; a caller that sets parameters for
    several losses at once (a comparison) can use this to tell them apart. Unknown names are not
    reported here (``build`` reports them). For a wrapper (``dmm``), the parameters that are not
    its own are checked against its base loss (``params["base"]`` or the default).
    """
    cls = get(name)
    own = {k: v for k, v in params.items() if k in cls.defaults and v is not None}
    settings = cls.derive({**cls.defaults, **own}, own)
    out = {}
    for key in own:
        why = cls.inapplicable(key, settings)
        if why is not None:
            out[key] = why
    default_base = getattr(cls, "default_base", None)
    if default_base is not None:
        base = params.get("base") or default_base
        rest = {k: v for k, v in params.items() if k not in cls.defaults and k != "base"}
        rest.update(rest.pop("base_params", None) or {})
        if isinstance(base, str):
            out.update(inapplicable_params(base, rest))
    return out


def build(name: str, **params: Any) -> ContrastiveLoss:
    """Build the loss ``name`` with ``params``; unknown names or parameters raise ValueError,
    and so does a parameter that does not apply to that loss (e.g. ``rho`` of a balanced loss).

    Example:
        >>> import otcl
        >>> loss = otcl.losses.build("gca-uot", temperature=0.5, rho=0.2)
    """
    return get(name)(**params)
