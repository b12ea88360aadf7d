r"""The *geometry*: from embeddings to a score matrix (the log-kernel).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import check_choice

__all__ = ["Geometry", "similarity", "pair_scores", "positive_index", "LAYOUTS", "SIMILARITIES"]

LAYOUTS = ("simclr", "cross")
SIMILARITIES = ("cosine", "dot")


def similarity(x: torch.Tensor, y: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Pairwise similarity (n, d) x (m, d) -> (n, m)."""
    check_choice("similarity", kind, SIMILARITIES)
    if kind == "cosine":
        x = F.normalize(x, dim=-1)
        y = F.normalize(y, dim=-1)
    return x @ y.transpose(-1, -2)


def positive_index(n: int, layout: str, device: torch.device | None = None) -> torch.Tensor:
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


@dataclass
class Geometry:
    """Scores of a contrastive batch.

    Attributes:
        scores: (n, m) log-kernel S; masked entries are ``-inf``.
        bound: a bound on ``|S|`` over unmasked entries when one is known without a sync
            (``1/eps`` for cosine); ``None`` otherwise. Lets the solver pick the exp domain.
        mask: (n, m) bool, True where a pair is excluded (self-pairs in the simclr layout).
        sim: (n, m) raw similarities before masking.
    """

    scores: torch.Tensor
    bound: float | None
    mask: torch.Tensor | None
    sim: torch.Tensor


def pair_scores(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float,
    layout: str = "simclr",
    similarity_kind: str = "cosine",
    self_pair: str = "mask",
    clip_min: float | None = None,
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
    Returns:
        :class:`Geometry` with (2N, 2N) or (N, N) scores.
    """
    check_choice("layout", layout, LAYOUTS)
    check_choice("self_pair", self_pair, ("mask", "max_cost"))
    if layout == "simclr":
        z = torch.cat([z1, z2], dim=0)
        sim = similarity(z, z, similarity_kind)
    else:
        sim = similarity(z1, z2, similarity_kind)
    if clip_min is not None:
        sim = sim.clamp(min=clip_min)
    scores = sim / temperature
    mask = None
    if layout == "simclr":
        n = scores.shape[0]
        mask = torch.eye(n, dtype=torch.bool, device=scores.device)
        if self_pair == "mask":
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            lowest = scores.detach().min()
            scores = torch.where(mask, lowest, scores)
            mask = None
    bound = 1.0 / temperature if similarity_kind == "cosine" else None
    return Geometry(scores=scores, bound=bound, mask=mask, sim=sim)
