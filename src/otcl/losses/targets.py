r"""Target plans :math:`P_{tgt}`: which pairs a loss pulls together.

Every builder returns a row-normalised (n, n) float tensor (each row sums to 1) with zero
mass on excluded self-pairs. ``n = 2N`` in the ``"simclr"`` layout (rows/columns ordered as
``[view 1; view 2]``) and ``n = N`` in the ``"cross"`` layout.

* :func:`identity_target` -- the other view of the same sample (the default);
* :func:`label_target` -- every sample of the same class (SupCon-style supervised positives);
* :func:`domain_target` -- GCA's domain-aware blocks
  :math:`P_{tgt} = I + \alpha\,1(D_i = D_j) + \beta\,1(D_i\neq D_j)` off the self-pair.
"""

from __future__ import annotations

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


def domain_target(
    domains: torch.Tensor, alpha: float, beta: float, layout: str = "simclr"
) -> torch.Tensor:
    r"""GCA's domain-aware target (Chen et al., 2024, PACS experiment), row-normalised.

    :math:`P_{tgt}[i,j] = I[i,j] + \alpha\,1(D_i = D_j, i\ne j) + \beta\,1(D_i \ne D_j, i \ne j)`
    where :math:`I` is the identity (positive) target; ``alpha - beta > 0`` pulls same-domain
    samples together, ``< 0`` removes domain structure. ``alpha, beta >= 0``.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha, beta: expected >= 0, got alpha={alpha}, beta={beta}")
    d = _expand(domains, layout)
    n_pairs = domains.shape[0]
    same = (d.unsqueeze(0) == d.unsqueeze(1)).float()
    t = identity_target(n_pairs, layout, domains.device) + alpha * same + beta * (1 - same)
    if layout == "simclr":
        t.fill_diagonal_(0.0)
    else:
        t.fill_diagonal_(1.0 + alpha)
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
