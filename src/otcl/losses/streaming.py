r"""The OT-coupling losses on a streaming geometry: value and gradient from potentials and tiles.

Every term of :class:`~otcl.losses.OTContrastiveLoss` is a function of the potentials
:math:`f, g`, the row log-sum-exps :math:`\ell_i = \mathrm{LSE}_j(S_{ij} + g_j)` and a few
streamed row reductions of :math:`S + g` (:func:`otcl.ot.streaming_sinkhorn.row_reduce`), so no
n x m matrix is formed:

* cross-entropy, identity target: :math:`-\log\hat P_{i,p(i)} = \ell_i - (S_{i,p(i)} + g_{p(i)})`
  (the positive's score is one gather of two embeddings);
* cross-entropy, target :math:`T` (labels, domain blocks, custom):
  :math:`\ell_i - \sum_j T_{ij}(S_{ij} + g_j)`, one streamed weighted row sum;
* RINCE on :math:`\log(Kv)_{ij} = S_{ij} + g_j`: :math:`\mathrm{lp}_i = S_{i,p(i)} + g_{p(i)}` or
  :math:`\mathrm{LSE}_j(S_{ij} + g_j + \log T_{ij})`, and :math:`\ell_i`;
* IOT's uniformity over the negatives :math:`\mathcal N`: with :math:`L = \mathrm{LSE}_i(f_i +
  \ell_i)` (log total mass), :math:`L_- = \mathrm{LSE}_i(f_i + \mathrm{LSE}_{j\in\mathcal N_i}
  (S_{ij} + g_j))`, :math:`c = |\mathcal N|`, :math:`\Sigma = \sum_{\mathcal N}\log P =
  \sum_i |\mathcal N_i| f_i + \sum_i \sum_{j \in \mathcal N_i}(S_{ij} + g_j)`:
  :math:`\log m = L_- - L - \log c` and the penalty :math:`m(c\log m - \Sigma + cL)`.

Autograd composes these vector formulas with the streamed backwards of the solve and of the
row reductions. Targets are given per tile (:class:`TargetTiles`): labels are expanded tile by
tile from the (N,) classes; a dense ``target=`` tensor (domain blocks, custom plans) is sliced.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Protocol, cast

import torch

from .._validation import flat_negatives
from ..ot.distributed import Shard
from ..ot.geometry import Geometry
from ..ot.problem import Problem
from ..ot.streaming import StreamingGeometry, streaming_pair_scores
from ..ot.streaming_sinkhorn import StreamingOutput, row_reduce, streaming_solve
from .divergences import rince_rows, row_mean
from .solve_parts import symmetric_gauge, warm_start
from .targets import prepare_target

__all__ = [
    "StreamableLoss",
    "TargetTiles",
    "check_streamable",
    "solve_direction",
    "streaming_forward",
    "streaming_loss_terms",
    "streaming_options",
    "streaming_target",
    "symmetric_gauge",
]


class StreamableLoss(Protocol):
    """What the streaming path reads of an :class:`~otcl.losses.OTContrastiveLoss`: its
    options and the parts it shares with the dense path (typing only; the loss module imports
    this one, so it is not imported back)."""

    temperature: float
    layout: str
    similarity: str
    constraint: str
    iters: int
    q: float
    lam: float
    symmetric: bool
    grad: str
    domain: str
    backward: str
    tol: float
    self_pair: str
    clip_min: float | None
    geometry: str

    def problem(self, n: int, m: int, device: torch.device | None = None) -> Problem:
        """The coupling problem of an (n, m) score matrix."""
        ...

    def shard(self) -> Shard | None:
        """This rank's share of the global batch, or None."""
        ...

    def streaming_terms(self) -> dict[str, float] | None:
        """The weights of the loss terms on a streaming geometry, or None."""
        ...

    def _check_call(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        negatives: torch.Tensor | None,
        shard: Shard | None = None,
    ) -> None: ...


class TargetTiles:
    """A row-normalised (n, m) target plan handed out one row tile at a time.

    Either from labels (same class = positive, self-pairs excluded, extra columns zero; the
    tile is built on demand) or from a dense (n, m) tensor (sliced).
    """

    dense: torch.Tensor | None
    dtype: torch.dtype
    m: int
    layout: str
    # from labels only: the (n_rows,) classes, this rank's rows, their classes and positives
    y: torch.Tensor
    rows: torch.Tensor
    y_rows: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        geom: StreamingGeometry,
        *,
        labels: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.dense = dense
        self.dtype = dtype
        self.m = geom.shape[1]
        self.layout = geom.layout
        if labels is not None:
            y = torch.cat([labels, labels]) if geom.layout == "simclr" else labels
            y = y.to(geom.x.device)
            rows = torch.arange(y.numel(), device=y.device) if geom.rows is None else geom.rows
            self.y, self.rows = y, rows
            self.y_rows = y[rows]
            _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
            own = counts[inverse[rows]] - (1 if geom.layout == "simclr" else 0)
            self.count = own.to(dtype)

    def block(self, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, m) rows ``r0:r1`` of the row-normalised target."""
        if self.dense is not None:
            return self.dense[r0:r1]
        own = self.y.numel()
        t = torch.zeros(r1 - r0, self.m, dtype=self.dtype, device=self.y.device)
        t[:, :own] = (self.y_rows[r0:r1].unsqueeze(1) == self.y.unsqueeze(0)).to(self.dtype)
        if self.layout == "simclr":
            t[torch.arange(r1 - r0, device=t.device), self.rows[r0:r1]] = 0.0
        return t.div_(self.count[r0:r1].unsqueeze(-1))

    def log_block(self, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, m) log of the target tile (``-inf`` off its support)."""
        t = self.block(r0, r1)
        return torch.where(t > 0, t.log(), float("-inf"))


def streaming_target(
    geom: StreamingGeometry,
    labels: torch.Tensor | None,
    target: torch.Tensor | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[TargetTiles | None, torch.Tensor | None]:
    """The streaming twin of :func:`~otcl.losses.targets.prepare_target`: ``(None, pos)`` for
    the identity target, else ``(TargetTiles, None)``; the same checks and messages."""
    n, m = geom.shape
    stand_in = SimpleNamespace(
        n_pairs=geom.n_pairs,
        layout=geom.layout,
        scores=torch.empty((0, m), device=geom.x.device),
        n_rows=geom.n_rows,
        rows=geom.rows,
        pos=None,
    )
    if labels is not None and target is None:
        # the checks only (an empty label set would build nothing)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
            raise ValueError(
                f"labels: expected a 1-D tensor of length N={geom.n_pairs}, got {shape}"
            )
        if labels.numel() != geom.n_pairs:
            raise ValueError(
                f"labels: expected a 1-D tensor of length N={geom.n_pairs}, got "
                f"{tuple(labels.shape)}"
            )
        if labels.is_floating_point():
            raise ValueError(f"labels: expected integer class labels, got dtype {labels.dtype}")
        return TargetTiles(geom, labels=labels, dtype=dtype), None
    if labels is None and target is None:
        return None, geom.pos
    # the stand-in carries every attribute prepare_target reads of a Geometry (duck-typed)
    view = cast(Geometry, stand_in)
    dense, _ = prepare_target(view, labels, target, dtype)  # checks, normalises, shards
    return TargetTiles(geom, dense=dense, dtype=dtype), None


def _negatives_tile(out: StreamingOutput, target: TargetTiles | None, pos: torch.Tensor | None):
    """(r0, r1) -> bool tile of the negatives: coupled pairs, neither positive nor target."""
    spec, m = out.spec, out.g.shape[-1]
    device = out.g.device

    def tile(r0: int, r1: int) -> torch.Tensor:
        ex = spec.excluded(r0, r1, m, device)
        keep = torch.ones(r1 - r0, m, dtype=torch.bool, device=device) if ex is None else ~ex
        if target is None:
            assert pos is not None  # the identity target comes with its positives
            keep[torch.arange(r1 - r0, device=device), pos[r0:r1]] = False
        else:
            keep &= target.block(r0, r1) <= 0
        return keep

    return tile


def _uniformity(
    out: StreamingOutput,
    target: TargetTiles | None,
    pos: torch.Tensor | None,
    detach_mean: bool,
) -> torch.Tensor:
    """IOT's uniformity penalty of the streamed plan (this rank's share when sharded)."""
    geom, shard, g = out.geometry, out.shard, out.g
    wide = torch.float64
    neg = _negatives_tile(out, target, pos)

    def all_rows(x: torch.Tensor) -> torch.Tensor:
        return x if shard is None else shard.sum(x)

    def log_mask(r0: int, r1: int) -> torch.Tensor:
        return torch.where(neg(r0, r1), 0.0, float("-inf")).to(g.dtype)

    def mask(r0: int, r1: int) -> torch.Tensor:
        return neg(r0, r1).to(g.dtype)

    n = out.f.shape[-1]
    deg = torch.cat([neg(r0, r1).sum(-1) for r0, r1 in out.spec.blocks(n)]).to(wide)
    count = all_rows(deg.sum())
    if not bool(count > 0):  # a target that covers every pair: no negatives, the penalty is 0
        return g.new_zeros(())
    f64 = out.f.to(wide)
    neg_lse = row_reduce(geom, g, weight=log_mask, spec=out.spec).to(wide)  # LSE_{j in N_i}
    neg_sum = row_reduce(geom, g, weight=mask, kind="sum", spec=out.spec).to(wide)
    row_mass, neg_mass = f64 + out.row_lse.to(wide), f64 + neg_lse
    if shard is None:
        log_total, log_neg = torch.logsumexp(row_mass, 0), torch.logsumexp(neg_mass, 0)
    else:
        log_total = shard.logsumexp_all(row_mass.unsqueeze(-1))
        log_neg = shard.logsumexp_all(neg_mass.unsqueeze(-1))
    neg_lp = all_rows((deg * f64).sum() + neg_sum.sum())  # sum of log P over the negatives
    has = count > 0
    log_neg = torch.where(has, log_neg, torch.zeros_like(log_neg))
    log_m = torch.where(has, log_neg - log_total - count.clamp_min(1).log(), 0.0)
    if detach_mean:
        log_m = log_m.detach()
    pen = torch.where(has, log_m.exp() * (count * log_m - neg_lp + count * log_total), 0.0)
    pen = pen.to(g.dtype)
    return pen if shard is None else shard.share(pen)


def streaming_loss_terms(
    out: StreamingOutput,
    target: TargetTiles | None,
    pos: torch.Tensor | None,
    terms: Mapping[str, float],
    *,
    q: float = 0.6,
    lam: float = 0.01,
    detach_mean: bool = False,
) -> torch.Tensor:
    r"""The weighted sum of a direction's loss terms from a streamed solve.

    Args:
        out: the :class:`~otcl.ot.streaming_sinkhorn.StreamingOutput` of the direction.
        target, pos: :func:`streaming_target`'s.
        terms: weight of each term: ``"ce"`` (cross-entropy of the row-normalised plan),
            ``"rince"`` (RINCE on :math:`Kv`), ``"uniformity"`` (IOT's penalty).
        q, lam: the RINCE parameters; detach_mean: the uniformity's.
    Returns:
        scalar (this rank's share when sharded).
    """
    geom, g, lse = out.geometry, out.g, out.row_lse
    unknown = sorted(set(terms) - {"ce", "rince", "uniformity"})
    if unknown:
        raise ValueError(f"terms: unknown term(s) {', '.join(unknown)}")
    total: torch.Tensor | float = 0.0
    log_pos = None
    if target is None and ("ce" in terms or "rince" in terms):
        log_pos = geom.positive_scores().to(g.dtype) + g[pos]
    if terms.get("ce"):
        if target is None:
            assert log_pos is not None
            row = lse - log_pos
        else:
            row = lse - row_reduce(geom, g, weight=target.block, kind="sum", spec=out.spec)
        total = total + terms["ce"] * row_mean(row, out.rows_total)
    if terms.get("rince"):
        lp = log_pos
        if target is not None:
            lp = row_reduce(geom, g, weight=target.log_block, spec=out.spec)
        assert lp is not None
        value = rince_rows(lp, lse, q, lam, rows_total=out.rows_total, shard=out.shard)
        total = total + terms["rince"] * value
    if terms.get("uniformity"):
        total = total + terms["uniformity"] * _uniformity(out, target, pos, detach_mean)
    if not isinstance(total, torch.Tensor):  # no term: still the 0.0 it started as
        return g.new_zeros(())
    return total


def streaming_options(loss: StreamableLoss, tile_size: int) -> dict[str, Any]:
    """The options of a loss's streaming geometry (:func:`~otcl.ot.streaming_pair_scores`
    without the embeddings, negatives and shard)."""
    return dict(
        temperature=loss.temperature,
        tile_size=tile_size,
        layout=loss.layout,
        similarity_kind=loss.similarity,
        clip_min=loss.clip_min,
    )


def solve_direction(loss: StreamableLoss, geom: StreamingGeometry) -> StreamingOutput:
    """The model plan of one direction under an :class:`~otcl.losses.OTContrastiveLoss`'s
    options (the streamed twin of its ``solve``: the same problem, warm start and gauge)."""
    n, m = geom.n_rows, geom.shape[1]
    device = geom.x.device
    problem = loss.problem(n, m, device)
    init = warm_start(problem, geom.shape[0], m, device)  # v = b if unbalanced, as dense
    out = streaming_solve(
        geom,
        problem,
        iters=loss.iters,
        tol=loss.tol or None,
        grad=loss.grad,
        domain=loss.domain,
        init=init,
    )
    if loss.grad == "implicit" and problem.constraint == "balanced":
        out = symmetric_gauge(out)
    return out


def streaming_forward(
    loss: StreamableLoss,
    z1: torch.Tensor,
    z2: torch.Tensor,
    labels: torch.Tensor | None,
    target: torch.Tensor | None,
    negatives: torch.Tensor | None,
    *,
    tile_size: int,
    terms: Mapping[str, float],
) -> torch.Tensor:
    """:meth:`OTContrastiveLoss.forward <otcl.losses.OTContrastiveLoss.forward>` on a streaming
    geometry: the same checks, layouts, targets, symmetric cross directions and sharding."""
    shard = loss.shard()
    loss._check_call(z1, z2, negatives, shard)
    negatives = flat_negatives(negatives)
    if shard is not None and isinstance(labels, torch.Tensor) and labels.dim() == 1:
        labels = shard.gather_constant(labels)  # the global batch's classes
    options = streaming_options(loss, tile_size)
    geo = streaming_pair_scores(z1, z2, negatives=negatives, shard=shard, **options)
    dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
    extra: dict[str, Any] = dict(
        q=loss.q, lam=loss.lam, detach_mean=bool(getattr(loss, "detach_mean", False))
    )

    def direction(geom: StreamingGeometry, tgt, pos) -> torch.Tensor:
        return streaming_loss_terms(solve_direction(loss, geom), tgt, pos, terms, **extra)

    tgt, pos = streaming_target(geo, labels, target, dtype)
    value = direction(geo, tgt, pos)
    if loss.layout == "cross" and loss.symmetric:
        rev = (
            geo.transposed()
            if shard is None
            else streaming_pair_scores(z2, z1, shard=shard, **options)
        )
        target_t = None if target is None else target[:, : geo.n_pairs].transpose(0, 1)
        tgt_t, pos_t = streaming_target(rev, labels, target_t, dtype)
        value = 0.5 * (value + direction(rev, tgt_t, pos_t))
    return value if shard is None else shard.total(value)


def check_streamable(loss: StreamableLoss) -> None:
    """Refuse, in one line (``ValueError``), an option of ``loss`` that its streaming geometry
    cannot serve (``self_pair="max_cost"``, ``backward="autograd"``, terms without a streamed
    form)."""
    how = f"geometry={loss.geometry!r}"
    if loss.layout == "simclr" and loss.self_pair == "max_cost":
        raise ValueError(
            f"self_pair: {how} cannot serve self_pair='max_cost' (the self-pair's score is "
            "the batch's lowest, a reduction over every tile before the first); use "
            "self_pair='mask' or geometry='dense'"
        )
    iterative = loss.constraint in ("balanced", "unbalanced")
    if iterative and loss.grad == "unrolled" and loss.backward == "autograd":
        raise ValueError(
            f"backward: {how} cannot serve backward='autograd' (autograd through the "
            "iterations keeps every iteration's n x m matrices); use backward='fused'"
        )
    if loss.streaming_terms() is None:
        raise ValueError(
            f"geometry: {type(loss).__name__} cannot stream: it overrides the loss terms "
            f"(divergence_value / extra_terms) without a streamed form (streaming_terms); "
            "use geometry='dense'"
        )
