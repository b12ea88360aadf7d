r"""The *geometry*: from embeddings to a score matrix (the log-kernel), its layout and masks.

A contrastive batch has two views :math:`z^{(1)}, z^{(2)} \in \mathbb{R}^{N\times d}`.
The score of a pair is its similarity divided by the temperature
:math:`\varepsilon` (= the entropic regularisation of the OT view):

.. math::

    S_{ij} = \mathrm{sim}(x_i, y_j) / \varepsilon = -C_{ij}/\varepsilon + \text{const},

with ``sim`` the cosine (cost :math:`C = 1 - \cos`, scores bounded by :math:`1/\varepsilon`)
or the dot product. Two layouts:

* ``"simclr"``: all :math:`2N` views against each other, :math:`S \in \mathbb{R}^{2N\times 2N}`,
  self-pairs masked (:math:`S_{ii} = -\infty`), the positive of row :math:`i` is
  :math:`i \pm N`.
* ``"cross"``: view 1 against view 2, :math:`S \in \mathbb{R}^{N\times N}` (CLIP), the
  positive of row :math:`i` is column :math:`i`.

Extra candidates :math:`y^{-} \in \mathbb{R}^{K\times d}` (``negatives=``, e.g. sampled items of a
recommender) are appended as :math:`K` more columns, never positives:
:math:`S \in \mathbb{R}^{n\times(n+K)}`.

:func:`negative_mask` is the one definition of "the negatives of an anchor" (not itself, not its
positive, not of its class when labels are given) shared by the losses, the hard-negative
samplers and :mod:`otcl.diagnostics`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .._validation import check_choice
from .distributed import Shard

__all__ = [
    "Geometry",
    "LAYOUTS",
    "SIMILARITIES",
    "layout_embeddings",
    "negative_mask",
    "pair_scores",
    "positive_index",
    "similarity",
    "unit_rows",
]

LAYOUTS = ("simclr", "cross")
SIMILARITIES = ("cosine", "dot")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    r"""Rows scaled to unit L2 norm, :math:`x_i / \|x_i\|`, safe for any finite norm.

    ``F.normalize`` squares the entries, so rows of norm :math:`\ge 10^{19}` overflow float32
    (:math:`\|x\|^2 = \infty`) and silently become zero vectors. Here each row is first divided by
    its largest absolute entry (a constant for autograd: the direction, hence the value and the
    gradient, is unchanged), then normalised. A zero row stays zero (its direction is undefined;
    the losses' input check refuses it, see ``check_inputs``).

    Args:
        x: (..., d).
    Returns:
        (..., d), same dtype.
    """
    scale = x.detach().abs().amax(-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return F.normalize(x / scale, dim=-1)


def similarity(x: torch.Tensor, y: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Pairwise similarity (n, d) x (m, d) -> (n, m): cosine (of :func:`unit_rows`) or dot."""
    check_choice("similarity", kind, SIMILARITIES)
    if kind == "cosine":
        x = unit_rows(x)
        y = unit_rows(y)
    return x @ y.transpose(-1, -2)


def positive_index(n: int, layout: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Column of the positive of each row: ``i + N mod 2N`` (simclr) or ``i`` (cross).

    Args:
        n: number of pairs N.
    Returns:
        (2N,) or (N,) long tensor.
    """
    check_choice("layout", layout, LAYOUTS)
    idx = torch.arange(n, device=device)
    if layout == "cross":
        return idx
    return torch.cat([idx + n, idx])


def negative_mask(
    n_pairs: int,
    layout: str = "simclr",
    *,
    labels: torch.Tensor | None = None,
    n_extra: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(n, n + K) bool mask of the negatives of every anchor (row).

    A pair is a negative unless it is the anchor itself (simclr layout), its positive, or, with
    ``labels``, a sample of the same class. The ``n_extra`` extra candidate columns are always
    negatives.

    Args:
        n_pairs: N, the number of pairs of the batch (n = 2N rows for simclr, N for cross).
        layout: ``"simclr"`` or ``"cross"``.
        labels: optional (N,) integer classes.
        n_extra: K, extra candidate columns after the batch's own.
    Returns:
        (n, n + K) bool tensor, True on the negatives.
    """
    pos = positive_index(n_pairs, layout, device)
    n = pos.numel()
    rows = torch.arange(n, device=device)
    mask = torch.ones(n, n + n_extra, dtype=torch.bool, device=device)
    mask[rows, pos] = False
    if layout == "simclr":
        mask[rows, rows] = False
    if labels is not None:
        y = torch.cat([labels, labels]) if layout == "simclr" else labels
        y = y.to(device)
        mask[:, :n] &= y.unsqueeze(1) != y.unsqueeze(0)
    return mask


def layout_embeddings(
    z1: torch.Tensor,
    z2: torch.Tensor,
    layout: str,
    negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchors (rows) and candidates (columns) of a layout: ``(x, y)``.

    simclr: ``x = [z1; z2]``, ``y = [z1; z2; negatives]``; cross: ``x = z1``,
    ``y = [z2; negatives]``.
    """
    check_choice("layout", layout, LAYOUTS)
    x = torch.cat([z1, z2], dim=0) if layout == "simclr" else z1
    y = x if layout == "simclr" else z2
    if negatives is not None:
        y = torch.cat([y, negatives.to(y.dtype)], dim=0)
    return x, y


@dataclass(frozen=True, eq=False)
class Geometry:
    """Scores of a contrastive batch, its layout and its point clouds (immutable).

    Attributes:
        scores: (n, m) log-kernel S; masked entries are ``-inf``.
        bound: a bound on ``|S|`` over unmasked entries when one is known without a sync
            (``1/eps`` for cosine); ``None`` otherwise. Lets the solver pick the exp domain.
        sim: (n, m) raw similarities before masking.
        layout: ``"simclr"`` or ``"cross"``.
        n_pairs: N, the pairs of the (global) batch.
        n_extra: K, extra candidate columns (``negatives=``) after the batch's own.
        mask: (n, m) bool, True where a pair is excluded from the coupling (masked self-pairs of
            the simclr layout), or None.
        x: (n, d) the rows' embeddings (anchors), y: (m, d) the columns' (candidates).
        shard: with ``gather_distributed``, this rank's :class:`~otcl.ot.distributed.Shard`: the
            rows are this rank's share of the global rows, the columns are global; None for a
            single process.
        rows: (n,) the global index of each row when sharded (None: rows 0..n-1).
    """

    scores: torch.Tensor
    bound: float | None
    sim: torch.Tensor
    layout: str = "simclr"
    n_pairs: int = 0
    n_extra: int = 0
    mask: torch.Tensor | None = None
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    shard: Shard | None = None
    rows: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        """Rows of the global problem (2N or N)."""
        return 2 * self.n_pairs if self.layout == "simclr" else self.n_pairs

    @property
    def pos(self) -> torch.Tensor:
        """(n,) column of each row's positive."""
        pos = positive_index(self.n_pairs, self.layout, self.scores.device)
        return pos if self.rows is None else pos[self.rows]

    def negatives(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(n, m) bool mask of the negatives (see :func:`negative_mask`); ``labels`` are the
        (global) batch's."""
        if self.rows is None:
            return negative_mask(
                self.n_pairs,
                self.layout,
                labels=labels,
                n_extra=self.n_extra,
                device=self.scores.device,
            )
        n, m = self.scores.shape[-2:]
        cols = torch.arange(m, device=self.scores.device)
        mask = cols.unsqueeze(0) != self.pos.unsqueeze(1)
        if self.layout == "simclr":
            mask &= cols.unsqueeze(0) != self.rows.unsqueeze(1)
        if labels is not None:
            y = torch.cat([labels, labels]) if self.layout == "simclr" else labels
            y = y.to(self.scores.device)
            own = y.numel()
            mask[:, :own] &= y[self.rows].unsqueeze(1) != y.unsqueeze(0)
        return mask

    def transposed(self) -> Geometry:
        """The cross layout seen from view 2: rows = view-2 anchors, columns = view 1.

        Extra candidates have no positive, so they are not anchors: the square block only.
        (Sharded geometries hold only their own rows; the reverse direction is built from the
        embeddings instead, see :func:`pair_scores`.)
        """
        if self.layout != "cross":
            raise ValueError(
                f"layout: transposed() applies to the 'cross' layout, got {self.layout!r}"
            )
        if self.shard is not None:
            raise ValueError("shard: a sharded geometry holds only its rows; build the reverse")
        n = self.n_pairs
        return self.replace(
            scores=self.scores[:, :n].transpose(0, 1),
            sim=self.sim[:, :n].transpose(0, 1),
            n_extra=0,
            mask=None if self.mask is None else self.mask[:, :n].transpose(0, 1),
            x=None if self.y is None else self.y[:n],
            y=self.x,
        )

    def replace(self, **changes: Any) -> Geometry:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _batch_rows_cols(
    z1: torch.Tensor,
    z2: torch.Tensor,
    layout: str,
    negatives: torch.Tensor | None,
    shard: Shard | None,
) -> tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor | None]:
    """The rows and columns of a two-view batch's scores in ``layout``: ``(x, y, n_pairs,
    n_extra, rows)``; with ``shard``, this rank's rows against every rank's columns (gathered
    with gradients) and ``rows`` their global indices (else None)."""
    rows = None
    if shard is None:
        x, y = layout_embeddings(z1, z2, layout, negatives)
        n_pairs = z1.shape[0]
        n_extra = 0 if negatives is None else negatives.shape[0]
    else:
        check_choice("layout", layout, LAYOUTS)
        g1, g2 = shard.gather(z1), shard.gather(z2)
        gn = None if negatives is None else shard.gather(negatives)
        x = torch.cat([z1, z2]) if layout == "simclr" else z1
        _, y = layout_embeddings(g1, g2, layout, gn)
        n_local, n_pairs = z1.shape[0], g1.shape[0]
        n_extra = 0 if gn is None else gn.shape[0]
        own = torch.arange(n_local, device=z1.device) + shard.rank * n_local
        rows = torch.cat([own, own + n_pairs]) if layout == "simclr" else own
    return x, y, n_pairs, n_extra, rows


def pair_scores(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float,
    layout: str = "simclr",
    similarity_kind: str = "cosine",
    self_pair: str = "mask",
    clip_min: float | None = None,
    negatives: torch.Tensor | None = None,
    shard: Shard | None = None,
) -> Geometry:
    """Score matrix of a two-view batch.

    Args:
        z1, z2: (N, d) embeddings of the two views (this rank's, with ``shard``).
        temperature: eps > 0; scores are sim / eps.
        layout: ``"simclr"`` (2N x 2N) or ``"cross"`` (N x N).
        similarity_kind: ``"cosine"`` or ``"dot"``.
        self_pair: ``"mask"`` (S_ii = -inf, the default) or ``"max_cost"`` (S_ii = min S, as the
            official GCA/IOT code does: the self-pair keeps the mass of the farthest negative).
        clip_min: clamp similarities from below (the official GCA code uses 1e-7), None = no clip.
        negatives: (K, d) extra candidates appended as columns (never positives), or None.
        shard: gather every rank's embeddings (with gradients) as the columns and keep this
            rank's rows (:mod:`otcl.ot.distributed`); None = one process.
    Returns:
        :class:`Geometry` with (n, n + K) scores, n = 2N (simclr) or N (cross); with ``shard``,
        this rank's rows of the global (2 N W) x (2 N W + K W) or (N W) x (N W + K W) scores.
    """
    check_choice("self_pair", self_pair, ("mask", "max_cost"))
    x, y, n_pairs, n_extra, rows = _batch_rows_cols(z1, z2, layout, negatives, shard)
    sim = similarity(x, y, similarity_kind)
    if clip_min is not None:
        sim = sim.clamp(min=clip_min)
    scores = sim / temperature
    mask = None
    if layout == "simclr":
        n, m = scores.shape
        if rows is None:
            mask = torch.eye(n, m, dtype=torch.bool, device=scores.device)
        else:
            cols = torch.arange(m, device=scores.device)
            mask = cols.unsqueeze(0) == rows.unsqueeze(1)
        if self_pair == "mask":
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            lowest = scores.detach().min()
            if shard is not None:
                lowest = -shard.max(-lowest)
            scores = torch.where(mask, lowest, scores)
            mask = None
    bound = 1.0 / temperature if similarity_kind == "cosine" else None
    return Geometry(
        scores=scores,
        bound=bound,
        sim=sim,
        layout=layout,
        n_pairs=n_pairs,
        n_extra=n_extra,
        mask=mask,
        x=x,
        y=y,
        shard=shard,
        rows=rows,
    )
