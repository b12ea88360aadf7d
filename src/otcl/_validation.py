"""Argument checks shared by the solvers and losses.

Every check raises :class:`ValueError` with a message that names the argument, what was
expected and what was given, so a user mistake never surfaces as a stack of internal frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_embeddings",
    "check_finite",
    "flat_negatives",
    "check_labels",
    "check_negatives",
    "check_marginal",
    "check_positive",
    "check_nonneg",
    "check_int_at_least",
    "check_bool",
    "check_choice",
    "check_prob",
]


def _shape(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def check_finite(
    name: str, x: torch.Tensor, *, nonzero_rows: bool = False, shard: Any = None
) -> None:
    """Raise if ``x`` holds NaN or Inf, or (``nonzero_rows``) a row of zeros; one host sync.

    A zero row has no direction: its cosine similarity is undefined. With ``shard`` (a
    :class:`~otcl.ot.distributed.Shard`) every rank raises when any rank's ``x`` is bad, so that
    no rank is left waiting in a collective.
    """
    finite = torch.isfinite(x).all()
    ok = finite & (x.abs().amax(-1) > 0).all() if nonzero_rows else finite
    if shard is not None:
        bad = shard.max((~ok).to(torch.int32))
        if not bool(bad):
            return
        if bool(ok):
            raise ValueError(f"{name}: expected valid values on every rank, another rank's are not")
    elif bool(ok):
        return
    if not bool(finite):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/Inf entries")
    rows = (x.abs().amax(-1) == 0).nonzero().flatten().tolist()
    raise ValueError(
        f"{name}: expected rows of nonzero norm (a zero embedding has no direction, its cosine "
        f"similarity is undefined), got zero rows at {rows[:5]}{' ...' if len(rows) > 5 else ''}"
    )


def check_embeddings(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    min_batch: int = 2,
    check_values: bool = True,
    nonzero_rows: bool = False,
    shard: Any = None,
) -> None:
    """Check a pair of embedding batches ``z1``, ``z2`` of shape (N, d).

    ``check_values``: also refuse NaN/Inf entries and, with ``nonzero_rows`` (cosine
    similarity), zero rows (one host sync per tensor).
    """
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor):
            raise ValueError(
                f"{name}: expected a torch.Tensor of shape (N, d), got {type(z).__name__}"
            )
        if z.dim() != 2:
            raise ValueError(
                f"{name}: expected a 2-D tensor of shape (N, d), got shape {_shape(z)}"
            )
        if not z.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got dtype {z.dtype}")
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1, z2: expected the same shape (N, d) for both views, got {_shape(z1)} and {_shape(z2)}"
        )
    if z1.shape[0] < min_batch:
        raise ValueError(
            f"z1: expected a batch of at least {min_batch} samples (a contrastive loss needs "
            f"negatives), got N={z1.shape[0]}"
        )
    if z1.shape[1] < 1:
        raise ValueError(f"z1: expected embedding dimension d >= 1, got {z1.shape[1]}")
    if check_values:
        if shard is not None:
            shard.check_same_shape("z1", z1)
        check_finite("z1", z1, nonzero_rows=nonzero_rows, shard=shard)
        check_finite("z2", z2, nonzero_rows=nonzero_rows, shard=shard)


def check_negatives(
    negatives: torch.Tensor | None,
    z1: torch.Tensor,
    *,
    check_values: bool = True,
    nonzero_rows: bool = False,
    shard: Any = None,
) -> None:
    """Check extra candidates ``negatives`` against the batch ``z1`` (N, d): (K, d) shared, or
    (N, K, d) per anchor."""
    if negatives is None:
        return
    n, d = z1.shape
    if not isinstance(negatives, torch.Tensor) or negatives.dim() not in (2, 3):
        shape = (
            _shape(negatives) if isinstance(negatives, torch.Tensor) else type(negatives).__name__
        )
        raise ValueError(
            f"negatives: expected a tensor of shape (K, d) or ({n}, K, d), got {shape}"
        )
    if not negatives.is_floating_point():
        raise ValueError(
            f"negatives: expected a floating-point tensor, got dtype {negatives.dtype}"
        )
    if negatives.shape[-1] != d or (negatives.dim() == 3 and negatives.shape[0] != n):
        raise ValueError(
            f"negatives: expected shape (K, {d}) or ({n}, K, {d}) (the embeddings' N and d), "
            f"got {_shape(negatives)}"
        )
    if negatives.shape[-2] < 1:
        raise ValueError("negatives: expected at least one extra candidate (K >= 1), got K=0")
    if check_values:
        if shard is not None:
            shard.check_same_shape("negatives", negatives)
        check_finite("negatives", negatives, nonzero_rows=nonzero_rows, shard=shard)


def check_labels(labels: Any, n: int) -> None:
    """Check class ``labels`` of a batch of ``n`` pairs: an integer tensor of shape (n,).

    The message gives the shape (or type) it got, never the values.
    """
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"labels: expected a 1-D integer tensor of length N={n}, got {type(labels).__name__}"
        )
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(
            f"labels: expected a 1-D tensor of length N={n}, got shape {_shape(labels)}"
        )
    if labels.is_floating_point():
        raise ValueError(f"labels: expected integer class labels, got dtype {labels.dtype}")


def flat_negatives(negatives: torch.Tensor | None) -> torch.Tensor | None:
    """Per-anchor negatives (N, K, d) as N K shared candidates (N K, d); (K, d) unchanged."""
    if negatives is None or negatives.dim() == 2:
        return negatives
    return negatives.reshape(-1, negatives.shape[-1])


def check_positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number, got {value!r}") from None
    if not (v > 0) or math.isinf(v):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return v


def check_nonneg(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}") from None
    if not (v >= 0):
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return v


def check_prob(name: str, value: float, *, open_left: bool = False) -> float:
    v = check_nonneg(name, value)
    if v > 1 or (open_left and v == 0):
        lo = "(0" if open_left else "[0"
        raise ValueError(f"{name}: expected a number in {lo}, 1], got {value!r}")
    return v


def check_int_at_least(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A flag: ``True`` or ``False`` (also numpy's bool and the integers 0 and 1); a string
    such as ``"false"`` is refused, never read as true."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name}: expected a bool (True or False), got {value!r}")


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_marginal(
    name: str,
    m: torch.Tensor | None,
    batch_shape: torch.Size,
    n: int,
    *,
    like: torch.Tensor,
    check_values: bool = True,
) -> torch.Tensor | None:
    """Validate a marginal of length ``n`` (optionally batched) and return it on ``like``'s device.

    Accepts shape (n,) or (*batch, n). Entries must be >= 0, finite, with a positive sum
    (``check_values=False`` skips these value checks and their host syncs).
    """
    if m is None:
        return None
    if not isinstance(m, torch.Tensor):
        m = torch.as_tensor(m)
    if m.dim() == 0 or m.shape[-1] != n:
        raise ValueError(f"{name}: expected a marginal of length {n}, got shape {_shape(m)}")
    if m.dim() > 1 and m.shape[:-1] != batch_shape:
        raise ValueError(
            f"{name}: expected shape ({n},) or {(*batch_shape, n)}, got shape {_shape(m)}"
        )
    if not check_values:
        return m.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name}: expected finite entries, got NaN/Inf")
    if bool((m < 0).any()):
        raise ValueError(f"{name}: expected non-negative entries, got min {float(m.min()):.3g}")
    if bool((m.sum(-1) <= 0).any()):
        raise ValueError(f"{name}: expected a positive total mass, got a marginal summing to 0")
    return m.to(device=like.device, dtype=like.dtype)
