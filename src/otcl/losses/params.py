r"""Loss parameters, each declared once: its default, its check and when it applies.

A loss declares a parameter as an annotated class attribute,

.. code-block:: python

    class OTContrastiveLoss(ContrastiveLoss):
        temperature: float = param(default=0.5, check=check_positive, kw_only=False)
        rho: float | None = param(default=None, check=optional(check_positive), applies=UNBALANCED)

and everything else follows from that one line: the constructor's signature (for
:func:`inspect.signature`, and for type checkers and editors through
:func:`typing.dataclass_transform`), the default (:attr:`ContrastiveLoss.defaults`), the check
of a given value, the listing of ``otcl losses NAME`` (:attr:`ContrastiveLoss.applies_when`)
and the error for a parameter given where it does not apply. A preset changes a default with
a plain annotated value (``constraint: str = "balanced"``), and a subclass that changes only
when an inherited parameter applies writes ``param(default=INHERITED, applies=...)``.

A :class:`Rule` states once when a parameter applies: the predicate, the text that
``otcl losses`` lists, and the message when it does not hold, built from the settings it reads::

    rho: applies only to constraint='unbalanced'; gca-ince has constraint='balanced'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._validation import check_choice, check_int_at_least

__all__ = [
    "CROSS",
    "INHERITED",
    "SIMCLR",
    "Param",
    "Rule",
    "as_is",
    "check_finite_number",
    "choice",
    "equals",
    "int_at_least",
    "number",
    "optional",
    "param",
]

#: settings of a loss: parameter name -> value
Settings = Mapping[str, Any]
#: ``check(name, value) -> stored value``; raises ValueError naming the parameter
Check = Callable[[str, Any], Any]


class _Inherited:
    def __repr__(self) -> str:
        return "INHERITED"


#: the default of a redeclared parameter that keeps the inherited one
INHERITED: Any = _Inherited()


@dataclass(frozen=True)
class Rule:
    r"""When a parameter applies, stated once.

    Args:
        text: the condition as ``otcl losses NAME`` lists it ("constraint='unbalanced'").
        holds: ``holds(settings, loss_class) -> bool``.
        shows: the settings the message quotes when the rule does not hold
            ("gca-ince has constraint='balanced'").
        reason: the phrase after "applies only to" when it differs from ``text``.
        because: the clause after the semicolon instead of the quoted settings (``{who}`` is
            the loss's name).
        note: appended to the message.
        refusal: the whole message, for a parameter that never applies (``holds`` false).
        parts: the rules of a conjunction (``a & b``), whose first failing one speaks.
    """

    text: str
    holds: Callable[[Settings, type], bool]
    shows: tuple[str, ...] = ()
    reason: str | None = None
    because: str | None = None
    note: str = ""
    refusal: str | None = None
    parts: tuple[Rule, ...] = ()

    def why_not(self, settings: Settings, loss: type) -> str | None:
        """Why the parameter does not apply under ``settings`` (None if it does)."""
        if self.holds(settings, loss):
            return None
        for part in self.parts:
            why = part.why_not(settings, loss)
            if why is not None:
                return why
        who = loss.loss_name() if hasattr(loss, "loss_name") else loss.__name__
        if self.refusal is not None:
            return self.refusal.format(who=who)
        clause = self.because
        if clause is None and self.shows:
            quoted = " and ".join(f"{k}={settings[k]!r}" for k in self.shows)
            clause = f"{who} has {quoted}"
        tail = "" if clause is None else f"; {clause.format(who=who)}"
        return f"applies only to {self.reason or self.text}{tail}{self.note}"

    def __and__(self, other: Rule) -> Rule:
        """Both rules; the message is that of the first one that does not hold."""
        return Rule(
            f"{self.text} with {other.text}",
            lambda s, loss: self.holds(s, loss) and other.holds(s, loss),
            parts=(self, other),
        )


def equals(key: str, *values: Any, **kw: Any) -> Rule:
    """The rule "``key`` is one of ``values``", e.g. ``equals("layout", "cross")``."""
    if len(values) == 1:
        text = f"{key}={values[0]!r}"
    else:
        text = f"{key} in ({', '.join(map(repr, values))})"
    return Rule(text, lambda s, _: s[key] in values, shows=(key,), **kw)


#: the layout rules shared by the losses
CROSS = equals("layout", "cross")
SIMCLR = equals("layout", "simclr")


@dataclass(frozen=True)
class Param:
    """One declared loss parameter (see the module docstring).

    Attributes:
        default: the value when the parameter is not given (or given as None).
        check: ``check(name, value) -> stored value`` (ValueError naming the parameter).
        applies: when it applies (None: always).
        kw_only: False for the one positional parameter (``temperature``, DMM's ``base``).
        setting: False for a constructor argument that is no setting of the loss (DMM's
            ``base``): not listed in :attr:`~ContrastiveLoss.defaults`, not checked here.
        name: set when the class is created.
        annotation: the declared type (a string), for the signature.
    """

    default: Any = None
    check: Check | None = None
    applies: Rule | None = None
    kw_only: bool = True
    setting: bool = True
    name: str = ""
    annotation: Any = field(default=None, compare=False)

    def value(self, given: Any) -> Any:
        """The checked value to store (the default when ``given`` is None)."""
        v = self.default if given is None else given
        return v if self.check is None else self.check(self.name, v)

    def override(self, other: Param) -> Param:
        """This inherited parameter with what ``other`` (a redeclaration) states."""
        changes: dict[str, Any] = {}
        if other.default is not INHERITED:
            changes["default"] = other.default
        for key in ("check", "applies"):
            if getattr(other, key) is not None:
                changes[key] = getattr(other, key)
        return replace(self, **changes)


def param(
    *,
    default: Any = None,
    check: Check | None = None,
    applies: Rule | None = None,
    kw_only: bool = True,
    setting: bool = True,
) -> Any:
    """Declare a loss parameter (a field specifier: see the module docstring)."""
    return Param(default, check, applies, kw_only, setting)


# -- checks ----------------------------------------------------------------------------------
def as_is(name: str, value: Any) -> Any:
    """No check: the value is stored as given."""
    return value


def optional(check: Check) -> Check:
    """``check``, with None accepted as a value of its own."""

    def run(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return run


def choice(options: Iterable[str]) -> Check:
    """One of ``options``."""
    options = tuple(options)
    return lambda name, value: check_choice(name, value, options)


def int_at_least(minimum: int) -> Check:
    """An integer >= ``minimum``."""
    return lambda name, value: check_int_at_least(name, value, minimum)


def number(name: str, value: Any) -> float:
    """A number (stored as float)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def check_finite_number(name: str, value: Any) -> float:
    """Any finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return v
