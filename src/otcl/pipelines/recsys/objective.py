r"""The training objective of one recommendation model: which loss, which negatives, ±DMM.

One step on a batch of positive training pairs :math:`(u_i, v^+_i)`:

* ``cml``: K negatives per pair drawn uniformly among the items that are not training
  positives of :math:`u_i`; :class:`~otcl.pipelines.recsys.losses.CMLTripletLoss`
  ``(z_u, z_{v^+}, negatives=(B, K, d))``. With DMM: ``otcl.losses.DMM(base=that loss,
  pair_loss="triplet")``, which mixes users in embedding space and applies the min-triplet
  hinge of the mixed user against the user's own positive and negatives (DMM's CML recipe).
* ``two-tower``: any otcl loss in the ``cross`` layout, users x items, in-batch negatives; with
  ``extra_negatives = K > 0``, K items drawn uniformly are appended as extra columns
  (``negatives=(K, d)``). With DMM: ``build("dmm", base=<loss>, pair_loss="hinge")``.
* ``mf``: BPR with one negative per pair (excluding the user's training positives).

**Popularity as the column marginal** (two-tower, ``pop_marginal`` = alpha > 0): the batch's
items are the other users' positives, i.e. drawn with probability :math:`q_i` = the item's
share of the positive pairs; the loss gets ``col_prior`` :math:`q_i^\alpha` (uniform
:math:`1/|\mathrm{pool}|` for the extra sampled negatives), so its coupling treats the
columns as an importance-weighted sample of the catalogue (column marginal and kernel weight
:math:`\propto q_i^{-\alpha}`, :meth:`otcl.losses.OTContrastiveLoss.prior_weights`). For
InfoNCE with alpha = 1 that is exactly the logQ correction of Yi et al. (RecSys 2019); the
scores then need no popularity term at ranking time.

Under ``torchrun`` (:meth:`Objective.forward` with ``part``) every rank embeds the global batch
-- embedding lookups are cheap, and the ID dropout masks, the in-place renormalisation of the
looked-up rows and the sampled negatives are then exactly those of one process -- and computes
the loss of its own rows; the losses couple the global batch (``gather_distributed``).

DMM defaults are those of DMM's recommender code where they apply: users mixed with
:math:`\lambda \sim U(0, 0.5)` and the reversed batch as partner, ramp-up :math:`e/(e+30)`, margin
1.5 for CML's Euclidean triplet; the hinge on cosines of the two-tower keeps otcl's 0.2. The
margin is :math:`\lambda m` at every step (the official code's cumulative margin is a bug).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from ...losses import build as build_loss
from .data import NegativeSampler
from .losses import CMLTripletLoss, bpr_loss
from .models import RecModel

__all__ = ["Objective", "ObjectiveSpec", "DMM_DEFAULTS", "make_loss"]


def _share(n: int, rank: int, world: int, what: str) -> slice:
    """Rank ``rank``'s equal part of ``n`` rows."""
    if n % world:
        raise ValueError(
            f"{what}: {n} does not split evenly over the {world} processes of torchrun; use a "
            f"multiple of {world}"
        )
    return slice(rank * (n // world), (rank + 1) * (n // world))


#: DMM defaults of the official recommender code (CML) that apply to every recsys model
DMM_DEFAULTS: dict[str, Any] = {"lam_range": (0.0, 0.5), "warmup": 30.0, "partner": "reverse"}


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the model is trained with.

    Attributes:
        loss: for ``two-tower`` an otcl loss name (``infonce``, ``gca-uot``, ...); ``cml`` and
            ``mf`` have their own (``triplet``, ``bpr``).
        loss_params: parameters of the otcl loss (``layout="cross"`` is implied).
        dmm: wrap the loss in DMM.
        dmm_params: DMM parameters over :data:`DMM_DEFAULTS` (and ``margin``: 1.5 for CML).
        negatives: K sampled negatives per pair (CML, default 10) or extra shared negatives
            per batch (two-tower, default 0).
        margin: CML's triplet margin (1.5).
        gather_distributed: the loss couples the global batch of all ranks (set by the trainer
            under torchrun; a ``gather_distributed`` in ``loss_params`` takes precedence).
        pop_marginal: alpha, the power of the items' sampling probability given to the loss as
            its column prior (two-tower; 0 = off; see the module docstring).
    """

    loss: str = "triplet"
    loss_params: dict[str, Any] = field(default_factory=dict)
    dmm: bool = False
    dmm_params: dict[str, Any] = field(default_factory=dict)
    negatives: int = 10
    margin: float = 1.5
    gather_distributed: bool = False
    pop_marginal: float = 0.0


def make_loss(kind: str, spec: ObjectiveSpec) -> nn.Module | None:
    """The loss module of a model ``kind`` under ``spec`` (None for MF's BPR); checks ``spec``."""
    if spec.negatives < 0:
        raise ValueError(f"negatives: expected an integer >= 0, got {spec.negatives!r}")
    dmm_params = {**DMM_DEFAULTS, **spec.dmm_params}
    if kind == "cml":
        if spec.loss != "triplet" or spec.loss_params:
            raise ValueError(
                f"loss: the cml model trains with its min-triplet loss, got {spec.loss!r}"
                + (f" with {sorted(spec.loss_params)}" if spec.loss_params else "")
            )
        if spec.negatives < 1:
            raise ValueError("negatives: cml needs K >= 1 sampled negatives per pair")
        base: nn.Module = CMLTripletLoss(spec.margin, spec.gather_distributed)
        if not spec.dmm:
            return base
        dmm_params.setdefault("margin", spec.margin)
        return build_loss("dmm", base=base, pair_loss="triplet", **dmm_params)
    if kind == "two-tower":
        if spec.loss in ("triplet", "bpr", "dmm"):
            raise ValueError(
                f"loss: the two-tower model trains with an otcl loss (e.g. infonce, gca-uot; "
                f"DMM is the dmm switch), got {spec.loss!r}"
            )
        params = {**spec.loss_params, "layout": "cross"}
        if spec.gather_distributed:
            params.setdefault("gather_distributed", True)
        if spec.dmm:
            loss = build_loss(
                "dmm", base=spec.loss, base_params=params, pair_loss="hinge", **dmm_params
            )
        else:
            loss = build_loss(spec.loss, **params)
        if spec.pop_marginal:
            check_column_marginal(loss, spec.loss)
        return loss
    if spec.loss != "bpr" or spec.loss_params or spec.dmm:
        raise ValueError("loss: the mf model trains with BPR only (no loss params, no dmm)")
    return None


def check_column_marginal(loss: nn.Module, name: str) -> None:
    """Refuse ``pop_marginal`` on a loss without a column marginal (one line)."""
    from ...losses.base import OTContrastiveLoss

    base = getattr(loss, "base", loss)
    if not isinstance(base, OTContrastiveLoss) or base.constraint == "mass":
        what = "constraint='mass'" if isinstance(base, OTContrastiveLoss) else "no coupling"
        raise ValueError(
            f"model.pop_marginal: the loss {name} has no column marginal ({what}); use a loss "
            "of the OT family (infonce, gca-ince, gca-uot, iot, rince) or model.pop_correction"
        )
    if base.gather_distributed:
        raise ValueError("model.pop_marginal: not available under torchrun (gather_distributed)")


class Objective(nn.Module):
    """The loss of a :class:`RecModel` on batches of positive pairs (see the module docstring).

    Args:
        model: the model (its ``kind`` picks the recipe).
        spec: :class:`ObjectiveSpec`.
        sampler: negatives excluding each user's training positives.
        item_counts: (n_items,) positive training pairs per item (needed with
            ``spec.pop_marginal``).
    """

    def __init__(
        self,
        model: RecModel,
        spec: ObjectiveSpec,
        sampler: NegativeSampler,
        item_counts: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.kind: str = model.kind
        self.spec = spec
        self.sampler = sampler
        self.loss: nn.Module | None = make_loss(model.kind, spec)
        self.epoch: int = 0
        self.item_prior: torch.Tensor | None = None  # q_i ** alpha (not state: from the data)
        if spec.pop_marginal:
            if item_counts is None:
                raise ValueError("Objective: pop_marginal needs the items' training counts")
            q = item_counts.to(torch.float64) / item_counts.sum()
            self.item_prior = q.clamp_min(1e-12) ** spec.pop_marginal
            self.extra_prior: float = (1.0 / len(sampler.pool)) ** spec.pop_marginal

    @property
    def temperature(self) -> float | None:
        """The two-tower loss's temperature (that of DMM's base), None for the others."""
        loss = getattr(self.loss, "base", self.loss)
        t = getattr(loss, "temperature", None)
        return None if t is None else float(t)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        set_epoch = getattr(self.loss, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def forward(
        self,
        model: RecModel,
        users: torch.Tensor,
        items: torch.Tensor,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Loss of the batch of positive pairs ``(users, items)`` (both (B,) int64).

        ``part=(r, w)``: ``users, items`` are the global batch and this is rank r's share of w
        processes -- the embeddings and negatives of the whole batch (those of one process),
        the loss of rows ``[r B/w, (r+1) B/w)`` (and of the two-tower's extra negatives, the
        r-th of w equal parts: their union over the ranks is the step's K).
        """
        loss = cast(nn.Module, self.loss)  # None for MF alone, which does not call it
        dev = users.device
        b = users.shape[0]
        rows = slice(None) if part is None else _share(b, *part, "the batch")
        if self.kind == "two-tower":
            k = self.spec.negatives
            zu = model.users(users)[rows]
            prior = {}
            if self.item_prior is not None:
                q = self.item_prior.to(dev)[items]
                if k > 0:
                    q = torch.cat(
                        [q, torch.full((k,), self.extra_prior, dtype=q.dtype, device=dev)]
                    )
                prior = {"col_prior": q}
            if k > 0:
                extra = self.sampler.pool[
                    torch.randint(len(self.sampler.pool), (k,), generator=generator)
                ].to(dev)
                zi = model.items(torch.cat([items, extra]))
                neg = zi[b:] if part is None else zi[b:][_share(k, *part, "model.negatives")]
                return loss(zu, zi[:b][rows], negatives=neg, **prior)
            return loss(zu, model.items(items)[rows], **prior)
        k = self.spec.negatives if self.kind == "cml" else 1
        neg = self.sampler(users.cpu(), k, generator).to(dev)
        zu = model.users(users)[rows]
        zi = model.items(torch.cat([items, neg.flatten()]))
        zp, zn = zi[:b][rows], zi[b:].view(b, k, -1)[rows]
        if self.kind == "cml":
            return loss(zu, zp, negatives=zn)
        s_pos = (zu * zp).sum(-1)
        s_neg = torch.einsum("bd,bkd->bk", zu, zn)
        return bpr_loss(s_pos, s_neg)
