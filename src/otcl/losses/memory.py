r"""A memory bank: a fixed-size FIFO queue of past embeddings, fed to a loss as ``negatives=``.

The negatives of a step are the batch's own plus the last ``size`` embeddings of earlier steps
(MoCo's queue; lightly's ``MemoryBankModule``; pytorch-metric-learning's ``CrossBatchMemory``)::

    bank = otcl.losses.MemoryBank(size=4096, dim=128)
    loss = loss_fn(z1, z2, negatives=bank())   # None while the bank is empty
    bank.update(z2)                            # after the loss: a batch is never its own negative

The queue is a pair of buffers (saved in ``state_dict``, moved by ``.to()``), never part of the
autograd graph (:meth:`MemoryBank.update` stores detached copies). Under ``torch.distributed``
the bank enqueues the global batch (all ranks' embeddings, in rank order), so every rank holds
the same queue and 2 processes behave as 1 process with the global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_bool, check_int_at_least
from ..ot.distributed import Shard, current_shard

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    r"""A fixed-size FIFO queue of embeddings (K, d), oldest first, for ``negatives=``.

    Args:
        size: the number of embeddings kept (K at most), >= 1.
        dim: their dimension d.
        gather_distributed: under ``torch.distributed`` with several ranks, enqueue the global
            batch (the ranks' embeddings in rank order, one all-gather per update): every rank
            holds the same queue, the one a single process would hold with the global batch.
            False: each rank keeps a queue of its own batches.
        dtype: the queue's dtype (float32); embeddings are cast to it.

    Call:
        ``bank()`` or ``bank.negatives()``: the (K, d) queue, oldest first, K = the number of
        embeddings stored so far (at most ``size``); None while empty, which every otcl loss
        takes as "no extra negatives". ``bank(share=True)``: this rank's contiguous share of the
        queue, for a loss with ``gather_distributed=True``, which gathers the ranks' negatives
        again (so each stored embedding is a candidate once); the whole queue in one process.

    Example:
        >>> import torch, otcl
        >>> bank = otcl.losses.MemoryBank(size=6, dim=4)
        >>> loss_fn = otcl.losses.build("infonce")
        >>> for _ in range(3):
        ...     z1, z2 = torch.randn(4, 4), torch.randn(4, 4)
        ...     loss = loss_fn(z1, z2, negatives=bank())
        ...     bank.update(z2)
        >>> bank().shape
        torch.Size([6, 4])
    """

    queue: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        gather_distributed: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.size: int = check_int_at_least("size", size, 1)
        self.dim: int = check_int_at_least("dim", dim, 1)
        self.gather_distributed: bool = check_bool("gather_distributed", gather_distributed)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating-point dtype, got {dtype}")
        self.register_buffer("queue", torch.zeros(self.size, self.dim, dtype=dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows stored

    def _shard(self) -> Shard | None:
        return current_shard() if self.gather_distributed else None

    def __len__(self) -> int:
        """The number of embeddings stored (at most ``size``)."""
        return int(self.filled)

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        """Enqueue a batch ``z`` (B, d) (detached), dropping the oldest entries beyond ``size``.

        Under ``torch.distributed`` (``gather_distributed``) every rank must call it with a
        batch of the same shape: the global batch is enqueued, in rank order.
        """
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z: expected a tensor of shape (B, {self.dim}), got {got}")
        z = z.detach().to(self.queue.dtype)
        shard = self._shard()
        if shard is not None:
            shard.check_same_shape("z", z)
            z = shard.gather_constant(z)
        z = z.to(self.queue.device)
        rows = min(z.shape[0], self.size)
        z = z[z.shape[0] - rows :]  # a batch larger than the queue: its last rows
        idx = (self.ptr + torch.arange(rows, device=z.device)) % self.size
        self.queue.index_copy_(0, idx, z)
        self.ptr.copy_((self.ptr + rows) % self.size)
        self.filled.copy_((self.filled + rows).clamp(max=self.size))

    def negatives(self, share: bool = False) -> torch.Tensor | None:
        """The queue (K, d), oldest first; None while empty.

        Args:
            share: this rank's contiguous share of the queue (see the class docstring); the
                queue must then split evenly over the ranks.
        """
        filled = int(self.filled)
        if filled == 0:
            return None
        if filled < self.size:
            out = self.queue[:filled]
        else:
            ptr = int(self.ptr)
            out = torch.cat([self.queue[ptr:], self.queue[:ptr]]) if ptr else self.queue
        shard = self._shard() if share else None
        if shard is not None:
            if filled % shard.world:
                raise ValueError(
                    f"share: expected a queue that splits evenly over {shard.world} ranks, got "
                    f"{filled} embeddings (choose a size divisible by the world size)"
                )
            k = filled // shard.world
            out = out[shard.rank * k : (shard.rank + 1) * k]
        return out.clone()

    def forward(self, share: bool = False) -> torch.Tensor | None:
        """:meth:`negatives`: the queue for a loss's ``negatives=``."""
        return self.negatives(share)

    def reset(self) -> None:
        """Empty the queue."""
        self.queue.zero_()
        self.ptr.zero_()
        self.filled.zero_()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, gather_distributed={self.gather_distributed}"
