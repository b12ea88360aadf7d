r"""Couplings over the global batch of ``torch.distributed``: each rank keeps its own rows.

With ``gather_distributed=True`` (every otcl loss; lightly's name) a loss under
``torchrun`` / DistributedDataParallel couples the **global** batch, not each GPU's local batch
(the official GCA code does the latter). The global score matrix is never formed on one rank:

* every rank gathers the other ranks' embeddings with gradients (:func:`gather`) and keeps its
  **own rows** against **all columns**: :math:`S_r \in \mathbb{R}^{n_r \times m}`;
* a row update of Sinkhorn (:math:`f_r \leftarrow \tau_a(\log a_r - \mathrm{LSE}_j(S_r + g))`) is
  local; a column update needs a sum over all rows, which is one all-reduce of an m-vector
  (exp domain: :math:`K^\top u = \sum_r K_r^\top u_r`; log domain: two, the column maximum and
  the sum of :math:`e^{S + f - \max}`);
* the backward passes (the hand-written unrolled one, autograd's, and the implicit one's
  conjugate gradient) all-reduce the adjoints of the shared column variables in the same way;
* a loss is a sum over rows (divided by the global row count) plus terms of global scalars;
  each rank returns the **global value** and back-propagates only **its own share**, so that,
  with the all-gather's backward summing the columns' gradients over ranks, every rank's
  embeddings receive exactly the gradient of the global loss (tested against one process on the
  concatenated batch, float64, 1e-8).

Cost per Sinkhorn iteration: one or two all-reduces of a vector of the global column count, the
same in the backward; memory per rank :math:`n_r \times m`.

With DistributedDataParallel, whose gradient hook **averages** parameter gradients over ranks,
multiply the loss by the world size before ``backward`` to get the gradient of the global loss
(otcl's trainer does; see ``docs/distributed.md``).

All collectives are PyTorch's (``torch.distributed``), on any backend that has all-reduce and
all-gather (gloo, NCCL); the gradients of replicated inputs (marginals, warm starts) are
returned as shares whose sum over ranks is the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Shard", "current_shard", "gather", "all_reduce_sum", "all_to_all_blocks"]


def _backend_scatters(group: Any) -> bool:
    # A combined backend reads e.g. "cpu:gloo,cuda:nccl": reduce-scatter is there for CUDA tensors.
    backend = str(dist.get_backend(group))
    return "nccl" in backend or "xccl" in backend


# torch 2.13 renamed the single-tensor collectives (the old names warn); older releases only
# have the old names.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 (equal sizes); the backward sums each slice's gradient over ranks."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        world = dist.get_world_size(group)
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        group = ctx.group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        grad = grad.contiguous()
        if _backend_scatters(group):
            out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
            _reduce_scatter_single(out, grad, group=group)
            return out, None
        total = grad.clone()
        dist.all_reduce(total, group=group)
        n = grad.shape[0] // world
        return total[rank * n : (rank + 1) * n], None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward sums the upstream gradients over ranks (the output is shared)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=ctx.group)
        return out, None


class _AllToAll(torch.autograd.Function):
    """Exchange equal blocks: rank r sends ``blocks[s]`` to rank s and receives rank s's
    ``blocks[r]``; the backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, group, *blocks):
        ctx.group = group
        out = [torch.empty_like(b) for b in blocks]
        dist.all_to_all(out, [b.contiguous() for b in blocks], group=group)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        grads = [torch.zeros(()) if g is None else g for g in grads]
        out = [torch.empty_like(g) for g in grads]
        dist.all_to_all(out, [g.contiguous() for g in grads], group=ctx.group)
        return (None, *out)


def gather(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """All ranks' ``x`` stacked along dim 0 (rank order), differentiable.

    Every rank must pass the same shape. The gradient of rank r's slice is the sum over ranks of
    the gradients of that slice.
    """
    return _Gather.apply(x, group)


def all_reduce_sum(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The sum of ``x`` over ranks, differentiable (the backward sums the gradients)."""
    return _AllReduceSum.apply(x, group)


def all_to_all_blocks(blocks: list[torch.Tensor], group: Any = None) -> list[torch.Tensor]:
    """Differentiable all-to-all of equal-shaped blocks (``blocks[s]`` goes to rank s)."""
    return list(_AllToAll.apply(group, *blocks))


@dataclass(frozen=True, eq=False)
class Shard:
    """This process's share of a row-sharded problem: its rank in a ``torch.distributed`` group.

    Attributes:
        group: the process group (None: the default group).
        rank: this process's rank in it.
        world: the number of ranks.
    """

    group: Any
    rank: int
    world: int

    # -- differentiable reductions over the rows of all ranks -------------------------------
    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of per-rank partial sums (e.g. column sums over the local rows)."""
        if torch.is_grad_enabled() and x.requires_grad:
            return all_reduce_sum(x, self.group)
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=self.group)
        return out

    def max(self, x: torch.Tensor) -> torch.Tensor:
        """Max over ranks (no gradient)."""
        out = x.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out

    def logsumexp_rows(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathrm{LSE}` over the rows (dim -2) of all ranks: (..., n_r, m) -> (..., m).

        Two all-reduces of the m-vector: the column maximum (no gradient: the value does not
        depend on it) and the sum of :math:`e^{x - \max}` (differentiable).
        """
        top = self.max(x.detach().amax(-2))
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return self.sum((x - top.unsqueeze(-2)).exp().sum(-2)).log() + top

    def logsumexp_all(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathrm{LSE}` over every entry of every rank's (..., n_r, m) block -> (...,)."""
        flat = x.flatten(-2)
        top = self.max(flat.detach().amax(-1))
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return self.sum((flat - top.unsqueeze(-1)).exp().sum(-1)).log() + top

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' ``x`` along dim 0, differentiable (:func:`gather`)."""
        return gather(x, self.group)

    def gather_constant(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' ``x`` along dim 0, without gradient (labels, raw inputs)."""
        out = x.new_empty((self.world * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x.contiguous(), group=self.group)
        return out

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``x`` on every rank (no gradient)."""
        out = x.clone()
        dist.broadcast(out, src=dist.get_global_rank(self.group, src) if self.group else src)
        return out

    def share(self, value: torch.Tensor) -> torch.Tensor:
        """A value every rank computes identically from shared quantities, as this rank's share:
        ``value / world``, so that the shares of all ranks sum to it."""
        return value / self.world

    def total(self, partial: torch.Tensor) -> torch.Tensor:
        """The global value of per-rank shares with this rank's share's gradient.

        The value is the sum of the shares over ranks (identical on every rank); back-propagating
        it differentiates only this rank's share -- every rank does the same, so the gradients
        they produce sum to the global one.
        """
        whole = self.sum(partial.detach())
        return partial + (whole - partial.detach())

    def check_same_shape(self, name: str, x: torch.Tensor) -> None:
        """Every rank must pass the same shape (one small all-gather)."""
        shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
        shapes = self.gather_constant(shape.unsqueeze(0))
        if not bool((shapes == shape).all()):
            raise ValueError(
                f"{name}: gather_distributed needs the same shape on every rank, got "
                f"{[tuple(s) for s in shapes.tolist()]}"
            )


def current_shard(group: Any = None) -> Shard | None:
    """This process's :class:`Shard` of ``group`` when ``torch.distributed`` runs with more than
    one rank, else None (a single process: nothing to gather)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size(group)
    if world == 1:
        return None
    return Shard(group, dist.get_rank(group), world)
