"""Comparison methods that name an otcl loss: ``<loss>``, or ``<loss>+dmm`` for DMM around it.

The methods of the image (``otcl compare``) and multimodal pipelines: :func:`loss_method_config`
sets the ``loss`` section of a config from a method's name and :func:`loss_method_name` reads
the name back (``+dmm``: :func:`~otcl.pipelines.spec.split_dmm`).

Example:
    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(loss=SimpleNamespace(name="infonce", params={}))
    >>> cfg = loss_method_config(cfg, "gca-uot+dmm", {"temperature": 0.2}, {}, unknown="")
    >>> cfg.loss.name, cfg.loss.params, loss_method_name(cfg)
    ('dmm', {'temperature': 0.2, 'base': 'gca-uot'}, 'gca-uot+dmm')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..losses import available
from .spec import split_dmm

__all__ = ["loss_method_config", "loss_method_name"]


def loss_method_config(
    cfg: Any,
    method: str,
    shared: Mapping[str, Any],
    per_loss: Mapping[str, Mapping[str, Any]],
    *,
    unknown: str,
) -> Any:
    """``cfg`` (a config with a ``loss`` section) set up for ``method``: ``gca-uot`` ->
    ``loss.name="gca-uot"``; ``gca-uot+dmm`` -> ``loss.name="dmm"`` with ``base="gca-uot"``.
    Parameters: the shared ones, then the loss's own, then (``+dmm``) DMM's.

    Args:
        unknown: the message of the ``ValueError`` raised when the base is no otcl loss (or is
            ``dmm``), formatted with ``method``, ``base`` and ``names`` (the losses, dmm aside).
    """
    base, dmm = split_dmm(method)
    if base not in available() or base == "dmm":
        names = ", ".join(n for n in available() if n != "dmm")
        raise ValueError(unknown.format(method=method, base=base, names=names))
    params = {**shared, **per_loss.get(base, {})}
    if dmm:
        params = {**params, **per_loss.get("dmm", {}), "base": base}
    cfg.loss.name = "dmm" if dmm else base
    cfg.loss.params = params
    return cfg


def loss_method_name(cfg: Any) -> str:
    """The method of a run's config (the inverse of :func:`loss_method_config`): ``"gca-uot"``,
    or ``"gca-uot+dmm"`` for DMM wrapping gca-uot."""
    if cfg.loss.name != "dmm":
        return cfg.loss.name
    base = cfg.loss.params.get("base", "infonce")
    return f"{base if isinstance(base, str) else type(base).__name__}+dmm"
