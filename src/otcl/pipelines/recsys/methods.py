"""The methods of ``otcl recsys compare``: their names, their configs and the comparison's preset.

A method is a baseline without a training loop (``popularity``, ``ease``, ``itemknn``,
``implicit-als``, ``implicit-bpr``), ``mf-bpr``, ``cml`` or ``tt-<otcl loss>`` (the two-tower),
the last two with ``+dmm`` for DMM around the model's loss (:func:`parse_method`);
:func:`method_config` makes a method's config and :func:`method_name` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...losses import available
from ..config import given
from .baselines import IMPLICIT_MODELS, implicit_available
from .config import RecsysConfig

__all__ = [
    "DEFAULT_METHODS",
    "BASELINES",
    "parse_method",
    "method_config",
    "method_name",
    "method_losses",
    "is_baseline",
    "skip",
    "prepare_compare",
]

#: what ``otcl recsys compare`` runs when no methods are named
DEFAULT_METHODS = (
    "popularity",
    "ease",
    "itemknn",
    "implicit-als",
    "implicit-bpr",
    "mf-bpr",
    "cml",
    "cml+dmm",
    "tt-infonce",
    "tt-infonce+dmm",
    "tt-gca-uot",
    "tt-gca-uot+dmm",
)

#: the baselines without a training loop that depend on the split alone (``ease`` and
#: ``itemknn`` tuned on the validation pairs): fitted once per comparison
BASELINES = ("popularity", "ease", "itemknn")


def parse_method(name: str) -> dict[str, Any]:
    """``cml+dmm`` -> ``{"kind": "cml", "loss": "triplet", "dmm": True}`` (see DEFAULT_METHODS).

    Names: ``popularity``, ``ease``, ``itemknn``, ``implicit-als``, ``implicit-bpr`` (baselines),
    ``mf-bpr``,
    ``cml[+dmm]``, ``tt-<otcl loss>[+dmm]`` (two-tower).
    """
    base, dmm = (name[: -len("+dmm")], True) if name.endswith("+dmm") else (name, False)
    if base in BASELINES and not dmm:
        return {"baseline": base}
    if base.startswith("implicit-") and base[len("implicit-") :] in IMPLICIT_MODELS and not dmm:
        return {"baseline": base}
    if base == "mf-bpr" and not dmm:
        return {"kind": "mf", "loss": "bpr", "dmm": False}
    if base == "cml":
        return {"kind": "cml", "loss": "triplet", "dmm": dmm}
    if base.startswith("tt-"):
        loss = base[3:]
        if loss not in available() or loss == "dmm":
            raise ValueError(
                f"methods: unknown loss {loss!r} in {name!r}; two-tower losses: "
                f"{', '.join(n for n in available() if n != 'dmm')}"
            )
        return {"kind": "two-tower", "loss": loss, "dmm": dmm}
    raise ValueError(
        f"methods: unknown method {name!r}; expected popularity, ease, itemknn, implicit-als, "
        "implicit-bpr, mf-bpr, cml, cml+dmm, tt-<loss>, tt-<loss>+dmm"
    )


def method_config(
    cfg: RecsysConfig,
    method: str,
    shared: Mapping[str, Any],
    per_loss: Mapping[str, Mapping[str, Any]],
) -> RecsysConfig:
    """The config of one method (a baseline: ``cfg`` as it is). The two-tower's loss takes the
    shared loss parameters and its own; CML and MF train with losses of their own."""
    p = parse_method(method)
    if "baseline" in p:
        return cfg
    cfg.model.kind = p["kind"]
    cfg.loss.name = p["loss"]
    two_tower = p["kind"] == "two-tower"
    cfg.loss.params = {**shared, **per_loss.get(p["loss"], {})} if two_tower else {}
    cfg.dmm.enabled = p["dmm"]
    return cfg


def method_name(cfg: RecsysConfig) -> str:
    """The method of a run's config (the inverse of :func:`method_config`)."""
    kind, dmm = cfg.model.kind, "+dmm" if cfg.dmm.enabled else ""
    if kind == "mf":
        return "mf-bpr"
    return f"cml{dmm}" if kind == "cml" else f"tt-{cfg.loss.name}{dmm}"


def method_losses(method: str) -> tuple[str, ...]:
    """The otcl losses of a method: the two-tower's (CML and MF have losses of their own)."""
    p = parse_method(method)
    return (p["loss"],) if p.get("kind") == "two-tower" else ()


def is_baseline(method: str) -> bool:
    return "baseline" in parse_method(method)


def skip(method: str) -> str | None:
    if parse_method(method).get("baseline", "").startswith("implicit-"):
        if not implicit_available():
            return "the optional package implicit is not installed"
    return None


def prepare_compare(cfg: RecsysConfig) -> RecsysConfig:
    """A comparison holds out 10% of the items for the cold-start evaluation unless
    ``data.cold_items`` is given."""
    if "cold_items" not in given(cfg.data):
        cfg.data.cold_items = 0.1
    return cfg
