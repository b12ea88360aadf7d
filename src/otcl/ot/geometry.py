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

__all__ = [
    "Geometry",
    "LAYOUTS",
    "SIMILARITIES",
    "layout_embeddings",
    "negative_mask",
    "pair_scores",
    "positive_index",
    "similarity",
]

LAYOUTS = ("simclr", "cross")
SIMILARITIES = ("cosine", "dot")


def similarity(x: torch.Tensor, y: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Pairwise similarity (n, d) x (m, d) -> (n, m)."""
    check_choice("similarity", kind, SIMILARITIES)
    if kind == "cosine":
        x = F.normalize(x, dim=-1)
        y = F.normalize(y, dim=-1)
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
    """Scores of a contrastive batch and its layout (immutable).

    Attributes:
        scores: (n, m) log-kernel S; masked entries are ``-inf``.
        bound: a bound on ``|S|`` over unmasked entries when one is known without a sync
            (``1/eps`` for cosine); ``None`` otherwise. Lets the solver pick the exp domain.
        sim: (n, m) raw similarities before masking.
        layout: ``"simclr"`` or ``"cross"``.
        n_pairs: N, the pairs of the batch.
        n_extra: K, extra candidate columns (``negatives=``) after the batch's own.
        mask: (n, m) bool, True where a pair is excluded from the coupling (masked self-pairs of
            the simclr layout), or None.
    """

    scores: torch.Tensor
    bound: float | None
    sim: torch.Tensor
    layout: str = "simclr"
    n_pairs: int = 0
    n_extra: int = 0
    mask: torch.Tensor | None = None

    @property
    def pos(self) -> torch.Tensor:
        """(n,) column of each row's positive."""
        return positive_index(self.n_pairs, self.layout, self.scores.device)

    def negatives(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(n, m) bool mask of the negatives (see :func:`negative_mask`)."""
        return negative_mask(
            self.n_pairs,
            self.layout,
            labels=labels,
            n_extra=self.n_extra,
            device=self.scores.device,
        )

    def transposed(self) -> Geometry:
        """The cross layout seen from view 2: rows = view-2 anchors, columns = view 1.

        Extra candidates have no positive, so they are not anchors: the square block only.
        """
        if self.layout != "cross":
            raise ValueError(
                f"layout: transposed() applies to the 'cross' layout, got {self.layout!r}"
            )
        n = self.n_pairs
        return self.replace(
            scores=self.scores[:, :n].transpose(0, 1),
            sim=self.sim[:, :n].transpose(0, 1),
            n_extra=0,
            mask=None if self.mask is None else self.mask[:, :n].transpose(0, 1),
        )

    def replace(self, **changes: Any) -> Geometry:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


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
) -> Geometry:
    """Score matrix of a two-view batch.

    Args:
        z1, z2: (N, d) embeddings of the two views.
        temperature: eps > 0; scores are sim / eps.
        layout: ``"simclr"`` (2N x 2N) or ``"cross"`` (N x N).
        similarity_kind: ``"cosine"`` or ``"dot"``.
        self_pair: ``"mask"`` (S_ii = -inf, the default) or ``"max_cost"`` (S_ii = min S, as the
            official GCA/IOT code does: the self-pair keeps the mass of the farthest negative).
        clip_min: clamp similarities from below (the official GCA code uses 1e-7), None = no clip.
        negatives: (K, d) extra candidates appended as columns (never positives), or None.
    Returns:
        :class:`Geometry` with (n, n + K) scores, n = 2N (simclr) or N (cross).
    """
    check_choice("self_pair", self_pair, ("mask", "max_cost"))
    x, y = layout_embeddings(z1, z2, layout, negatives)
    sim = similarity(x, y, similarity_kind)
    if clip_min is not None:
        sim = sim.clamp(min=clip_min)
    scores = sim / temperature
    mask = None
    if layout == "simclr":
        n, m = scores.shape
        mask = torch.eye(n, m, dtype=torch.bool, device=scores.device)
        if self_pair == "mask":
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            lowest = scores.detach().min()
            scores = torch.where(mask, lowest, scores)
            mask = None
    bound = 1.0 / temperature if similarity_kind == "cosine" else None
    return Geometry(
        scores=scores,
        bound=bound,
        sim=sim,
        layout=layout,
        n_pairs=z1.shape[0],
        n_extra=0 if negatives is None else negatives.shape[0],
        mask=mask,
    )
