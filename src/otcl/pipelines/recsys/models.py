r"""Recommendation models: CML, two-tower and matrix factorisation, over feature towers.

A :class:`Tower` embeds a user or an item as the **sum** of one embedding per feature:

.. math::

    t(x) = E_{id}[x] + \sum_{c} E_c[\mathrm{code}_c(x)]
        + W_{g}^\top \frac{g(x)}{\max(1, |g(x)|_1)} + \frac{1}{|w(x)|}\sum_{w \in w(x)} E_{w}[w]
        + W_{t}^\top e(x),

with ``id`` the ID embedding, categorical codes (age, gender, occupation, year), a multi-hot
field (genres), a bag of hashed title words and an optional dense text embedding :math:`e(x)`
(a sentence encoder). IDs alone are the configuration ``features=()``. A feature named in
``drop`` contributes nothing (the evaluation of a missing modality), and ``id_dropout`` drops
the ID term of a random fraction of the training rows so that the features alone learn to
place an item (cold start).

Models (each maps users and items to (B, d) and scores them):

* :class:`CML` (Hsieh et al., WWW 2017; DMM's base): embeddings in the unit ball
  (``max_norm=1``; IDs-only uses ``nn.Embedding(max_norm=1)`` as the official code),
  score :math:`-\|u - v\|_2`; trained with :class:`CMLTripletLoss`.
* :class:`TwoTower`: L2-normalised towers, score :math:`\cos(u, v)`; trained with any otcl loss
  in the ``cross`` layout (in-batch negatives, optional sampled extra negatives).
* :class:`MF`: dot-product matrix factorisation, trained with BPR (a baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...losses.contrastive import ContrastiveLoss
from ...losses.pair_losses import min_triplet
from ...ot.distributed import current_shard
from ..sources.ratings import Ratings
from ..sources.text import hash_tokens

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

USER_FEATURES = ("age", "gender", "occupation")
ITEM_FEATURES = ("genres", "year", "title")
MODELS = ("cml", "two-tower", "mf")


def _year_bucket(year: np.ndarray, width: int = 5) -> tuple[np.ndarray, int]:
    """Release years in ``width``-year buckets from 1920 (0 = unknown)."""
    b = np.where(year > 0, 1 + np.clip((year - 1920) // width, -1, 100 // width) + 1, 0)
    return b.astype(np.int64), 100 // width + 3


def feature_tables(
    data: Ratings,
    features: Iterable[str],
    *,
    title_buckets: int = 4096,
    text_embeddings: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-entity feature tables of ``data`` for the user and item towers.

    Args:
        features: names from :data:`USER_FEATURES` and :data:`ITEM_FEATURES`
            (``title`` = hashed bag of words, or ``text_embeddings`` when given).
        title_buckets: hash buckets of the title words.
        text_embeddings: (n_items, D) sentence-encoder embeddings of the titles, used instead
            of the hashed words for ``title``.
    Returns:
        ``(user_tables, item_tables)``, each ``{name: spec}`` with ``spec`` one of
        ``("code", codes (n,), vocab)``, ``("multihot", (n, G))``, ``("bag", (n, L), vocab)``,
        ``("dense", (n, D))``.
    """
    feats = tuple(features)
    unknown = sorted(set(feats) - set(USER_FEATURES) - set(ITEM_FEATURES))
    if unknown:
        raise ValueError(
            f"features: unknown {', '.join(unknown)}; expected names from "
            f"{', '.join(USER_FEATURES + ITEM_FEATURES)}"
        )
    user: dict[str, Any] = {}
    item: dict[str, Any] = {}
    uf, itf = data.user_features, data.item_features
    if any(f in USER_FEATURES for f in feats) and uf is None:
        raise ValueError(f"features: {data.name} has no user features (ids only)")
    if any(f in ITEM_FEATURES for f in feats) and itf is None:
        raise ValueError(f"features: {data.name} has no item features (ids only)")
    for f in feats:
        if f in USER_FEATURES:
            assert uf is not None
            user[f] = ("code", uf.codes()[f], uf.vocab[f])
        elif f == "genres":
            assert itf is not None
            item[f] = ("multihot", itf.genres)
        elif f == "year":
            assert itf is not None
            codes, vocab = _year_bucket(itf.year)
            item[f] = ("code", codes, vocab)
        elif f == "title":
            assert itf is not None
            if text_embeddings is not None:
                if text_embeddings.shape[0] != data.n_items:
                    raise ValueError(
                        f"text_embeddings: expected {data.n_items} rows, got "
                        f"{text_embeddings.shape[0]}"
                    )
                item[f] = ("dense", np.asarray(text_embeddings, dtype=np.float32))
            else:
                item[f] = ("bag", hash_tokens(itf.titles, title_buckets), title_buckets + 1)
    return user, item


class Tower(nn.Module):
    """Sum of per-feature embeddings of ``n`` entities (see the module docstring).

    Args:
        n: number of entities (users or items).
        dim: output dimension d.
        tables: ``{name: spec}`` from :func:`feature_tables` (empty: IDs only).
        ids: include the ID embedding (always, unless a feature-only tower is wanted).
        max_norm: IDs-only towers renormalise the looked-up rows in place as
            ``nn.Embedding(max_norm=...)`` (the official CML code); with features the output is
            projected into the ball of that radius.
        init_std: standard deviation of the embedding initialisation (None: N(0, 1), torch's).
        id_dropout: fraction of training rows whose ID term is dropped (features only).
    """

    n: int
    dim: int
    max_norm: float | None
    id_dropout: float

    def __init__(
        self,
        n: int,
        dim: int,
        tables: Mapping[str, Any] | None = None,
        *,
        ids: bool = True,
        max_norm: float | None = None,
        init_std: float | None = 0.1,
        id_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        tables = dict(tables or {})
        if not ids and not tables:
            raise ValueError("features: a tower needs ids or at least one feature")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout: expected a fraction in [0, 1), got {id_dropout!r}")
        if id_dropout > 0 and not tables:
            raise ValueError("id_dropout: applies only to towers with side features")
        self.n, self.dim, self.max_norm, self.id_dropout = n, dim, max_norm, float(id_dropout)
        self.names: tuple[str, ...] = tuple(tables)
        self.renorm_ids: bool = max_norm is not None and not tables
        self.id: nn.Embedding | None = nn.Embedding(n, dim) if ids else None
        self.emb: nn.ModuleDict = nn.ModuleDict()
        self.kinds: dict[str, str] = {}
        for name, spec in tables.items():
            kind = spec[0]
            self.kinds[name] = kind
            data = torch.as_tensor(spec[1])
            if data.shape[0] != n:
                raise ValueError(f"features: table {name!r} has {data.shape[0]} rows, not {n}")
            self.register_buffer(f"t_{name}", data, persistent=False)
            if kind == "code":
                self.emb[name] = nn.Embedding(int(spec[2]), dim)
            elif kind == "bag":
                self.emb[name] = nn.Embedding(int(spec[2]), dim, padding_idx=0)
            elif kind in ("multihot", "dense"):
                self.emb[name] = nn.Linear(data.shape[1], dim, bias=False)
            else:
                raise ValueError(f"features: unknown kind {kind!r} for {name!r}")
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, std=init_std)
                    if m.padding_idx is not None:
                        with torch.no_grad():
                            m.weight[m.padding_idx].zero_()

    @torch.no_grad()
    def _renorm(self, idx: torch.Tensor) -> None:
        """``nn.Embedding(max_norm=...)``'s in-place renormalisation of the looked-up rows.

        The same rule as torch's (rows with norm > max_norm scaled by max_norm / (norm + 1e-7)),
        vectorised: torch's CPU kernel loops over rows and dominated a CML step.
        """
        assert self.id is not None and self.max_norm is not None
        rows = torch.unique(idx)
        w = self.id.weight[rows]
        norm = w.norm(dim=-1, keepdim=True)
        scale = torch.where(norm > self.max_norm, self.max_norm / (norm + 1e-7), 1.0)
        self.id.weight[rows] = w * scale

    def table(self, name: str) -> torch.Tensor:
        return getattr(self, f"t_{name}")

    def forward(self, idx: torch.Tensor, drop: Iterable[str] = ()) -> torch.Tensor:
        """(B,) entity indices -> (B, d); features in ``drop`` (or ``"id"``) contribute 0."""
        drop = set(drop)
        unknown = drop - set(self.names) - {"id"}
        if unknown:
            raise ValueError(
                f"drop: unknown feature(s) {sorted(unknown)}; this tower has "
                f"{', '.join(('id',) + self.names)}"
            )
        out = torch.zeros(idx.shape[0], self.dim, device=idx.device)
        if self.id is not None and "id" not in drop:
            if self.renorm_ids:
                self._renorm(idx)
            e = self.id(idx)
            if self.training and self.id_dropout > 0:
                keep = torch.rand(idx.shape[0], 1, device=idx.device) >= self.id_dropout
                e = e * keep
            out = out + e
        for name in self.names:
            if name in drop:
                continue
            x = self.table(name)[idx]
            kind = self.kinds[name]
            if kind == "code":
                out = out + self.emb[name](x)
            elif kind == "bag":
                n_tok = (x > 0).sum(1, keepdim=True).clamp(min=1)
                bag = F.embedding_bag(x, self.emb[name].weight, mode="sum", padding_idx=0)
                out = out + bag / n_tok
            elif kind == "multihot":
                out = out + self.emb[name](x / x.sum(1, keepdim=True).clamp(min=1))
            else:
                out = out + self.emb[name](x)
        if self.max_norm is not None and self.names:
            norm = out.norm(dim=-1, keepdim=True)
            out = out * torch.clamp(self.max_norm / norm.clamp(min=1e-12), max=1.0)
        return out


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


class CMLTripletLoss(ContrastiveLoss):
    r"""CML's min-triplet hinge with K sampled negatives per positive (PyTorchCML ``MinTripletLoss``).

    .. math::

        L = \frac1B \sum_i \big[m + d(u_i, v^+_i) - \min_k d(u_i, v^-_{i,k})\big]_+ ,

    with :math:`d` the plain (not squared) Euclidean distance: the library's
    :func:`otcl.losses.pair_losses.min_triplet` (DMM's triplet pair loss) on per-user sampled
    negatives, as a loss module that DMM can wrap.

    Args:
        margin: m >= 0 (official: 1.5).
        gather_distributed: under ``torch.distributed`` with several ranks, return the mean over
            the global batch (each pair's hinge is its own: nothing is gathered) and
            back-propagate this rank's share, as every otcl loss with this flag; DMM wrapping it
            then mixes over the global batch too.

    Call:
        ``loss(z1, z2, negatives=neg)`` with users ``z1`` (B, d), their positives ``z2`` (B, d)
        and ``negatives`` sampled for each user (excluding its training positives): (B, K, d)
        (:class:`otcl.losses.DMM` hands them to its base loss as given).
    """

    defaults: ClassVar[Mapping[str, Any]] = {"margin": 1.5, "gather_distributed": False}

    def __init__(self, margin: float = 1.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin: expected a number >= 0, got {margin!r}")
        self.margin: float = float(margin)
        self.gather_distributed: bool = bool(gather_distributed)

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        *,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if labels is not None or target is not None:
            raise ValueError("labels/target: CMLTripletLoss takes neither (users vs items)")
        if negatives is None:
            raise ValueError("negatives: CMLTripletLoss needs (B, K, d) sampled negatives")
        if z1.shape != z2.shape or z1.dim() != 2:
            raise ValueError(
                f"z1, z2: expected two (B, d) tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}"
            )
        b, d = z1.shape
        if negatives.dim() != 3 or negatives.shape[0] != b or negatives.shape[2] != d:
            raise ValueError(
                f"negatives: expected shape ({b}, K, {d}), got {tuple(negatives.shape)}"
            )
        shard = current_shard() if self.gather_distributed else None
        share = min_triplet(z1, z2, self.margin, negatives, shard)
        return share if shard is None else shard.total(share)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


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


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    r"""BPR: :math:`\mathrm{mean}\ \mathrm{softplus}(s^- - s^+)` (scores (B,) or (B, K))."""
    if neg.dim() == pos.dim() + 1:
        pos = pos.unsqueeze(-1)
    return F.softplus(neg - pos).mean()
