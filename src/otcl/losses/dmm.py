r"""Dynamic Mixed Margin (DMM): Mixup-made hard pairs with a margin that follows the mix.

So, Lim, Kim, Oh, Song, "Robust Contrastive Learning With Dynamic Mixed Margin", IEEE Access 11,
2023 (doi 10.1109/ACCESS.2023.3286931); official code MLAI-Yonsei/Dynamic-Mixed-Margin.

For a batch of aligned pairs :math:`(a_i, b_i)` (two views, video/text, user/item, modality/joint)
draw **one** :math:`\lambda \sim U[\lambda_{lo}, \lambda_{hi}]` per batch and a partner
permutation :math:`\pi` (the reversed batch in the official code), and build the mixed anchors

.. math::

    \tilde a_i = f\big(\lambda x_i + (1-\lambda) x_{\pi(i)}\big)\ \text{(input space)}
    \quad\text{or}\quad
    \tilde a_i = \lambda a_i + (1-\lambda) a_{\pi(i)}\ \text{(embedding space)}.

The positive of :math:`\tilde a_i` is :math:`b_i`, every other :math:`b_j` is a negative
(:math:`b_{\pi(i)}` is the hard one). The DMM term is a hinge with the **dynamic margin**
:math:`\lambda m`; the VSE-style sum of COOT/GMC (``pair_loss="hinge"``), with
:math:`S = \cos(\tilde a, b)`:

.. math::

    L_{dmm} = \frac{1}{B^2}\sum_{i\ne j} [\lambda m + S_{ij} - S_{ii}]_+
        + [\lambda m + S_{ij} - S_{jj}]_+ ,

and the total loss is :math:`L = L_{base}(a, b) + \omega\, \frac{e}{e + e_0}\, L_{dmm}` with the
ramp-up over epochs :math:`e` (:meth:`DMM.set_epoch`), offset :math:`e_0` = ``warmup``.

The pieces live in their own small modules: the pair losses (:func:`vse_hinge`,
:func:`min_triplet`) in :mod:`otcl.losses.pair_losses`, the mixing (:func:`mix`, :class:`Mixed`)
in :mod:`otcl.losses.mixing`, the loss's mixing step (:meth:`DMM.sample`, :meth:`DMM.mix_with`,
:meth:`DMM.mix_embeddings`, :meth:`DMM.mix_inputs`) in :mod:`otcl.losses.dmm_mixing`, the wrapper
mechanics in :mod:`otcl.losses.wrappers`; this file is the method.

Differences from the official code are listed in ``docs/losses.md`` (section ``dmm``); the main one:
the released recommender code multiplies a persistent margin in place (``margin *= lam``), so it
decays to ~0 within a few steps; otcl uses :math:`\lambda m` every step
(``legacy_cumulative_margin=True`` reproduces the official behaviour).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch

from .._validation import check_bool, check_embeddings, check_nonneg
from ..ot.distributed import Shard
from ..ot.geometry import unit_rows
from .divergences import row_mean
from .dmm_mixing import DMMMixing
from .mixing import PARTNERS, Mixed, mix
from .pair_losses import PAIR_LOSSES, min_triplet, vse_hinge
from .params import Rule, as_is, choice, optional, param
from .registry import register
from .wrappers import LossWrapper

__all__ = ["DMM", "Mixed", "PAIR_LOSSES", "PARTNERS", "min_triplet", "mix", "vse_hinge"]

#: repel_weight applies when the repel term is on
REPEL_ON = Rule(
    "repel_close_positives=True",
    lambda s, _: bool(s["repel_close_positives"]),
    note=" (the repel term is off)",
)


_INERT = (
    "dmm: the DMM term is off: its weight ramps in as e/(e + warmup) with the epoch e "
    "(warmup={warmup:g}), which stays 0 until the training loop calls loss_fn.set_epoch(epoch) "
    "at the start of every epoch; build it with warmup=0 for a constant weight"
)


def _check_lam_range(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a pair (lo, hi), got {value!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"{name}: expected 0 <= lo <= hi <= 1, got {value!r}")
    return (lo, hi)


def _check_epoch(name: str, value: Any) -> float:
    e = check_nonneg(name, value)
    if math.isinf(e):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return e


@register("dmm")
class DMM(DMMMixing, LossWrapper):
    r"""Dynamic Mixed Margin (So, Lim, Kim, Oh, Song, IEEE Access 2023) wrapping any loss.

    .. math::

        L = L_{base}(z_1, z_2) + \omega\,\frac{e}{e + e_0}\,L_{dmm},\qquad
        L_{dmm} = \frac{1}{B^2}\sum_{i\ne j} [\lambda m + S_{ij} - S_{ii}]_+
            + [\lambda m + S_{ij} - S_{jj}]_+ ,

    with :math:`S = \cos(\tilde a, z_2)`, mixed anchors
    :math:`\tilde a_i = \lambda z_{1,i} + (1-\lambda) z_{1,\pi(i)}` (or re-encoded mixed
    inputs), one :math:`\lambda \sim U[\lambda_{lo}, \lambda_{hi}]` per batch and the dynamic
    margin :math:`\lambda m` (see the module docstring).

    Args:
        base: the wrapped loss, an otcl loss instance or a registered name (default
            ``"infonce"``); any callable ``base(z1, z2, labels=None, target=None)`` works.
        base_params: parameters of ``build(base, **base_params)`` when ``base`` is a name
            (flat keyword arguments to this constructor are merged into it).
        margin: base margin :math:`m \ge 0` (official COOT/GMC: 0.2; CML: 1.5).
        lam_range: :math:`(\lambda_{lo}, \lambda_{hi}) \subset [0, 1]`, :math:`\lambda` uniform
            (official COOT/GMC: [0.5, 1); CML mixes users with (0, 0.5]).
        warmup: ramp-up offset :math:`e_0 \ge 0`, weight :math:`e/(e+e_0)` (COOT/CML 30 with
            0-based epochs, GMC 12 with 1-based epochs); 0 = constant weight 1.
        weight: extra multiplier :math:`\omega \ge 0` of the DMM term (GMC's ``ldmm``, 1).
        partner: ``"reverse"`` (official: :math:`\pi(i) = B-1-i`) or ``"random"`` (a random
            permutation per batch).
        pair_loss: ``"hinge"`` (VSE sum over negatives on cosines, COOT/GMC) or ``"triplet"``
            (CML min-triplet on Euclidean distances).
        both_views: also mix view 2 (positives = clean view 1) and average; off in the official
            code, which mixes one side (video, user, modality) only.
        per_modality: with dict inputs (one entry per modality), :meth:`prepare_inputs` encodes
            each mixed modality alone and averages their DMM terms (GMC's missing-modality
            training).
        repel_close_positives: add
            :math:`\frac1B\sum_i[\cos(\tilde a_i, b_i) - (1 - (1-\lambda)m)]_+`
            (an otcl reading of the abstract's "making a little far for strongly nearby positive
            pairs"; **absent from the official code**, off by default).
        repel_weight: weight of that term (1; only with ``repel_close_positives=True``).
        legacy_cumulative_margin: reproduce the released CML code, whose margin is multiplied in
            place by every :math:`\lambda` (margin :math:`m\prod_t\lambda_t`). This parity
            switch is the one piece of state a call leaves for the next (saved in
            :meth:`state_dict`); the default computes :math:`\lambda m` afresh every call.
        epoch: initial epoch (see :meth:`set_epoch`).
        seed: seed of the private generator drawing :math:`\lambda` and random partners (None:
            torch's global RNG). Its state, the legacy margin and the epoch are part of
            :meth:`state_dict` (extra state), so a checkpoint resumes the same draws.

    Call:
        ``dmm(z1, z2, labels=None, target=None, *, mixed=None, negatives=None)``; without
        ``mixed`` the anchors are mixed in embedding space, ``mixed`` from :meth:`mix_inputs`
        (or the :meth:`prepare_inputs` hook) uses input-space mixing. ``labels``/``target`` go to
        the base loss only; ``negatives`` (sampled negatives: (K, d) shared, or (B, K, d) per
        anchor) go to both as given (otcl's losses take a per-anchor set as B K shared extra
        candidates; the pair losses take each anchor's own).

    Schedule:
        The weight :math:`\omega e/(e + e_0)` follows the epoch that the training loop sets
        with :meth:`set_epoch` at the start of every epoch (the pipelines do); it is 0 at epoch
        0. A loss in training mode whose term is off because :meth:`set_epoch` was never called
        warns (``UserWarning``, once per call site) instead of silently returning the base
        loss; ``warmup=0`` gives a constant weight without any schedule.

    Example:
        >>> import torch, otcl
        >>> dmm = otcl.losses.build("dmm", base="gca-uot", margin=0.2)
        >>> encoder = torch.nn.Linear(32, 16)
        >>> x1, x2 = torch.randn(8, 32), torch.randn(8, 32)
        >>> for epoch in range(2):
        ...     dmm.set_epoch(epoch)                        # the ramp e / (e + warmup)
        ...     extra = dmm.prepare_inputs(encoder, x1)     # input-space mixed anchors
        ...     loss = dmm(encoder(x1), encoder(x2), **extra)
    """

    margin: float = param(default=0.2, check=check_nonneg)
    lam_range: tuple[float, float] = param(default=(0.5, 1.0), check=_check_lam_range)
    warmup: float = param(default=30.0, check=check_nonneg)
    weight: float = param(default=1.0, check=check_nonneg)
    partner: str = param(default="reverse", check=choice(PARTNERS))
    pair_loss: str = param(default="hinge", check=choice(PAIR_LOSSES))
    both_views: bool = param(default=False, check=check_bool)
    per_modality: bool = param(default=False, check=check_bool)
    repel_close_positives: bool = param(default=False, check=check_bool)
    repel_weight: float = param(default=1.0, check=check_nonneg, applies=REPEL_ON)
    legacy_cumulative_margin: bool = param(default=False, check=check_bool)
    epoch: float = param(default=0.0, check=_check_epoch)
    seed: int | None = param(default=None, check=optional(as_is))

    def configure(self) -> None:
        self._legacy_margin = self.margin
        self.set_epoch(self.epoch)
        self._scheduled = False  # True once the training loop (or a checkpoint) sets the epoch
        self._gen: torch.Generator | None = None
        if self.seed is not None:
            self._gen = torch.Generator().manual_seed(int(self.seed))

    # -- schedule --------------------------------------------------------------------------
    def set_epoch(self, epoch: float) -> None:
        """Set the epoch :math:`e \\ge 0` of the ramp-up weight :math:`e/(e + e_0)` (and the
        base loss's). Call it at the start of every epoch: the ramp does not advance by itself
        (see :meth:`forward`)."""
        self.epoch = e = _check_epoch("epoch", epoch)
        self._scheduled = True
        super().set_epoch(e)

    @property
    def ramp(self) -> float:
        """Ramp-up factor :math:`e/(e+e_0)` (1 when ``warmup=0``)."""
        if self.warmup == 0:
            return 1.0
        return self.epoch / (self.epoch + self.warmup)

    @property
    def current_weight(self) -> float:
        """Weight of the DMM term now: ``weight * ramp``."""
        return self.weight * self.ramp

    # -- checkpointing ---------------------------------------------------------------------
    _EXTRA_STATE_KEYS = ("epoch", "legacy_margin", "generator")

    def get_extra_state(self) -> dict[str, Any]:
        r"""Mutable state outside the parameters, saved by :meth:`state_dict`.

        The private generator's state (``seed=`` given; ``None`` when :math:`\lambda` and the
        partners come from torch's global RNG, which the training loop checkpoints), the legacy
        cumulative margin and the epoch of the ramp. Restoring it with :meth:`load_state_dict`
        makes a resumed run draw the same next ``(lam, perm)``.
        """
        return {
            "epoch": self.epoch,
            "legacy_margin": self._legacy_margin,
            "generator": None if self._gen is None else self._gen.get_state(),
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore what :meth:`get_extra_state` saved (from :meth:`load_state_dict`).

        Checkpoints of otcl <= 0.1 also hold the last batch's ``last_lam`` and ``last_margin``
        (no longer kept): they are accepted and dropped.
        """
        old = set(self._EXTRA_STATE_KEYS) | {"last_lam", "last_margin"}
        keys = set(state) if isinstance(state, Mapping) else None
        if keys is None or not (keys == set(self._EXTRA_STATE_KEYS) or keys == old):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"state: expected DMM extra state with keys {sorted(self._EXTRA_STATE_KEYS)}, "
                f"got {got}"
            )
        self.set_epoch(state["epoch"])
        self._legacy_margin = float(state["legacy_margin"])
        gen_state = state["generator"]
        if gen_state is None:
            self._gen = None
        else:
            if self._gen is None:
                self._gen = torch.Generator()
            self._gen.set_state(torch.as_tensor(gen_state, dtype=torch.uint8, device="cpu"))

    # -- mixing (the draw and the mixed anchors: DMMMixing) --------------------------------
    def total(self, term: torch.Tensor) -> torch.Tensor:
        """The global value of a :meth:`dmm_term` (the identity without ``gather_distributed``).

        Under ``gather_distributed`` each rank's :meth:`dmm_term` is its share of the global
        term; this sums the shares over ranks, keeping this rank's share's gradient
        (:meth:`~otcl.ot.distributed.Shard.total`). :meth:`forward` does this itself.
        """
        shard = self.shard()
        return term if shard is None else shard.total(term)

    def prepare_inputs(
        self,
        encoder: Callable[[Any], torch.Tensor],
        x1: Any,
        x2: Any = None,
    ) -> dict[str, Any]:
        """Training-loop hook: input-space mixing of this step, ``{"mixed": Mixed}``.

        Returns ``{}`` while the DMM weight is 0 (ramp start), so no extra encoder pass is paid
        then; otherwise :meth:`mix_inputs` (``x2`` is used with ``both_views=True``). A loop
        that wants embedding-space mixing simply does not call this hook.
        """
        if self.current_weight == 0.0:
            return {}
        return {"mixed": self.mix_inputs(encoder, x1, x2 if self.both_views else None)}

    # -- terms -----------------------------------------------------------------------------
    def margin_for(self, lam: float) -> float:
        """The dynamic margin of a batch: :math:`\\lambda m` (or the legacy cumulative one,
        which this call advances)."""
        if self.legacy_cumulative_margin:
            self._legacy_margin = self._legacy_margin * lam
            return self._legacy_margin
        return lam * self.margin

    def _repel(
        self, anchors: torch.Tensor, positives: torch.Tensor, lam: float, shard: Shard | None
    ) -> torch.Tensor:
        cap = 1.0 - (1.0 - lam) * self.margin
        cos = (unit_rows(anchors) * unit_rows(positives)).sum(-1)
        total = None if shard is None else cos.shape[0] * shard.world
        return row_mean(torch.relu(cos - cap), total)

    def dmm_term(
        self,
        mixed: Mixed,
        z2: torch.Tensor,
        z1: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unweighted DMM term of mixed anchors against their positives ``z2`` (B, d).

        ``z1`` (clean view 1) is needed only with ``both_views=True``; ``negatives`` are the
        anchors' sampled negatives for the pair loss ((K, d) or (B, K, d)). With
        ``gather_distributed`` (on the base loss), this rank's share of the global term: wrap
        it in :meth:`total` for the global value (:meth:`forward` does).
        """
        margin = self.margin_for(mixed.lam)
        fn = PAIR_LOSSES[self.pair_loss]
        shard = self.shard()

        def one(
            anchors: torch.Tensor, positives: torch.Tensor, neg: torch.Tensor | None
        ) -> torch.Tensor:
            check_embeddings(anchors, positives, check_values=False)
            if anchors.dtype != positives.dtype:  # e.g. anchors encoded under autocast
                anchors = anchors.to(positives.dtype)
            val = fn(anchors, positives, margin, neg, shard=shard)
            if self.repel_close_positives and self.repel_weight > 0:
                val = val + self.repel_weight * self._repel(anchors, positives, mixed.lam, shard)
            return val

        zs = mixed.z if isinstance(mixed.z, list) else [mixed.z]
        if not zs:
            raise ValueError("mixed: expected at least one mixed embedding, got none")
        term = cast(torch.Tensor, sum(one(z, z2, negatives) for z in zs)) / len(zs)
        if self.both_views:
            if mixed.z2 is None or z1 is None:
                raise ValueError("mixed: both_views=True needs mixed.z2 and the clean z1")
            term = 0.5 * (term + one(mixed.z2, z1, None))
        return term

    # -- call ------------------------------------------------------------------------------
    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        *,
        mixed: Mixed | None = None,
        negatives: torch.Tensor | None = None,
        col_prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # negatives as given: (K, d) or (B, K, d); col_prior (the base loss's column sampling
        # distribution) reaches the base loss alone
        loss = self.base_loss(z1, z2, labels, target, negatives, col_prior)
        w = self.current_weight
        if w == 0.0:
            if self.training and self.weight > 0 and not self._scheduled:
                warnings.warn(_INERT.format(warmup=self.warmup), UserWarning, stacklevel=4)
            return loss
        if mixed is None:
            mixed = self.mix_embeddings(z1, z2)
        term = self.dmm_term(mixed, z2, z1, negatives)
        return loss + w * self.total(term)

    def extra_repr(self) -> str:
        keys = ["margin", "lam_range", "warmup", "weight", "partner", "pair_loss", "epoch"]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
