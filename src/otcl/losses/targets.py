r"""Target plans :math:`P_{tgt}`: which pairs a loss pulls together.

Every builder returns a row-normalised (n, n) float tensor (each row sums to 1) with zero
mass on excluded self-pairs. ``n = 2N`` in the ``"simclr"`` layout (rows/columns ordered as
``[view 1; view 2]``) and ``n = N`` in the ``"cross"`` layout.

* :func:`identity_target` -- the other view of the same sample (the default);
* :func:`label_target` -- every sample of the same class (SupCon-style supervised positives);
* :func:`domain_target` -- GCA's domain-aware blocks
  :math:`P_{tgt} = I + \alpha\,1(D_i = D_j) + \beta\,1(D_i\neq D_j)` off the self-pair
  (per pair, or per block with ``scale="block"``; or any (D, D) ``blocks`` of weights).
"""

from __future__ import annotations

import math

import torch

from .._validation import check_choice, check_labels
from ..ot.geometry import LAYOUTS, Geometry, positive_index

__all__ = ["identity_target", "label_target", "domain_target", "prepare_target"]


def _expand(v: torch.Tensor, layout: str) -> torch.Tensor:
    return torch.cat([v, v]) if layout == "simclr" else v


def identity_target(
    n_pairs: int, layout: str = "simclr", device: torch.device | str | None = None
) -> torch.Tensor:
    """One-hot rows at the positive (the other view): (2N, 2N) or (N, N)."""
    check_choice("layout", layout, LAYOUTS)
    pos = positive_index(n_pairs, layout, device)
    t = torch.zeros(pos.numel(), pos.numel(), device=device)
    t[torch.arange(pos.numel(), device=device), pos] = 1.0
    return t


def label_target(
    labels: torch.Tensor,
    layout: str = "simclr",
    dtype: torch.dtype = torch.float32,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row-normalised same-label target; ``labels`` is (N,) with one label per sample.

    ``rows``: only these rows (global indices; one rank's share), else all n rows.
    """
    check_choice("layout", layout, LAYOUTS)
    y = _expand(labels, layout)
    rows = torch.arange(y.numel(), device=y.device) if rows is None else rows
    t = (y[rows].unsqueeze(1) == y.unsqueeze(0)).to(dtype)
    if layout == "simclr":  # no self-pairs
        t[torch.arange(rows.numel(), device=y.device), rows] = 0.0
    return t / t.sum(-1, keepdim=True)


#: how :func:`domain_target` reads its weights
SCALES = ("pair", "block")


def _check_weight(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return v


def domain_target(
    domains: torch.Tensor,
    alpha: float = 0.0,
    beta: float = 0.0,
    layout: str = "simclr",
    *,
    blocks: torch.Tensor | None = None,
    num_domains: int | None = None,
    scale: str = "pair",
) -> torch.Tensor:
    r"""GCA's domain-aware target (Chen et al., 2024, PACS experiment), row-normalised.

    .. math::
        P_{tgt}[i,j] \propto I[i,j] + W[D_i, D_j]\, m_{ij}, \qquad
        W = \alpha\,\mathbb 1_{D\times D} \text{ on the diagonal}, \ \beta \text{ off it}

    where :math:`I` is the identity (positive) target and :math:`W` the (D, D) block weights:
    ``alpha`` for a pair from the same domain, ``beta`` across domains (or any non-negative
    ``blocks`` matrix: ``blocks[a, b]`` weighs anchors of domain ``a`` against candidates of
    domain ``b``). ``alpha - beta > 0`` pulls same-domain samples together, ``< 0`` removes
    domain structure.

    Args:
        domains: (N,) integer domain ids in ``[0, num_domains)``, one per sample.
        alpha, beta: the same-domain and cross-domain weights, finite and ``>= 0``.
        layout: ``"simclr"`` (a (2N, 2N) target, self-pairs zero) or ``"cross"`` ((N, N)).
        blocks: a (D, D) non-negative weight matrix instead of ``alpha``/``beta``.
        num_domains: D, the number of domains (default: ``blocks``' size, else
            ``max(domains) + 1``); every id must be below it.
        scale: ``"pair"``: :math:`m_{ij} = 1` for every pair but the self-pair, so a block's
            mass grows with its members in the batch (the positive gets ``1 + alpha``);
            ``"block"``: the weight is the *mass of the block*, spread evenly over the row's
            members of domain :math:`D_j` other than itself and its positive (the positive
            keeps exactly 1), independent of the batch size and composition.
    Returns:
        (2N, 2N) or (N, N) float32, rows summing to 1.
    Raises:
        ValueError: naming ``alpha``, ``beta`` or ``blocks`` (negative, not finite, not
            (D, D), or given together), ``domains`` (not 1-D integers, an id outside
            ``[0, D)``: a domain count that does not match the target), ``num_domains``,
            ``layout`` or ``scale``.

    Example:
        >>> t = domain_target(torch.tensor([0, 0, 1, 1]), alpha=0.5, scale="block")
        >>> [round(v, 3) for v in t[0].tolist()]  # positive 1, same-domain block 0.5
        [0.0, 0.167, 0.0, 0.0, 0.667, 0.167, 0.0, 0.0]
    """
    check_choice("layout", layout, LAYOUTS)
    check_choice("scale", scale, SCALES)
    if not isinstance(domains, torch.Tensor) or domains.dim() != 1 or domains.is_floating_point():
        got = (
            f"{domains.dtype} {tuple(domains.shape)}"
            if isinstance(domains, torch.Tensor)
            else (type(domains).__name__)
        )
        raise ValueError(f"domains: expected a 1-D tensor of integer domain ids, got {got}")
    if blocks is not None:
        if alpha or beta:
            raise ValueError("blocks: expected either alpha/beta or blocks, got both")
        if (
            not isinstance(blocks, torch.Tensor)
            or blocks.dim() != 2
            or (blocks.shape[0] != blocks.shape[1])
        ):
            got = tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks)
            raise ValueError(f"blocks: expected a (D, D) tensor of block weights, got {got}")
        w = blocks.detach().to(device=domains.device, dtype=torch.float32)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("blocks: expected finite weights >= 0")
        if num_domains is not None and num_domains != w.shape[0]:
            raise ValueError(
                f"num_domains: {num_domains} does not match the {w.shape[0]}x{w.shape[0]} blocks"
            )
        n_dom = w.shape[0]
    else:
        a, b = _check_weight("alpha", alpha), _check_weight("beta", beta)
        n_dom = int(domains.max()) + 1 if num_domains is None and domains.numel() else 1
        if num_domains is not None:
            if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
                raise ValueError(f"num_domains: expected an integer >= 1, got {num_domains!r}")
            n_dom = num_domains
        w = torch.full((n_dom, n_dom), b, device=domains.device)
        w.fill_diagonal_(a)
    if domains.numel() and (int(domains.min()) < 0 or int(domains.max()) >= n_dom):
        raise ValueError(
            f"domains: expected ids in [0, {n_dom}) for a target of {n_dom} domains, got ids "
            f"{int(domains.min())}..{int(domains.max())}"
        )
    d = _expand(domains.long(), layout)
    n = d.numel()
    ar = torch.arange(n, device=d.device)
    pair = w[d][:, d]  # (n, n): W[D_i, D_j]
    mask = torch.ones(n, n, device=d.device)
    if layout == "simclr":
        mask[ar, ar] = 0.0
    if scale == "block":
        mask[ar, positive_index(domains.numel(), layout, d.device)] = 0.0
        members = mask @ torch.nn.functional.one_hot(d, n_dom).float()  # (n, D) per row
        pair = pair / members[:, d].clamp_min(1.0)
    t = identity_target(domains.numel(), layout, d.device) + pair * mask
    return t / t.sum(-1, keepdim=True)


def prepare_target(
    geom: Geometry,
    labels: torch.Tensor | None,
    target: torch.Tensor | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Resolve ``labels=`` / ``target=`` of a batch into (row-normalised target, positive index).

    Args:
        geom: the batch's :class:`~otcl.ot.Geometry` (layout, N, extra candidate columns K).
        labels: (N,) integer classes or None (the global batch's when sharded).
        target: (n, n + K) non-negative target plan or None; a joint plan: each direction
            normalises its rows (the reverse direction of the ``cross`` layout its transpose).
            When the geometry is one rank's rows (``gather_distributed``), the global plan, of
            which this rank takes its rows.
        dtype: dtype of the returned target.
    Returns:
        ``(None, pos)`` for the identity target (so losses can take the fast gather path),
        else ``(target, None)`` with an (n, n + K) row-normalised target whose extra columns
        (never positives) are zero (this rank's rows when sharded).
    """
    n_pairs, layout, device = geom.n_pairs, geom.layout, geom.scores.device
    m = geom.scores.shape[-1]
    n = geom.n_rows
    if labels is not None and target is not None:
        raise ValueError("labels, target: expected at most one of them, got both")
    if labels is not None:
        check_labels(labels, n_pairs)
        t = label_target(labels.to(device), layout, dtype, geom.rows)
        if m > n:
            t = torch.cat([t, t.new_zeros(t.shape[0], m - n)], dim=1)
        return t, None
    if target is not None:
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != (n, m):
            shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target)
            raise ValueError(
                f"target: expected a ({n}, {m}) tensor for layout={layout!r} with N={n_pairs}"
                + (f" and {m - n} extra negatives" if m > n else "")
                + f", got {shape}"
            )
        t = target.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError("target: expected finite, non-negative entries")
        if layout == "simclr" and bool((t.diagonal() != 0).any()):
            raise ValueError(
                "target: expected zero mass on the self-pairs (diagonal) in the simclr layout, "
                "which are excluded from the coupling"
            )
        rows = t.sum(-1, keepdim=True)
        if bool((rows <= 0).any()):
            raise ValueError(
                "target: expected every row to have positive mass (each anchor needs a positive)"
            )
        t = t / rows
        return (t if geom.rows is None else t[geom.rows]), None
    return None, geom.pos
