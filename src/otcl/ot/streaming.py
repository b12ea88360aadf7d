r"""The *streaming geometry*: the scores of a batch computed tile by tile, never stored.

:class:`~otcl.ot.Geometry` stores the (n, m) score matrix :math:`S = \mathrm{sim}(x, y)/\varepsilon`
(2N x 2N in the ``simclr`` layout: 17 GB in float32 at N = 32,768). A
:class:`StreamingGeometry` holds only the point clouds :math:`x \in \mathbb R^{n\times d}`
(anchors) and :math:`y \in \mathbb R^{m\times d}` (candidates) and recomputes a *tile* of
``tile_size`` rows against every column whenever a pass needs it,

.. math::

    S_{[r_0:r_1],\,:} = \mathrm{sim}(x_{r_0:r_1}, y)/\varepsilon
        \quad(-\infty \text{ on the masked self-pairs}),

so the working memory is :math:`O(\texttt{tile\_size}\cdot m)` on top of the
:math:`O((n+m)d)` embeddings. Row reductions (log-sum-exps, matrix-vector products) are local
to a tile; column reductions are accumulated over the tiles (log-sum-exps with a running
maximum) and, with ``gather_distributed``, over the ranks.

The same layouts, similarities, self-pair mask, extra ``negatives=`` columns and sharding
(local rows x global columns) as :func:`~otcl.ot.pair_scores` (see :mod:`otcl.ot.geometry`);
:func:`streaming_pair_scores` is its streaming twin. The solver is
:func:`otcl.ot.streaming_sinkhorn.streaming_solve`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_choice, check_int_at_least
from .distributed import Shard
from .geometry import LAYOUTS, SIMILARITIES, _batch_rows_cols, positive_index, unit_rows

__all__ = [
    "TILE_BUFFERS",
    "StreamingGeometry",
    "TileSpec",
    "dense_bytes",
    "streaming_pair_scores",
    "tile_bytes",
]

#: tile-shaped buffers a streamed pass keeps alive at once (scores, their exponential, the
#: gradient tile, a temporary): the working memory of one pass is about
#: ``TILE_BUFFERS * tile_size * m * itemsize``
TILE_BUFFERS = 4
#: n x m matrices the dense path keeps alive through forward + backward (similarities, scores,
#: mask, kernel or log-plan, their gradients): the estimate behind ``geometry="auto"``
DENSE_MATRICES = 6


def tile_bytes(tile_size: int, m: int, itemsize: int) -> int:
    """Working memory of one streamed pass over tiles of ``tile_size`` rows and ``m`` columns."""
    return TILE_BUFFERS * tile_size * m * itemsize


def dense_bytes(n: int, m: int, itemsize: int) -> int:
    """Estimated memory of the dense path's (n, m) matrices (forward + backward)."""
    return DENSE_MATRICES * n * m * itemsize


@dataclass(frozen=True, eq=False)
class TileSpec:
    r"""How a tile of scores is made from the point clouds (no tensors that need gradients).

    Attributes:
        temperature: :math:`\varepsilon`; the default score map is :math:`s/\varepsilon`.
        tile_size: rows per tile (>= 1).
        clip_min: clamp the similarities from below before the map (None: no clamp).
        rows: (n,) global row index of each local row (the self-pair of row i is column
            ``rows[i]``), or None for rows 0..n-1.
        mask_self: mask the self-pairs (``-inf``), the ``simclr`` layout.
        score_map: ``score_map(sim, r0, r1)``, an elementwise map of a tile's similarities to
            its scores replacing :math:`s/\varepsilon` (differentiated per tile by autograd in
            the similarities), or None.
        keep: ``keep(r0, r1)`` -> (r1 - r0, m) bool, True on the pairs that are coupled (all
            others get ``-inf``), replacing the self-pair mask; None = the self-pair mask.
    """

    temperature: float
    tile_size: int
    clip_min: float | None = None
    rows: torch.Tensor | None = None
    mask_self: bool = False
    score_map: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    keep: Callable[[int, int], torch.Tensor] | None = None

    def blocks(self, n: int) -> Iterator[tuple[int, int]]:
        """The row ranges ``(r0, r1)`` of the tiles of n rows."""
        for r0 in range(0, n, self.tile_size):
            yield r0, min(r0 + self.tile_size, n)

    def excluded(self, r0: int, r1: int, m: int, device: torch.device) -> torch.Tensor | None:
        """(r1 - r0, m) bool, True on the pairs excluded from the coupling, or None."""
        if self.keep is not None:
            return ~self.keep(r0, r1)
        if not self.mask_self:
            return None
        own = torch.arange(r0, r1, device=device) if self.rows is None else self.rows[r0:r1]
        cols = torch.arange(m, device=device)
        return cols.unsqueeze(0) == own.unsqueeze(1)

    def sim(self, x: torch.Tensor, y: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, m) similarities of the tile (clamped with ``clip_min``)."""
        s = x[r0:r1] @ y.transpose(0, 1)
        return s if self.clip_min is None else s.clamp(min=self.clip_min)

    @property
    def plain(self) -> bool:
        """Scores are sim / eps with at most the self-pair mask (the fast path)."""
        return self.score_map is None and self.clip_min is None and self.keep is None

    def scores(self, x: torch.Tensor, y: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, m) scores of the tile, ``-inf`` on the excluded pairs."""
        if self.plain:  # 1/eps inside the matrix product, the self-pairs by index: one pass
            s = torch.addmm(
                x.new_empty(()).expand(r1 - r0, y.shape[0]),
                x[r0:r1],
                y.transpose(0, 1),
                beta=0,
                alpha=1.0 / self.temperature,
            )
            if self.mask_self:
                own = (
                    torch.arange(r0, r1, device=s.device) if self.rows is None else self.rows[r0:r1]
                )
                s[torch.arange(r1 - r0, device=s.device), own] = float("-inf")
            return s
        s = self.sim(x, y, r0, r1)
        s = s / self.temperature if self.score_map is None else self.score_map(s, r0, r1)
        ex = self.excluded(r0, r1, y.shape[0], s.device)
        return s if ex is None else s.masked_fill_(ex, float("-inf"))

    def backprop(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        r0: int,
        r1: int,
        grad_scores: torch.Tensor,
        grad_x: torch.Tensor | None,
        grad_y: torch.Tensor | None,
    ) -> None:
        r"""Accumulate the gradient of a tile's scores into the point clouds' gradients.

        :math:`\bar x_{r_0:r_1} \mathrel{+}= \bar s\,y`, :math:`\bar y \mathrel{+}= \bar s^\top
        x_{r_0:r_1}`, with :math:`\bar s` the gradient of the similarities (the map's derivative,
        the clamp's indicator). ``grad_scores`` must be 0 on excluded pairs; it may be reused.
        """
        if self.plain:  # 1/eps inside the two products
            inv = 1.0 / self.temperature
            if grad_x is not None:
                grad_x[r0:r1].addmm_(grad_scores, y, alpha=inv)
            if grad_y is not None:
                grad_y.addmm_(grad_scores.transpose(0, 1), x[r0:r1], alpha=inv)
            return
        if self.score_map is None:
            gs = grad_scores.div_(self.temperature)
            if self.clip_min is not None:
                raw = x[r0:r1] @ y.transpose(0, 1)
                gs.masked_fill_(raw < self.clip_min, 0.0)
        else:
            with torch.enable_grad():
                s = self.sim(x, y, r0, r1).requires_grad_(True)
                (gs,) = torch.autograd.grad(self.score_map(s, r0, r1), s, grad_scores)
            if self.clip_min is not None:
                raw = x[r0:r1] @ y.transpose(0, 1)
                gs = gs.masked_fill_(raw < self.clip_min, 0.0)
        if grad_x is not None:
            grad_x[r0:r1] += gs @ y
        if grad_y is not None:
            grad_y.addmm_(gs.transpose(0, 1), x[r0:r1])


class OnlineColumnLSE:
    r"""Column log-sum-exp of a matrix seen one row tile at a time (running maximum).

    After the tiles :math:`Z_1, Z_2, \dots` (each (rows, m)), :meth:`result` is
    :math:`\mathrm{LSE}_i(Z_{ij})` over every row seen, and, with a shard, over every rank's
    (two all-reduces of an m-vector: the maximum and the rescaled sum).
    """

    top: torch.Tensor  # (m,) running column maximum
    total: torch.Tensor  # (m,) running sum of exp(Z - top)

    def __init__(self, m: int, like: torch.Tensor) -> None:
        self.top = torch.full((m,), float("-inf"), dtype=like.dtype, device=like.device)
        self.total = torch.zeros(m, dtype=like.dtype, device=like.device)

    def add(self, z: torch.Tensor) -> None:
        """Fold in a (rows, m) tile; ``z`` is overwritten."""
        new = torch.maximum(self.top, z.amax(0))
        safe = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
        self.total.mul_((self.top - safe).exp_())
        self.total.add_(z.sub_(safe).exp_().sum(0))
        self.top = new

    def result(self, shard: Shard | None = None) -> torch.Tensor:
        """(m,) the column log-sum-exps (``-inf`` for a column with no finite entry)."""
        top, total = self.top, self.total
        if shard is not None:
            glob = shard.max(top)
            safe_g = torch.where(torch.isfinite(glob), glob, torch.zeros_like(glob))
            safe_t = torch.where(torch.isfinite(top), top, safe_g)
            total = shard.sum(total * (safe_t - safe_g).exp())
            top = glob
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return total.log() + safe


@dataclass(frozen=True, eq=False)
class StreamingGeometry:
    """A contrastive batch's point clouds, layout and masks; scores computed per tile (immutable).

    Attributes:
        x: (n, d) the rows' embeddings as compared (unit rows for cosine), differentiable.
        y: (m, d) the columns'.
        temperature: :math:`\\varepsilon`, scores are similarity / temperature.
        layout: ``"simclr"`` or ``"cross"``.
        similarity: ``"cosine"`` or ``"dot"``.
        n_pairs: N, the pairs of the (global) batch.
        n_extra: K, extra candidate columns after the batch's own.
        tile_size: rows per tile.
        clip_min: similarity clamp from below, or None.
        shard: this rank's :class:`~otcl.ot.distributed.Shard` with ``gather_distributed``.
        rows: (n,) global index of each row when sharded (None: rows 0..n-1).
        bound: a bound on ``|S|`` known without a pass (``1/eps`` for cosine), else None.
    """

    x: torch.Tensor
    y: torch.Tensor
    temperature: float
    layout: str = "simclr"
    similarity: str = "cosine"
    n_pairs: int = 0
    n_extra: int = 0
    tile_size: int = 1024
    clip_min: float | None = None
    shard: Shard | None = None
    rows: torch.Tensor | None = None
    bound: float | None = None

    @property
    def n_rows(self) -> int:
        """Rows of the global problem (2N or N)."""
        return 2 * self.n_pairs if self.layout == "simclr" else self.n_pairs

    @property
    def shape(self) -> tuple[int, int]:
        """(n, m): this rank's rows, all columns."""
        return self.x.shape[0], self.y.shape[0]

    @property
    def pos(self) -> torch.Tensor:
        """(n,) column of each row's positive."""
        pos = positive_index(self.n_pairs, self.layout, self.x.device)
        return pos if self.rows is None else pos[self.rows]

    @property
    def spec(self) -> TileSpec:
        """The :class:`TileSpec` of these scores."""
        return TileSpec(
            temperature=self.temperature,
            tile_size=self.tile_size,
            clip_min=self.clip_min,
            rows=self.rows,
            mask_self=self.layout == "simclr",
        )

    @property
    def work_dtype(self) -> torch.dtype:
        """float64 for float64 embeddings, else float32 (as the dense solver)."""
        return torch.float64 if self.x.dtype == torch.float64 else torch.float32

    def positive_scores(self) -> torch.Tensor:
        """(n,) :math:`S_{i,p(i)}`, differentiable, from one gather (no tile)."""
        s = (self.x * self.y[self.pos]).sum(-1)
        if self.clip_min is not None:
            s = s.clamp(min=self.clip_min)
        return s / self.temperature

    def scores_block(self, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, m) scores of one tile (no gradient): for inspection and tests."""
        with torch.no_grad():
            return self.spec.scores(self.x.detach(), self.y.detach(), r0, r1)

    def dense_scores(self) -> torch.Tensor:
        """(n, m) every tile stacked (no gradient): the dense scores, for small tests only."""
        return torch.cat([self.scores_block(r0, r1) for r0, r1 in self.spec.blocks(self.shape[0])])

    def transposed(self) -> StreamingGeometry:
        """The cross layout seen from view 2 (the square block; single process only)."""
        if self.layout != "cross":
            raise ValueError(
                f"layout: transposed() applies to the 'cross' layout, got {self.layout!r}"
            )
        if self.shard is not None:
            raise ValueError("shard: a sharded geometry holds only its rows; build the reverse")
        return self.replace(x=self.y[: self.n_pairs], y=self.x, n_extra=0)

    def replace(self, **changes: Any) -> StreamingGeometry:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def streaming_pair_scores(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float,
    tile_size: int,
    layout: str = "simclr",
    similarity_kind: str = "cosine",
    clip_min: float | None = None,
    negatives: torch.Tensor | None = None,
    shard: Shard | None = None,
) -> StreamingGeometry:
    """The streaming twin of :func:`~otcl.ot.pair_scores`: the same scores, never stored.

    Args:
        z1, z2: (N, d) embeddings of the two views (this rank's, with ``shard``).
        temperature: eps > 0; scores are sim / eps.
        tile_size: rows per tile (>= 1): the working memory is about
            ``TILE_BUFFERS * tile_size * m`` floats.
        layout, similarity_kind, clip_min, negatives, shard: as :func:`~otcl.ot.pair_scores`
            (self-pairs are always masked: ``self_pair="max_cost"`` does not stream).
    Returns:
        :class:`StreamingGeometry` of the (n, n + K) scores (this rank's rows when sharded).
    """
    check_choice("layout", layout, LAYOUTS)
    check_choice("similarity", similarity_kind, SIMILARITIES)
    check_int_at_least("tile_size", tile_size, 1)
    x, y, n_pairs, n_extra, rows = _batch_rows_cols(z1, z2, layout, negatives, shard)
    if similarity_kind == "cosine":
        x, y = unit_rows(x), unit_rows(y)
    if x.dtype not in (torch.float32, torch.float64):  # half inputs: tiles in float32
        x, y = x.float(), y.float()
    bound = 1.0 / temperature if similarity_kind == "cosine" else None
    return StreamingGeometry(
        x=x,
        y=y,
        temperature=float(temperature),
        layout=layout,
        similarity=similarity_kind,
        n_pairs=n_pairs,
        n_extra=n_extra,
        tile_size=int(tile_size),
        clip_min=clip_min,
        shard=shard,
        rows=rows,
        bound=bound,
    )
