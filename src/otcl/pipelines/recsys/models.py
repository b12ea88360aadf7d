r"""Recommendation models: CML, two-tower and matrix factorisation, over feature towers.

Each model holds a user and an item :class:`~.towers.Tower` (the sum of one embedding per
feature, :mod:`.towers`), maps users and items to (B, d) and scores them:

* :class:`CML` (Hsieh et al., WWW 2017; DMM's base): embeddings in the unit ball
  (``max_norm=1``; IDs-only uses ``nn.Embedding(max_norm=1)`` as the official code),
  score :math:`-\|u - v\|_2`; trained with :class:`~.losses.CMLTripletLoss`.
* :class:`TwoTower`: L2-normalised towers, score :math:`\cos(u, v)`; trained with any otcl loss
  in the ``cross`` layout (in-batch negatives, optional sampled extra negatives); ranked with
  :func:`popularity_prior` added to its scores.
* :class:`MF`: dot-product matrix factorisation, trained with BPR (:func:`~.losses.bpr_loss`;
  a baseline).

The towers and the losses are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sources.ratings import Ratings
from .losses import CMLTripletLoss, bpr_loss
from .towers import ITEM_FEATURES, USER_FEATURES, Tower, feature_tables

__all__ = [
    "Tower",
    "RecModel",
    "CML",
    "TwoTower",
    "MF",
    "CMLTripletLoss",
    "bpr_loss",
    "popularity_prior",
    "feature_tables",
    "USER_FEATURES",
    "ITEM_FEATURES",
    "MODELS",
    "build_model",
]

MODELS = ("cml", "two-tower", "mf")


class RecModel(nn.Module):
    """A user tower and an item tower; subclasses define the score.

    ``drop`` names item features to remove (evaluation with a missing modality).
    """

    kind: str = "base"
    user: Tower
    item: Tower

    def __init__(self, user: Tower, item: Tower) -> None:
        super().__init__()
        self.user, self.item = user, item

    def users(self, idx: torch.Tensor, drop: Iterable[str] = ()) -> torch.Tensor:
        return self.user(idx, ())

    def items(self, idx: torch.Tensor, drop: Iterable[str] = ()) -> torch.Tensor:
        return self.item(idx, drop)

    def all_items(self, drop: Iterable[str] = ()) -> torch.Tensor:
        dev = next(self.parameters()).device
        return self.items(torch.arange(self.item.n, device=dev), drop)

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(b, d) users x (n, d) items -> (b, n) scores (larger = more relevant)."""
        raise NotImplementedError

    @torch.no_grad()
    def scorer(
        self,
        drop: Iterable[str] = (),
        item_drop_mask: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A ``score_fn(users) -> (b, n_items)`` for :func:`otcl.pipelines.recsys.metrics.rank_metrics`.

        Args:
            drop: item features removed.
            item_drop_mask: (n_items,) bool, items scored without their ID term (cold items).
            prior: (n_items,) added to every user's scores (the two-tower's popularity
                correction, see :func:`popularity_prior`).
        """
        was = self.training
        self.eval()
        v = self.all_items(drop)
        if item_drop_mask is not None:
            v_feat = self.all_items(set(drop) | {"id"})
            v = torch.where(item_drop_mask.to(v.device).unsqueeze(1), v_feat, v)
        self.train(was)
        bias = None if prior is None else prior.to(v.device).unsqueeze(0)

        def fn(users: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                s = self.score(self.users(users), v)
                return s if bias is None else s + bias

        return fn


class CML(RecModel):
    r"""Collaborative metric learning: score :math:`-\|u - v\|_2` in the unit ball."""

    kind: str = "cml"

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # -||u - v||^2 = 2 u.v - |v|^2 - |u|^2: the same ranking as -||u - v||, one GEMM
        return torch.addmm(-(v * v).sum(-1).unsqueeze(0), u, v.transpose(0, 1), alpha=2.0) - (
            u * u
        ).sum(-1, keepdim=True)


class TwoTower(RecModel):
    r"""Two-tower retrieval: L2-normalised towers, score :math:`\cos(u, v)`."""

    kind: str = "two-tower"

    def users(self, idx: torch.Tensor, drop: Iterable[str] = ()) -> torch.Tensor:
        return F.normalize(self.user(idx, ()), dim=-1)

    def items(self, idx: torch.Tensor, drop: Iterable[str] = ()) -> torch.Tensor:
        return F.normalize(self.item(idx, drop), dim=-1)

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u @ v.transpose(0, 1)


class MF(RecModel):
    """Matrix factorisation: score :math:`u \\cdot v` (trained with BPR)."""

    kind: str = "mf"

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u @ v.transpose(0, 1)


def build_model(
    kind: str,
    data: Ratings,
    *,
    dim: int = 256,
    features: Iterable[str] = (),
    title_buckets: int = 4096,
    text_embeddings: np.ndarray | None = None,
    id_dropout: float = 0.0,
    init_std: float | None = None,
) -> RecModel:
    """Build a model of ``kind`` (``cml``, ``two-tower``, ``mf``) for ``data``.

    ``init_std`` None: CML N(0, 1) as ``nn.Embedding`` (then renormalised to the ball, as the
    official code), two-tower and MF N(0, 0.1^2).
    """
    if kind not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {kind!r}")
    if dim < 1:
        raise ValueError(f"dim: expected an integer >= 1, got {dim!r}")
    features = tuple(features)
    if kind == "mf" and features:
        raise ValueError("features: the mf baseline uses ids only")
    ut, it = feature_tables(
        data, features, title_buckets=title_buckets, text_embeddings=text_embeddings
    )
    max_norm = 1.0 if kind == "cml" else None
    std = init_std if init_std is not None else (None if kind == "cml" else 0.1)
    user = Tower(data.n_users, dim, ut, max_norm=max_norm, init_std=std)
    item = Tower(data.n_items, dim, it, max_norm=max_norm, init_std=std, id_dropout=id_dropout)
    cls = {"cml": CML, "two-tower": TwoTower, "mf": MF}[kind]
    return cls(user, item)


def popularity_prior(
    train_item: np.ndarray, n_items: int, strength: float, temperature: float
) -> torch.Tensor:
    r"""The two-tower's sampling-bias correction at ranking time, (n_items,).

    In-batch negatives are the other positives of the batch, drawn in proportion to item
    popularity :math:`q_i`; the softmax then learns :math:`\cos(u, v_i)/\tau \approx
    \log p(i|u) - \log q_i` + const, and ranks rare items first (Yi et al., RecSys 2019, correct
    the logits by :math:`-\log q_i` during training). otcl's losses take the batch as is, so the
    correction is applied when ranking: :math:`\cos(u, v_i) + \beta\,\tau \log(1 + n_i)`,
    with :math:`n_i` the item's positive training pairs and :math:`\beta` = ``strength``.
    """
    counts = np.bincount(np.asarray(train_item, dtype=np.int64), minlength=n_items)
    return torch.from_numpy(strength * temperature * np.log1p(counts)).float()
