"""The settings vocabulary of :class:`~otcl.losses.OTContrastiveLoss`: the choices of its
string parameters and the rules under which its parameters apply (:mod:`otcl.losses.params`).
"""

from __future__ import annotations

from typing import Any

from .._validation import check_prob
from .params import Rule, equals

__all__ = [
    "DIVERGENCES",
    "ITERATIVE",
    "MARGINALS",
    "RINCE_DIVERGENCE",
    "SCALED_MARGINALS",
    "SELF_PAIRS",
    "UNBALANCED",
    "UNROLLED",
    "check_prob_open",
]

DIVERGENCES = ("ce", "rince")
MARGINALS = ("uniform", "unit")
SELF_PAIRS = ("mask", "max_cost")

# when a parameter applies (each rule stated once: its test, its listing and its message)
UNBALANCED = equals("constraint", "unbalanced")
ITERATIVE = Rule(
    "an iterative constraint ('balanced' or 'unbalanced')",
    lambda s, _: s["constraint"] in ("balanced", "unbalanced"),
    shows=("constraint",),
    reason="the iterative constraints 'balanced' and 'unbalanced'",
    note=", which has a closed form",
)
UNROLLED = equals("grad", "unrolled")
RINCE_DIVERGENCE = Rule(
    "the RINCE divergence", lambda s, loss: loss.uses_rince(s), shows=("divergence",)
)
SCALED_MARGINALS = Rule(
    "constraint='unbalanced', or RINCE with constraint='balanced' or 'cols'",
    lambda s, loss: (
        s["constraint"] == "unbalanced"
        or (loss.uses_rince(s) and s["constraint"] in ("balanced", "cols"))
    ),
    shows=("constraint", "divergence"),
    note=", which do not depend on a common scale of the marginals",
)


def check_prob_open(name: str, value: Any) -> float:
    """A number in (0, 1]."""
    return check_prob(name, value, open_left=True)
