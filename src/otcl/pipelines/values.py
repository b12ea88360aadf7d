"""Setting values: text as typed on the command line -> Python values, checked against a field's
type (used by :mod:`otcl.pipelines.config`).

Example:
    >>> parse_value("0.5"), parse_value("none"), parse_value("a,b")
    (0.5, None, ['a', 'b'])
    >>> coerce("train.epochs", 5.0, "int | None")
    5
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_value", "coerce"]


def parse_value(text: str) -> Any:
    """``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, ``"[1, 2]"`` -> [1, 2], else str."""
    t = text.strip()
    low = t.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return json.loads(t)
    except (json.JSONDecodeError, ValueError):
        pass
    if "," in t and not t.startswith(("'", '"')):
        return [parse_value(p) for p in t.split(",")]
    return t


def coerce(name: str, value: Any, ftype: Any) -> Any:
    """Coerce ``value`` to the type of field ``name`` (given its annotation string)."""
    ann = str(ftype)
    if value is None:
        if "None" in ann:
            return None
        raise ValueError(f"{name}: expected a value of type {ann}, got None")
    if "dict" in ann:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if "tuple" in ann:
        if isinstance(value, (int, float)):
            value = [value]
        arity = _tuple_arity(ann)
        what = f"{arity} numbers" if arity else "a list of numbers"
        if not isinstance(value, (list, tuple)) or (arity and len(value) != arity):
            raise ValueError(f"{name}: expected {what}, got {value!r}")
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected {what}, got {value!r}") from None
    if ann.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if ann.startswith("int"):
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if ann.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if ann.startswith("str"):
        if isinstance(value, bool):  # YAML 1.1 reads off/no/yes as booleans
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value if isinstance(value, str) else str(value)
    return value


def _tuple_arity(ann: str) -> int | None:
    """2 for ``tuple[float, float] | None``; None for ``tuple[float, ...]``."""
    inner = ann[ann.index("tuple[") + 6 :].split("]", 1)[0]
    return None if "..." in inner else len(inner.split(","))
