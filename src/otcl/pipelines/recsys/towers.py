r"""Feature towers of the recommendation models: one embedding per feature, summed.

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
place an item (cold start). :func:`feature_tables` builds a tower's tables from the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sources.ratings import Ratings
from ..sources.text import hash_tokens

__all__ = ["Tower", "feature_tables", "USER_FEATURES", "ITEM_FEATURES"]

USER_FEATURES = ("age", "gender", "occupation")
ITEM_FEATURES = ("genres", "year", "title")


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
                weight = cast(torch.Tensor, self.emb[name].weight)
                bag = F.embedding_bag(x, weight, mode="sum", padding_idx=0)
                out = out + bag / n_tok
            elif kind == "multihot":
                out = out + self.emb[name](x / x.sum(1, keepdim=True).clamp(min=1))
            else:
                out = out + self.emb[name](x)
        if self.max_norm is not None and self.names:
            norm = out.norm(dim=-1, keepdim=True)
            out = out * torch.clamp(self.max_norm / norm.clamp(min=1e-12), max=1.0)
        return out
