r"""Which geometry a loss computes on: ``geometry="dense" | "streaming" | "auto"``.

* ``"dense"`` (the default): the (n, m) score matrix is stored (:func:`otcl.ot.pair_scores`);
* ``"streaming"``: only the embeddings are stored and every pass recomputes tiles of
  ``tile_size`` rows (:mod:`otcl.ot.streaming`; the same values and gradients, O(N d + tile m)
  memory);
* ``"auto"``: streams when the dense path's matrices (estimated as
  :data:`~otcl.ot.streaming.DENSE_MATRICES` n x m matrices) would pass ``memory_budget``
  bytes, else dense (today's speed).

``tile_size`` (rows per tile) defaults to the largest tile whose working memory
(:func:`~otcl.ot.streaming.tile_bytes`) fits ``memory_budget``; a tile size whose tile alone
exceeds the budget is a ``ValueError`` naming ``memory_budget``. A combination that cannot stream
is refused when the loss is built, in one line that says why; nothing falls back to the dense
path silently.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_positive
from ..ot.streaming import dense_bytes, tile_bytes
from .params import equals

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "GEOMETRIES",
    "STREAMS",
    "batch_tile_rows",
    "check_memory_budget",
    "tile_rows",
]

GEOMETRIES = ("dense", "streaming", "auto")
#: ``tile_size`` and ``memory_budget`` apply when the loss may stream
STREAMS = equals("geometry", "streaming", "auto")
#: the default working-memory budget of ``geometry="streaming" | "auto"``: 2 GiB
DEFAULT_MEMORY_BUDGET = float(2**31)


def check_memory_budget(name: str, value: Any) -> float:
    """A budget in bytes > 0."""
    return check_positive(name, value)


def tile_rows(
    geometry: str,
    tile_size: int | None,
    memory_budget: float,
    n: int,
    m: int,
    dtype: torch.dtype,
) -> int | None:
    """Rows per tile of an (n, m) problem, or None where the dense path runs.

    Args:
        geometry: ``"dense"``, ``"streaming"`` or ``"auto"``.
        tile_size: the loss's ``tile_size`` (None: the largest that fits the budget).
        memory_budget: bytes.
        n, m: this rank's rows and all columns of the problem; dtype: its working dtype.
    Raises:
        ValueError: naming ``memory_budget`` when even one tile exceeds it.
    """
    if geometry == "dense":
        return None
    item = torch.empty((), dtype=dtype).element_size()
    if geometry == "auto" and dense_bytes(n, m, item) <= memory_budget:
        return None
    if tile_size is None:
        one = tile_bytes(1, m, item)
        if one > memory_budget:
            raise ValueError(
                f"memory_budget: one tile row against {m} columns needs {one} bytes, more than "
                f"the budget of {memory_budget:.0f} bytes"
            )
        return max(1, min(n, int(memory_budget // one)))
    need = tile_bytes(tile_size, m, item)
    if need > memory_budget:
        raise ValueError(
            f"memory_budget: a tile of tile_size={tile_size} rows against {m} columns needs "
            f"{need} bytes, more than the budget of {memory_budget:.0f} bytes; lower tile_size "
            "or raise memory_budget"
        )
    return min(tile_size, n)


def batch_tile_rows(
    loss: Any, z1: torch.Tensor, negatives: torch.Tensor | None, world: int
) -> int | None:
    """:func:`tile_rows` of a batch under a loss's ``geometry``, ``tile_size``, ``memory_budget``
    and ``layout``: z1 (N, d) this rank's pairs, ``negatives`` (K, d) or (N, K, d) extra
    candidates, ``world`` ranks whose columns are gathered."""
    if loss.geometry == "dense" or not isinstance(z1, torch.Tensor):
        return None
    per = 2 if loss.layout == "simclr" else 1
    k = 0  # (malformed negatives: the loss's own check reports them)
    if isinstance(negatives, torch.Tensor) and negatives.dim() in (2, 3):
        k = negatives.numel() // max(negatives.shape[-1], 1)
    n, m = per * z1.shape[0], (per * z1.shape[0] + k) * world
    dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
    return tile_rows(loss.geometry, loss.tile_size, loss.memory_budget, n, m, dtype)
