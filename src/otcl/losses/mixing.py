r"""Mixup of a batch with partners, for DMM's mixed anchors.

One :math:`\lambda` and one partner permutation :math:`\pi` per batch (:func:`draw_mix`), then
:math:`\lambda x + (1-\lambda) x_{\pi}` on raw inputs or embeddings (:func:`mix`), for a tensor or
a dict/list of modalities (``None`` = a missing modality, passed through). :class:`Mixed` carries
the result of one batch from the mixing step to the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_choice

__all__ = ["PARTNERS", "Mixed", "draw_mix", "first_tensor", "mix"]

PARTNERS = ("reverse", "random")


@dataclass(frozen=True, eq=False)
class Mixed:
    """Mixed anchors of one batch (from :meth:`DMM.mix_inputs` or :meth:`DMM.mix_embeddings`).

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


def draw_mix(
    batch_size: int,
    lam_range: tuple[float, float],
    partner: str = "reverse",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, torch.Tensor]:
    r"""One batch's ``(lam, perm)``: :math:`\lambda \sim U[lo, hi]` and the partners.

    ``partner="reverse"`` is the official :math:`\pi(i) = B - 1 - i`; ``"random"`` a random
    permutation. Both draws use ``generator`` (torch's global RNG when None).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size: expected at least 2 samples to mix, got {batch_size}")
    check_choice("partner", partner, PARTNERS)
    lo, hi = lam_range
    lam = lo + (hi - lo) * float(torch.rand((), generator=generator))
    if partner == "reverse":
        perm = torch.arange(batch_size - 1, -1, -1, device=device)
    else:
        perm = torch.randperm(batch_size, generator=generator).to(device)
    return lam, perm


def first_tensor(x: Any) -> torch.Tensor | None:
    """The first tensor of a (nested) tensor / dict / list / tuple, or None."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for v in x:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def mix(
    x: Any,
    lam: float,
    perm: torch.Tensor,
    *,
    name: str = "x",
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    own: torch.Tensor | None = None,
) -> Any:
    r"""Mixup of a batch with its partners: :math:`\lambda x + (1-\lambda) x[\pi]`.

    ``x`` is a floating tensor (B, ...), or a dict / list / tuple of them (one entry per
    modality, mixed with the same :math:`\lambda, \pi`); ``None`` entries (missing modalities)
    stay ``None``. Integer tensors (ids) cannot be mixed in input space: mix their embeddings.

    With ``gather`` (this rank's batch -> the global batch) and ``own`` (the global index of
    this rank's samples), ``perm`` is a permutation of the global batch and the partners come
    from any rank: :math:`\lambda x + (1-\lambda)\,\mathrm{gather}(x)[\pi(\mathrm{own})]`.
    """
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise ValueError(
                f"{name}: expected floating-point inputs to mix, got dtype {x.dtype} "
                "(ids cannot be mixed in input space; mix their embeddings instead)"
            )
        expected = perm.numel() if own is None else own.numel()
        if x.shape[0] != expected:
            raise ValueError(
                f"{name}: expected a batch of {expected} samples, got shape {tuple(x.shape)}"
            )
        perm = perm.to(x.device)
        if gather is None:
            return lam * x + (1.0 - lam) * x[perm]
        assert own is not None, "mix: gather= goes with own="
        return lam * x + (1.0 - lam) * gather(x)[perm[own.to(x.device)]]
    kw = {"gather": gather, "own": own}
    if isinstance(x, Mapping):
        return {k: mix(v, lam, perm, name=f"{name}[{k!r}]", **kw) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(mix(v, lam, perm, name=f"{name}[{i}]", **kw) for i, v in enumerate(x))
    raise ValueError(
        f"{name}: expected a tensor or a dict/list/tuple of tensors, got {type(x).__name__}"
    )
