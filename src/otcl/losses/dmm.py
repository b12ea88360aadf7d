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

Differences from the official code are listed in ``docs/losses.md`` (section ``dmm``); the main one:
the released recommender code multiplies a persistent margin in place (``margin *= lam``), so it
decays to ~0 within a few steps; otcl uses :math:`\lambda m` every step
(``legacy_cumulative_margin=True`` reproduces the official behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_embeddings, check_nonneg
from .contrastive import ContrastiveLoss
from .registry import build, get, parameters, register

__all__ = ["DMM", "Mixed", "mix", "vse_hinge", "min_triplet", "PAIR_LOSSES", "PARTNERS"]

PAIR_LOSSES = ("hinge", "triplet")
PARTNERS = ("reverse", "random")


def vse_hinge(anchors: torch.Tensor, positives: torch.Tensor, margin: float) -> torch.Tensor:
    r"""VSE-style hinge summed over all in-batch negatives (COOT / GMC ``ContrastiveLoss``).

    :math:`\frac{1}{B^2}\sum_{i\ne j}[m + S_{ij} - S_{ii}]_+ + [m + S_{ij} - S_{jj}]_+` with
    :math:`S_{ij} = \cos(\text{anchors}_i, \text{positives}_j)`.

    Args:
        anchors: (B, d). positives: (B, d), row i is the positive of anchor i.
        margin: m >= 0.
    Returns:
        scalar.
    """
    s = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).transpose(0, 1)
    diag = s.diagonal()
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    cost_s = torch.relu(margin + s - diag.unsqueeze(1)) * off
    cost_im = torch.relu(margin + s - diag.unsqueeze(0)) * off
    return (cost_s.sum() + cost_im.sum()) / (s.shape[0] * s.shape[1])


def min_triplet(anchors: torch.Tensor, positives: torch.Tensor, margin: float) -> torch.Tensor:
    r"""CML's min-triplet hinge with Euclidean distances and in-batch negatives.

    :math:`\frac1B\sum_i [m + d(a_i, b_i) - \min_{j\ne i} d(a_i, b_j)]_+`, :math:`d` the plain
    (not squared) Euclidean distance on the raw embeddings (PyTorchCML ``MinTripletLoss``; the
    official code samples 10 negatives per user, here the other positives of the batch).
    """
    d = torch.cdist(anchors, positives)
    eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    hardest = d.masked_fill(eye, float("inf")).min(dim=-1).values
    return torch.relu(margin + d.diagonal() - hardest).mean()


_PAIR_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "hinge": vse_hinge,
    "triplet": min_triplet,
}


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def mix(x: Any, lam: float, perm: torch.Tensor, *, name: str = "x") -> Any:
    r"""Mixup of a batch with its partners: :math:`\lambda x + (1-\lambda) x[\pi]`.

    ``x`` is a floating tensor (B, ...), or a dict / list / tuple of them (one entry per
    modality, mixed with the same :math:`\lambda, \pi`); ``None`` entries (missing modalities)
    stay ``None``. Integer tensors (ids) cannot be mixed in input space: mix their embeddings.
    """
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise ValueError(
                f"{name}: expected floating-point inputs to mix, got dtype {x.dtype} "
                "(ids cannot be mixed in input space; mix their embeddings instead)"
            )
        if x.shape[0] != perm.numel():
            raise ValueError(
                f"{name}: expected a batch of {perm.numel()} samples, got shape {tuple(x.shape)}"
            )
        return lam * x + (1.0 - lam) * x[perm.to(x.device)]
    if isinstance(x, Mapping):
        return {k: mix(v, lam, perm, name=f"{name}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(mix(v, lam, perm, name=f"{name}[{i}]") for i, v in enumerate(x))
    raise ValueError(
        f"{name}: expected a tensor or a dict/list/tuple of tensors, got {type(x).__name__}"
    )


@dataclass
class Mixed:
    """Mixed anchors of one batch, from :meth:`DMM.mix_inputs` or :meth:`DMM.mix_embeddings`.

    Attributes:
        z: (B, d) embeddings of the mixed view-1 anchors, or a list of them (one per modality,
            ``per_modality=True``), whose DMM terms are averaged.
        lam: the mixing coefficient of this batch.
        perm: (B,) the partner of each sample.
        z2: (B, d) mixed view-2 anchors (``both_views=True``), positives are the clean view 1.
    """

    z: torch.Tensor | list[torch.Tensor]
    lam: float
    perm: torch.Tensor
    z2: torch.Tensor | None = None


@register("dmm")
class DMM(ContrastiveLoss):
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
        repel_close_positives: add
            :math:`\frac1B\sum_i[\cos(\tilde a_i, b_i) - (1 - (1-\lambda)m)]_+`
            (an otcl reading of the abstract's "making a little far for strongly nearby positive
            pairs"; **absent from the official code**, off by default).
        repel_weight: weight of that term.
        legacy_cumulative_margin: reproduce the released CML code, whose margin is multiplied in
            place by every :math:`\lambda` (margin :math:`m\prod_t\lambda_t`).
        epoch: initial epoch (see :meth:`set_epoch`).
        seed: seed of the private generator drawing :math:`\lambda` and random partners (None:
            torch's global RNG). Its state, the legacy margin and the epoch are part of
            :meth:`state_dict` (extra state), so a checkpoint resumes the same draws.

    Call:
        ``dmm(z1, z2, labels=None, target=None, mixed=None)``; without ``mixed`` the anchors are
        mixed in embedding space, ``mixed`` from :meth:`mix_inputs` uses input-space mixing.
        ``labels``/``target`` go to the base loss only.
    """

    #: ``build("dmm", base="infonce", temperature=0.1)`` forwards unknown keywords to the base
    forwards_params = True

    def __init__(
        self,
        base: nn.Module | str = "infonce",
        *,
        base_params: dict[str, Any] | None = None,
        margin: float = 0.2,
        lam_range: Sequence[float] = (0.5, 1.0),
        warmup: float = 30.0,
        weight: float = 1.0,
        partner: str = "reverse",
        pair_loss: str = "hinge",
        both_views: bool = False,
        repel_close_positives: bool = False,
        repel_weight: float = 1.0,
        legacy_cumulative_margin: bool = False,
        epoch: float = 0,
        seed: int | None = None,
        **extra_base_params: Any,
    ) -> None:
        super().__init__()
        params = dict(base_params or {})
        params.update(extra_base_params)
        if isinstance(base, str):
            self._check_base_params(base, params, flat=sorted(extra_base_params))
            self.base = build(base, **params)
        elif callable(base):
            if params:
                raise ValueError(
                    f"base_params: expected none when base is a loss instance, got {sorted(params)}"
                )
            self.base = base
        else:
            raise ValueError(
                f"base: expected a loss name or a loss module, got {type(base).__name__}"
            )
        self.margin = check_nonneg("margin", margin)
        try:
            lo, hi = (float(v) for v in lam_range)
        except (TypeError, ValueError):
            raise ValueError(f"lam_range: expected a pair (lo, hi), got {lam_range!r}") from None
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"lam_range: expected 0 <= lo <= hi <= 1, got {lam_range!r}")
        self.lam_range = (lo, hi)
        self.warmup = check_nonneg("warmup", warmup)
        self.weight = check_nonneg("weight", weight)
        self.partner = check_choice("partner", partner, PARTNERS)
        self.pair_loss = check_choice("pair_loss", pair_loss, PAIR_LOSSES)
        self.both_views = bool(both_views)
        self.repel_close_positives = bool(repel_close_positives)
        self.repel_weight = check_nonneg("repel_weight", repel_weight)
        self.legacy_cumulative_margin = bool(legacy_cumulative_margin)
        self._legacy_margin = self.margin
        self.set_epoch(epoch)
        self._gen: torch.Generator | None = None
        if seed is not None:
            self._gen = torch.Generator().manual_seed(int(seed))
        self.last_margin: float | None = None
        self.last_lam: float | None = None

    @staticmethod
    def _check_base_params(base: str, params: dict[str, Any], flat: list[str]) -> None:
        """Unknown keywords name both valid lists: the wrapper's own and the base loss's."""
        if getattr(get(base), "forwards_params", False):
            return  # a wrapper as base checks its own keywords
        valid = parameters(base)
        unknown = sorted(set(params) - set(valid))
        if not unknown:
            return
        own = sorted(k for k in parameters("dmm") if k not in ("base", "base_params"))
        where = "parameter(s)" if set(unknown) & set(flat) else "base_params"
        raise ValueError(
            f"params: unknown {where} {', '.join(unknown)} for loss 'dmm' with base {base!r}; "
            f"valid: {', '.join(own)} (dmm's own) or {', '.join(sorted(valid))} "
            f"(passed to {base!r})"
        )

    # -- schedule --------------------------------------------------------------------------
    def set_epoch(self, epoch: float) -> None:
        """Set the epoch :math:`e \\ge 0` of the ramp-up weight :math:`e/(e + e_0)`."""
        e = check_nonneg("epoch", epoch)
        if math.isinf(e):
            raise ValueError(f"epoch: expected a finite number >= 0, got {epoch!r}")
        self.epoch = e

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
    _EXTRA_STATE_KEYS = ("epoch", "legacy_margin", "generator", "last_lam", "last_margin")

    def get_extra_state(self) -> dict[str, Any]:
        r"""Mutable state outside the parameters, saved by :meth:`state_dict`.

        The private generator's state (``seed=`` given; ``None`` when :math:`\lambda` and the
        partners come from torch's global RNG, which the training loop checkpoints), the legacy
        cumulative margin, the epoch of the ramp and the last batch's values. Restoring it
        with :meth:`load_state_dict` makes a resumed run draw the same next ``(lam, perm)``.
        """
        return {
            "epoch": self.epoch,
            "legacy_margin": self._legacy_margin,
            "generator": None if self._gen is None else self._gen.get_state(),
            "last_lam": self.last_lam,
            "last_margin": self.last_margin,
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore what :meth:`get_extra_state` saved (from :meth:`load_state_dict`)."""
        if not isinstance(state, Mapping) or set(state) != set(self._EXTRA_STATE_KEYS):
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
        self.last_lam = state["last_lam"]
        self.last_margin = state["last_margin"]

    # -- mixing ----------------------------------------------------------------------------
    def sample(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> tuple[float, torch.Tensor]:
        """Draw this batch's ``(lam, perm)``: one :math:`\\lambda` and the partner permutation."""
        if batch_size < 2:
            raise ValueError(f"batch_size: expected at least 2 samples to mix, got {batch_size}")
        lo, hi = self.lam_range
        lam = lo + (hi - lo) * float(torch.rand((), generator=self._gen))
        if self.partner == "reverse":
            perm = torch.arange(batch_size - 1, -1, -1, device=device)
        else:
            perm = torch.randperm(batch_size, generator=self._gen).to(device)
        return lam, perm

    def mix_embeddings(self, z1: torch.Tensor, z2: torch.Tensor | None = None) -> Mixed:
        """Embedding-space mixing :math:`\\tilde a = \\lambda z_1 + (1-\\lambda) z_1[\\pi]`."""
        lam, perm = self.sample(z1.shape[0], z1.device)
        z2m = None
        if self.both_views:
            if z2 is None:
                raise ValueError("z2: expected view-2 embeddings with both_views=True, got None")
            z2m = mix(z2, lam, perm, name="z2")
        return Mixed(mix(z1, lam, perm, name="z1"), lam, perm, z2m)

    def mix_inputs(
        self,
        encoder: Callable[[Any], torch.Tensor],
        x1: Any,
        x2: Any = None,
        *,
        per_modality: bool = False,
    ) -> Mixed:
        """Input-space mixing: mix the raw batch, re-encode with gradients.

        Args:
            encoder: maps a batch (the same structure as ``x1``) to (B, d) embeddings.
            x1: view-1 inputs: a float tensor (B, ...), or a dict/list/tuple of them (e.g. one
                per modality; ``None`` entries = missing modality, passed through).
            x2: view-2 inputs, needed with ``both_views=True``.
            per_modality: with dict inputs, encode each mixed modality alone (the others set to
                ``None``) and average their DMM terms (GMC's missing-modality training: each
                modality's mixed latent is pulled toward the clean positive, e.g. the joint
                embedding). The encoder must accept ``None`` modalities.
        Returns:
            :class:`Mixed`, to pass as ``dmm(z1, z2, mixed=...)``.
        """
        first = _first_tensor(x1)
        if first is None:
            raise ValueError("x1: expected a tensor or a dict/list/tuple holding tensors")
        lam, perm = self.sample(first.shape[0], first.device)
        xm = mix(x1, lam, perm, name="x1")
        if per_modality:
            if not isinstance(xm, Mapping):
                raise ValueError(
                    f"x1: per_modality=True expects a dict of modalities, got {type(x1).__name__}"
                )
            z: torch.Tensor | list[torch.Tensor] = [
                encoder({k: (v if k == key else None) for k, v in xm.items()})
                for key, val in xm.items()
                if val is not None
            ]
        else:
            z = encoder(xm)
        z2m = None
        if self.both_views:
            if x2 is None:
                raise ValueError("x2: expected view-2 inputs with both_views=True, got None")
            z2m = encoder(mix(x2, lam, perm, name="x2"))
        return Mixed(z, lam, perm, z2m)

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
        """The dynamic margin of a batch: :math:`\\lambda m` (or the legacy cumulative one)."""
        if self.legacy_cumulative_margin:
            self._legacy_margin = self._legacy_margin * lam
            return self._legacy_margin
        return lam * self.margin

    def _repel(self, anchors: torch.Tensor, positives: torch.Tensor, lam: float) -> torch.Tensor:
        cap = 1.0 - (1.0 - lam) * self.margin
        cos = F.cosine_similarity(anchors, positives, dim=-1)
        return torch.relu(cos - cap).mean()

    def dmm_term(
        self, mixed: Mixed, z2: torch.Tensor, z1: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unweighted DMM term of mixed anchors against their positives ``z2`` (B, d).

        ``z1`` (clean view 1) is needed only with ``both_views=True``.
        """
        margin = self.margin_for(mixed.lam)
        self.last_margin, self.last_lam = margin, mixed.lam
        fn = _PAIR_FNS[self.pair_loss]

        def one(anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
            check_embeddings(anchors, positives, check_values=False)
            if anchors.dtype != positives.dtype:  # e.g. anchors encoded under autocast
                anchors = anchors.to(positives.dtype)
            val = fn(anchors, positives, margin)
            if self.repel_close_positives and self.repel_weight > 0:
                val = val + self.repel_weight * self._repel(anchors, positives, mixed.lam)
            return val

        zs = mixed.z if isinstance(mixed.z, list) else [mixed.z]
        if not zs:
            raise ValueError("mixed: expected at least one mixed embedding, got none")
        term = sum(one(z, z2) for z in zs) / len(zs)
        if self.both_views:
            if mixed.z2 is None or z1 is None:
                raise ValueError("mixed: both_views=True needs mixed.z2 and the clean z1")
            term = 0.5 * (term + one(mixed.z2, z1))
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
    ) -> torch.Tensor:
        loss = self.base(z1, z2, labels=labels, target=target)
        w = self.current_weight
        if w == 0.0:
            return loss
        if mixed is None:
            mixed = self.mix_embeddings(z1, z2)
        return loss + w * self.dmm_term(mixed, z2, z1)

    def negative_weights(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The base loss's negative weights (for :mod:`otcl.diagnostics`), if it has them."""
        fn = getattr(self.base, "negative_weights", None)
        if fn is None:
            raise AttributeError(f"{type(self.base).__name__} exposes no negative_weights")
        return fn(*args, **kwargs)

    def extra_repr(self) -> str:
        keys = ["margin", "lam_range", "warmup", "weight", "partner", "pair_loss", "epoch"]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
