r"""Training objectives over M aligned modalities, with any otcl loss and DMM on top.

With unit latents :math:`z_m` of the M modalities of a batch and the joint representation
:math:`z_J` (the fusion of all of them), an otcl loss :math:`\ell(z_1, z_2)` (``layout="cross"``:
an N x N score matrix, row i's positive is column i, both directions averaged) gives

.. math::

    L_{pairwise} = \sum_{a<b} \ell(z_a, z_b), \qquad
    L_{joint} = \sum_m \ell(z_m, z_J)\ \text{(GMC)}, \qquad L_{both} = L_{pairwise} + L_{joint}.

The terms are summed over pairs as GMC sums over modalities.

**DMM** (:class:`otcl.losses.DMM`, So et al. 2023, official GMC code): one
:math:`\lambda \sim U[\lambda_{lo}, \lambda_{hi}]` and one partner permutation :math:`\pi` per
batch; every modality is mixed *in input space* on its own,
:math:`\tilde x_m = \lambda x_m + (1-\lambda) x_{m,\pi}`, and re-encoded alone (the other
modalities missing), :math:`\tilde z_m = z(\tilde x_m)`. Each mixed latent is pulled toward its
clean positives with the dynamic-margin hinge :math:`h_{\lambda m_0}` and

.. math::

    L = L_{base} + \omega \frac{e}{e+e_0} \cdot \operatorname{mean}_{p}
        \operatorname{mean}_{a \in A(p)} h(\tilde z_a, p),

over the objective's positives :math:`p` and their anchors :math:`A(p)`: :math:`p = z_J` with
every modality as anchor (joint, GMC's :math:`\frac1M\sum_m`), :math:`p = z_b` with the
anchors :math:`a \ne b` (pairwise), or all of them (both). ``dmm_mix="embedding"`` mixes the latents instead (:math:`\tilde z_m = \lambda z_m +
(1-\lambda) z_{m,\pi}`, no extra encoder pass).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from itertools import combinations
from typing import Any, cast

import torch
from torch import nn

from ...losses import DMM
from ...losses.dmm import Mixed
from .models import MultimodalModel

__all__ = ["MultimodalObjective", "OBJECTIVES", "DMM_MIX"]

OBJECTIVES = ("joint", "pairwise", "both")
DMM_MIX = ("input", "embedding")


class MultimodalObjective:
    """The training loss of one batch of M modalities (see the module docstring).

    Args:
        loss: an otcl loss (``layout="cross"`` recommended), or a :class:`~otcl.losses.DMM`
            wrapping one (its base gives the alignment terms, its hinge the DMM term).
        objective: ``"joint"`` (GMC: each modality to the joint), ``"pairwise"`` (every pair of
            modalities) or ``"both"``.
        dmm_mix: with DMM, ``"input"`` (mix raw inputs per modality and re-encode, as the
            official GMC code) or ``"embedding"``.
        autocast: a context-manager factory wrapped around the encoder passes only (e.g. the
            trainer's bf16 autocast); latents are cast to float32, and fusion and losses run
            outside it, in float32.

    Call:
        ``objective(model, x)`` with ``x`` a dict of every modality (B, ...); returns the scalar
        loss (:meth:`terms` returns its parts).
    """

    def __init__(
        self,
        loss: nn.Module,
        objective: str = "joint",
        dmm_mix: str = "input",
        *,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(
                f"objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}"
            )
        if dmm_mix not in DMM_MIX:
            raise ValueError(f"dmm_mix: expected one of {', '.join(DMM_MIX)}, got {dmm_mix!r}")
        self.loss = loss
        self.objective = objective
        self.dmm_mix = dmm_mix
        self.is_dmm: bool = isinstance(loss, DMM)
        self.autocast = autocast
        if self.is_dmm and loss.legacy_cumulative_margin and objective != "joint":
            raise ValueError(
                "legacy_cumulative_margin: reproduces one DMM term per step (GMC/CML); "
                f"objective={objective!r} makes several per step; use objective='joint'"
            )
        if self.is_dmm and loss.both_views:
            raise ValueError(
                "both_views: does not apply to the multimodal objective (every modality is "
                "mixed on its own); leave it False"
            )

    def _pairs(self, z: Mapping[str, torch.Tensor], joint: torch.Tensor):
        mods = list(z)
        if self.objective in ("pairwise", "both"):
            for a, b in combinations(mods, 2):
                yield z[a], z[b]
        if self.objective in ("joint", "both"):
            for m in mods:
                yield z[m], joint

    def terms(
        self,
        model: MultimodalModel,
        x: Mapping[str, torch.Tensor | None],
        *,
        negatives: torch.Tensor | None = None,
        enqueue: Callable[[torch.Tensor], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"align": sum of the alignment terms, "dmm": weighted DMM term (if any)}``.

        ``negatives`` (K, latent): extra candidates of every alignment term (e.g. a memory
        bank's queue of earlier joint representations); ``enqueue``: called with the batch's
        joint representation (B, latent), e.g. to queue it.
        """
        present = {m: v for m in model.modalities if (v := x.get(m)) is not None}
        missing = [m for m in model.modalities if m not in present]
        if missing:
            raise ValueError(
                f"x: modality {missing[0]!r} is missing at training time; training needs every "
                f"modality ({', '.join(model.modalities)}); drop modalities at evaluation only"
            )
        with self.autocast():
            z = {m: v.float() for m, v in model.encode(present).items()}
        joint = model.fuse(z)
        dmm = cast(DMM, self.loss) if self.is_dmm else None  # is_dmm: the loss is a DMM
        # a DMM's base is built in its __init__: a loss module or callable, never a name
        base = self.loss if dmm is None else cast(Callable[..., torch.Tensor], dmm.base)
        if enqueue is not None:
            enqueue(joint.detach())
        kw = {} if negatives is None else {"negatives": negatives}
        # a sum of loss tensors (a model has two modalities or more: one pair at least)
        align = cast(torch.Tensor, sum(base(a, b, **kw) for a, b in self._pairs(z, joint)))
        out: dict[str, torch.Tensor] = {"align": align}
        if dmm is not None and dmm.current_weight > 0:
            out["dmm"] = dmm.current_weight * self._dmm_term(model, present, z, joint)
        return out

    def _dmm_term(
        self,
        model: MultimodalModel,
        x: dict[str, torch.Tensor],
        z: dict[str, torch.Tensor],
        joint: torch.Tensor,
    ) -> torch.Tensor:
        dmm: Any = self.loss
        if self.dmm_mix == "input":
            with self.autocast():  # one latent per modality, each encoded alone
                mixed = dmm.mix_inputs(model, x, per_modality=True)
        else:
            lam, perm = dmm.sample(joint.shape[0], joint.device)  # perm: of the global batch
            # one draw for every modality; under torchrun the partners come from any rank
            mixed = Mixed(
                [dmm.mix_with(v, lam, perm, name=f"z[{m!r}]") for m, v in z.items()], lam, perm
            )
        zt = {m: v.float() for m, v in zip(z, mixed.z, strict=True)}
        groups: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        if self.objective in ("joint", "both"):
            groups.append((list(zt.values()), joint))
        if self.objective in ("pairwise", "both"):
            for b in z:
                groups.append(([zt[a] for a in z if a != b], z[b]))
        vals = [dmm.dmm_term(Mixed(anchors, mixed.lam, mixed.perm), pos) for anchors, pos in groups]
        term = sum(vals) / len(vals)
        # under torchrun each term is this rank's share: the global value, this share's gradient
        return dmm.total(term)

    def __call__(
        self,
        model: MultimodalModel,
        x: Mapping[str, torch.Tensor | None],
        *,
        negatives: torch.Tensor | None = None,
        enqueue: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        terms = self.terms(model, x, negatives=negatives, enqueue=enqueue)
        return cast(torch.Tensor, sum(terms.values()))  # "align" and maybe "dmm": a tensor
