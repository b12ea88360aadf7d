r"""Batch diagnostics for contrastive training logs: hard negatives, alignment, uniformity.

* **Effective number of negatives** of an anchor with negative weights :math:`w_{i\cdot}`
  (a distribution over its :math:`M` negatives): :math:`\exp H(w_{i\cdot})`, with
  :math:`H(w) = -\sum_j w_j \log w_j`; :math:`M` for uniform weights (InfoNCE, DCL), smaller when
  the weights concentrate on hard negatives (HCL, OT-hard).
* **Mean similarity of weighted vs uniform negatives**: :math:`\sum_j w_{ij}\cos(z_i, z_j)`
  against :math:`\frac1M\sum_j \cos(z_i, z_j)`, averaged over anchors; the hard-negative
  samplers should pick negatives *more similar* to the anchor (the claim of Jiang et al.).
* **Alignment and uniformity** (Wang & Isola, ICML 2020) on L2-normalised embeddings:
  :math:`\mathcal L_{align} = \mathbb E\,\|f(x) - f(y)\|^\alpha` over positive pairs and
  :math:`\mathcal L_{uniform} = \log \mathbb E\, e^{-t\|f(x) - f(y)\|^2}` over distinct pairs of
  one view (averaged over the two views), :math:`\alpha = 2, t = 2` by default.

:func:`batch_diagnostics` returns a plain ``dict[str, float]`` for a logger. The weights come from
the loss's ``negative_weights(z1, z2)`` (``dcl``, ``hcl``, ``ot-hard``, and :class:`DMM` over such
a base) or are uniform (``infonce`` and every loss without re-weighted negatives).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._validation import check_choice, check_embeddings, check_positive
from .ot.geometry import LAYOUTS, layout_embeddings, negative_mask, positive_index, unit_rows

__all__ = [
    "alignment",
    "uniformity",
    "effective_negatives",
    "negative_mask",
    "uniform_weights",
    "weighted_negative_similarity",
    "batch_diagnostics",
]


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    r"""Wang & Isola alignment :math:`\frac1N\sum_i \|\hat z_{1,i} - \hat z_{2,i}\|^\alpha`.

    Args:
        z1, z2: (N, d) positive pairs (normalised inside).
        alpha: exponent > 0.
    Returns:
        scalar tensor (differentiable: usable as a loss).
    """
    check_embeddings(z1, z2, min_batch=1, check_values=False)
    check_positive("alpha", alpha)
    d = (unit_rows(z1) - unit_rows(z2)).norm(dim=-1)
    return d.pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    r"""Wang & Isola uniformity :math:`\log \mathrm{mean}_{i<j}\, e^{-t\|\hat z_i-\hat z_j\|^2}`.

    Args:
        z: (N, d), N >= 2 (normalised inside).
        t: > 0.
    Returns:
        scalar tensor (differentiable), in :math:`[-4t, 0]`.
    """
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] < 2:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z: expected a (N, d) tensor with N >= 2, got {shape}")
    check_positive("t", t)
    zn = unit_rows(z)
    sq = torch.pdist(zn).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - torch.log(torch.tensor(float(sq.numel())))


def uniform_weights(neg: torch.Tensor) -> torch.Tensor:
    """Uniform row-normalised weights on a negative mask (n, m)."""
    w = neg.to(torch.float32)
    return w / w.sum(-1, keepdim=True).clamp_min(1.0)


def effective_negatives(weights: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per-anchor effective number of negatives :math:`\exp H(w_{i\cdot})`, shape (n,).

    Args:
        weights: (n, m) non-negative; each row is normalised to sum to 1 (rows of zeros give 0).
        neg: optional (n, m) bool mask; weights outside it are ignored.
    """
    w = weights if neg is None else torch.where(neg, weights, torch.zeros_like(weights))
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    ent = -torch.where(w > 0, w * w.clamp_min(torch.finfo(w.dtype).tiny).log(), 0.0).sum(-1)
    return torch.where(w.sum(-1) > 0, ent.exp(), torch.zeros_like(ent))


def weighted_negative_similarity(
    sim: torch.Tensor, weights: torch.Tensor, neg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean similarity of the weighted and of the uniform negatives, per anchor (n,), (n,)."""
    w = torch.where(neg, weights, torch.zeros_like(weights))
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    u = uniform_weights(neg).to(sim.dtype)
    return (w * sim).sum(-1), (u * sim).sum(-1)


def _layout_of(loss: Callable[..., torch.Tensor] | None) -> str:
    lay = getattr(loss, "layout", None)
    if lay is None:
        base = getattr(loss, "base", None)
        lay = getattr(base, "layout", None)
    return lay if lay in LAYOUTS else "simclr"


@torch.no_grad()
def batch_diagnostics(
    z1: torch.Tensor,
    z2: torch.Tensor,
    loss: Callable[..., torch.Tensor] | None = None,
    *,
    weights: torch.Tensor | None = None,
    source: str = "auto",
    layout: str | None = None,
    alpha: float = 2.0,
    t: float = 2.0,
) -> dict[str, float]:
    """Hard-negative, alignment and uniformity statistics of a batch, as plain floats.

    Args:
        z1, z2: (N, d) embeddings of the two views.
        loss: an otcl loss; its ``negative_weights(z1, z2)`` gives the weights when it has
            one (``dcl``, ``hcl``, ``ot-hard``, :class:`~otcl.losses.DMM` over them); otherwise
            the negatives are weighted uniformly (``infonce``, ``iot``, ``gca-*``). Its
            ``layout`` is used when ``layout`` is None.
        weights: explicit (n, n) negative weights (overrides ``loss``); entries off the
            negatives are ignored, rows are normalised.
        source: where the weights come from when ``weights`` is None: ``"auto"`` (the loss's
            ``negative_weights`` if it has one, else uniform), ``"uniform"``, or ``"plan"``: the
            model coupling :math:`P_\theta` of an :class:`~otcl.losses.OTContrastiveLoss`
            (``infonce``: the row softmax, ``iot`` / ``gca-*``: the Sinkhorn plan) restricted to
            the negatives and row-normalised, i.e. how the loss's own plan spreads each anchor's
            negative mass.
        layout: ``"simclr"`` or ``"cross"``; default: the loss's, else ``"simclr"``.
        alpha, t: exponents of :func:`alignment` and :func:`uniformity`.

    Returns:
        dict with ``neg_eff`` (mean effective number of negatives), ``neg_eff_frac`` (divided by
        the number of negatives), ``neg_sim_weighted``, ``neg_sim_uniform``, ``neg_sim_gap``
        (weighted - uniform), ``pos_sim`` (mean positive cosine), ``alignment``,
        ``uniformity``.
    """
    check_embeddings(z1, z2)
    lay = layout if layout is not None else _layout_of(loss)
    check_choice("layout", lay, LAYOUTS)
    n_pairs = z1.shape[0]
    a, b = unit_rows(z1.float()), unit_rows(z2.float())
    x, y = layout_embeddings(a, b, lay)
    sim = x @ y.T
    neg = negative_mask(n_pairs, lay, device=sim.device)
    check_choice("source", source, ("auto", "uniform", "plan"))
    if weights is None and source == "plan":
        coupling = getattr(loss, "coupling", None)
        if coupling is None:
            raise ValueError(
                f"source: 'plan' needs a loss with a coupling(z1, z2) method, got "
                f"{type(loss).__name__}"
            )
        out = coupling(z1, z2)
        plan = out.plan if hasattr(out, "plan") else out
        weights = torch.where(neg, plan.float(), torch.zeros_like(sim))
    if weights is None and loss is not None and source == "auto":
        fn = getattr(loss, "negative_weights", None)
        if fn is not None:
            try:
                w, neg_l = fn(z1, z2)
            except AttributeError:
                w = None
            else:
                weights, neg = w, neg_l
    if weights is None:
        weights = uniform_weights(neg)
    if tuple(weights.shape) != tuple(sim.shape):
        raise ValueError(
            f"weights: expected shape {tuple(sim.shape)} for layout={lay!r} with N={n_pairs}, "
            f"got {tuple(weights.shape)}"
        )
    weights = weights.float().to(sim.device)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights: expected finite, non-negative entries")
    ess = effective_negatives(weights, neg)
    count = neg.sum(-1).clamp_min(1).float()
    sw, su = weighted_negative_similarity(sim, weights, neg)
    pos = positive_index(n_pairs, lay, sim.device)
    pos_sim = sim.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
    return {
        "neg_eff": float(ess.mean()),
        "neg_eff_frac": float((ess / count).mean()),
        "neg_sim_weighted": float(sw.mean()),
        "neg_sim_uniform": float(su.mean()),
        "neg_sim_gap": float((sw - su).mean()),
        "pos_sim": float(pos_sim.mean()),
        "alignment": float(alignment(a, b, alpha)),
        "uniformity": float(0.5 * (uniformity(a, t) + uniformity(b, t))),
    }
