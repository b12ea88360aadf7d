r"""DMM's mixing step: one draw ``(lam, perm)`` per batch and the mixed anchors it gives.

:class:`DMMMixing` is the part of :class:`~otcl.losses.DMM` that builds the mixed anchors
:math:`\tilde a_i = \lambda a_i + (1-\lambda) a_{\pi(i)}` (embedding space) or
:math:`f(\lambda x_i + (1-\lambda) x_{\pi(i)})` (input space, re-encoded): the draw of
:math:`\lambda` and the partners from the loss's generator, their mixing over the global batch
under ``gather_distributed``, and the re-encoding per modality. The arithmetic is
:mod:`otcl.losses.mixing`'s; the loss, its margin and its schedule are in :mod:`otcl.losses.dmm`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..ot.distributed import Shard, current_shard
from .mixing import Mixed, draw_mix, first_tensor, mix

__all__ = ["DMMMixing"]


class DMMMixing:
    """The mixing methods of :class:`~otcl.losses.DMM` (a mixin: DMM declares the parameters).

    Reads the loss's ``lam_range``, ``partner``, ``both_views`` and ``per_modality``, its private
    generator and, for the distributed case, its base loss's ``gather_distributed``.
    """

    base: nn.Module | Callable[..., torch.Tensor] | str | None
    lam_range: tuple[float, float]
    partner: str
    both_views: bool
    per_modality: bool
    _gen: torch.Generator | None

    # -- distribution ----------------------------------------------------------------------
    def shard(self) -> Shard | None:
        """This rank's share of the global batch when the base loss gathers it
        (``gather_distributed=True``: DMM's term then mixes and ranks over the global batch too).
        """
        return current_shard() if getattr(self.base, "gather_distributed", False) else None

    def _own(self, batch: int, shard: Shard | None, device: Any) -> torch.Tensor | None:
        if shard is None:
            return None
        return torch.arange(batch, device=device) + shard.rank * batch

    # -- mixing ----------------------------------------------------------------------------
    def sample(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> tuple[float, torch.Tensor]:
        """Draw this batch's ``(lam, perm)``: one :math:`\\lambda` and the partner permutation.

        With ``gather_distributed``, ``batch_size`` is this rank's and ``perm`` permutes the
        global batch; every rank uses rank 0's draw (one broadcast).
        """
        shard = self.shard()
        world = 1 if shard is None else shard.world
        lam, perm = draw_mix(
            batch_size * world, self.lam_range, self.partner, generator=self._gen, device=device
        )
        if shard is not None:
            lam = float(shard.broadcast(torch.tensor([lam], dtype=torch.float64, device=device)))
            perm = shard.broadcast(perm)
        return lam, perm

    def mix_with(
        self,
        x: Any,
        lam: float,
        perm: torch.Tensor,
        *,
        name: str = "x",
        embeddings: bool = True,
    ) -> Any:
        r"""Mix ``x`` with a given draw ``(lam, perm)`` from :meth:`sample`.

        :math:`\lambda x + (1-\lambda) x_{\pi}` for a tensor (B, ...) or a dict/list of them
        (:func:`~otcl.losses.mixing.mix`). With ``gather_distributed`` on the base loss, ``perm``
        permutes the global batch and the partners come from any rank; ``embeddings=True``
        gathers them with gradients (embeddings), ``False`` without (raw inputs). Use it to mix
        several tensors (e.g. one embedding per modality) with one draw.
        """
        shard = self.shard()
        if shard is None:
            return mix(x, lam, perm, name=name)
        first = first_tensor(x)
        if first is None:
            return mix(x, lam, perm, name=name)
        own = self._own(first.shape[0], shard, first.device)
        gather = shard.gather if embeddings else shard.gather_constant  # grads for embeddings
        return mix(x, lam, perm, name=name, gather=gather, own=own)

    def mix_embeddings(self, z1: torch.Tensor, z2: torch.Tensor | None = None) -> Mixed:
        """Embedding-space mixing :math:`\\tilde a = \\lambda z_1 + (1-\\lambda) z_1[\\pi]`."""
        lam, perm = self.sample(z1.shape[0], z1.device)
        z2m = None
        if self.both_views:
            if z2 is None:
                raise ValueError("z2: expected view-2 embeddings with both_views=True, got None")
            z2m = self.mix_with(z2, lam, perm, name="z2")
        return Mixed(self.mix_with(z1, lam, perm, name="z1"), lam, perm, z2m)

    def mix_inputs(
        self,
        encoder: Callable[[Any], torch.Tensor],
        x1: Any,
        x2: Any = None,
        *,
        per_modality: bool | None = None,
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
                embedding). The encoder must accept ``None`` modalities. Default: the
                constructor's ``per_modality``.
        Returns:
            :class:`Mixed`, to pass as ``dmm(z1, z2, mixed=...)``.
        """
        per_modality = self.per_modality if per_modality is None else per_modality
        first = first_tensor(x1)
        if first is None:
            raise ValueError("x1: expected a tensor or a dict/list/tuple holding tensors")
        lam, perm = self.sample(first.shape[0], first.device)
        xm = self.mix_with(x1, lam, perm, name="x1", embeddings=False)
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
            z2m = encoder(self.mix_with(x2, lam, perm, name="x2", embeddings=False))
        return Mixed(z, lam, perm, z2m)
