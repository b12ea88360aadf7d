"""Training under ``torchrun``: the process group, one outcome for every rank, DDP.

``torchrun --nproc-per-node N`` (and multi-node ``--nnodes M --rdzv-endpoint HOST:PORT``)
starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in their environment. :func:`init_from_env` joins that process group with
PyTorch's own machinery (``torch.distributed.init_process_group``, backend ``gloo`` on a
machine without CUDA, ``cpu:gloo,cuda:nccl`` with CUDA: NCCL for CUDA tensors, gloo for the
small CPU messages below); :class:`Session` is this process's place in it. The shared run
machinery (:class:`otcl.pipelines.engine.trainer.EpochTrainer`) does the rest for every pipeline:
DistributedDataParallel (:func:`wrap_model`), the global batch split over the ranks, rank-0-only
files, one checkpoint, and signals that stop every rank at the same step.

**One outcome for every rank.** A setting that is wrong on one rank (or on all of them) must end
every rank with one message, never leave the others waiting in a collective. Every block that
may fail before a collective runs inside :func:`agreed`: on leaving it the ranks exchange their
errors (one ``all_gather_object``), and if any rank failed, all raise -- the lowest failing rank
its own exception, the others :class:`PeerFailure` (which the command line turns into the same
exit status without printing anything). All these exchanges are the same collective, so they
pair up in order whatever the code position each rank reached; an exception that already went
through an exchange is marked and never exchanged again.

Without ``torchrun`` (no process group) every function here is a no-op: :func:`current` is None,
:func:`agreed` just runs its block, :func:`broadcast` returns its argument.
"""

from __future__ import annotations

import datetime
import functools
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Session",
    "PeerFailure",
    "launched",
    "init_from_env",
    "current",
    "shutdown",
    "agreed",
    "broadcast",
    "gather_objects",
    "main_then_broadcast",
    "local_main_first",
    "is_main",
    "main_log",
    "has_batchnorm",
    "shard_batch",
    "sync_batchnorm",
    "wrap_model",
    "DistributedModel",
]

T = TypeVar("T")

#: the environment variables torchrun (and ``torch.distributed.launch``) sets in every worker
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_AGREED = "_otcl_agreed"  # attribute marking an exception every rank already knows about


class PeerFailure(Exception):
    """Another rank failed; this one stops too (that rank printed the message).

    Attributes:
        rank: the lowest rank that failed; ``message``: its one-line message; ``status``: the
            exit status of the command line (2 for a ``ValueError``, 1 otherwise).
    """

    rank: int
    message: str
    status: int

    def __init__(self, rank: int, message: str, status: int) -> None:
        super().__init__(f"rank {rank} failed: {message}")
        self.rank, self.message, self.status = rank, message, status
        setattr(self, _AGREED, True)


@dataclass(frozen=True)
class Session:
    """This process's place in the process group torchrun started.

    Attributes:
        rank, world: global rank and number of processes (``WORLD_SIZE``).
        local_rank, local_world: rank and number of processes on this node (``LOCAL_RANK``,
            ``LOCAL_WORLD_SIZE``): the CUDA device of the rank, and who downloads data first.
    """

    rank: int
    world: int
    local_rank: int
    local_world: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` (made current).

        Raises:
            ValueError: an explicit ``cuda:N`` with several processes on the node, or fewer
                GPUs than processes on the node.
        """
        if device.type != "cuda":
            return device
        if device.index is not None and self.local_world > 1:
            raise ValueError(
                f"train.device: {str(device)!r} names one GPU, but torchrun starts "
                f"{self.local_world} processes on this node (each takes cuda:LOCAL_RANK); "
                "use --device cuda"
            )
        if device.index is None:
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise ValueError(
                    f"train.device: {self.local_world} processes on this node but {count} "
                    "GPU(s); start at most one process per GPU (--nproc-per-node)"
                )
            device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return device


def launched() -> bool:
    """Whether this process was started by torchrun (its environment variables are set)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def current() -> Session | None:
    """This process's :class:`Session` when a process group is initialised, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return Session(rank, world, local_rank, local_world)


def init_from_env() -> Session | None:
    """Join torchrun's process group (``env://``) once; None when not started by torchrun.

    The backend is ``gloo`` without CUDA and ``cpu:gloo,cuda:nccl`` with it (NCCL carries the
    CUDA tensors: gradients, gathered embeddings; gloo the CPU ones: errors, stop flags,
    checkpoint state). A process group initialised before (by the caller) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched():
        return None
    if not dist.is_available():  # pragma: no cover - builds without torch.distributed
        raise ValueError("torchrun: this PyTorch build has no torch.distributed")
    cuda = torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return current()


def shutdown() -> None:
    """Leave the process group (the end of a command that joined it).

    The ranks first meet at a barrier (at most a minute; a rank that died is not waited for),
    so that no rank tears its group down -- closing its connections -- while another still
    talks to it, and the model wrappers (DDP's reducer) and pending work are released while
    the group still exists. Tearing down in another order let a rank abort at exit now and
    then ("terminate called without an active exception", torchrun exit status 1) after the
    run had finished.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        except Exception:  # noqa: BLE001 - a rank died or timed out: leave anyway
            pass
    gc.collect()
    dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 and in a process without a process group."""
    s = current()
    return s is None or s.is_main


def main_log(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0 (and without a process group), a log that says nothing elsewhere."""
    return log if is_main() else _quiet


def _quiet(line: str) -> None:
    """The log of ranks other than 0."""


def _several() -> Session | None:
    s = current()
    return s if s is not None and s.world > 1 else None


def _describe(e: BaseException) -> tuple[str, int]:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg, 2 if isinstance(e, ValueError) else 1


def _exchange(payload: Any, error: BaseException | None) -> list[Any]:
    """Every rank's ``payload`` (one ``all_gather_object``); raises on every rank if any rank
    passed an ``error``: the lowest failing rank re-raises its own, the others PeerFailure."""
    s = _several()
    if s is None:
        if error is not None:
            raise error
        return [payload]
    mine = None if error is None else _describe(error)
    out: list[Any] = [None] * s.world
    dist.all_gather_object(out, (mine, payload))
    failed = [(r, e) for r, (e, _) in enumerate(out) if e is not None]
    if failed:
        rank, (message, status) = failed[0]
        if rank == s.rank and error is not None:
            setattr(error, _AGREED, True)
            raise error
        raise PeerFailure(rank, message, status)
    return [p for _, p in out]


@contextmanager
def agreed() -> Iterator[None]:
    """Run a block on every rank; if it fails on any rank, it fails on every rank.

    On leaving the block the ranks exchange their outcome (see the module docstring). An
    exception already exchanged (or raised where the ranks cannot meet, e.g. inside a training
    step) passes through untouched; ``KeyboardInterrupt`` and ``SystemExit`` are not exchanged.
    Without a process group (or with one rank) it only runs the block.
    """
    try:
        yield
    except Exception as e:
        if getattr(e, _AGREED, False) or _several() is None:
            raise
        _exchange(None, e)
        raise  # pragma: no cover - _exchange always raises here
    _exchange(None, None)


def mark_agreed(e: BaseException) -> BaseException:
    """Mark ``e`` as not to be exchanged (every rank raises it, or the others cannot listen)."""
    setattr(e, _AGREED, True)
    return e


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable) in rank order, as one agreement point."""
    return _exchange(obj, None)


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (``broadcast_object_list``).

    Call it right after an agreement point (:func:`agreed`), with nothing that can fail in
    between: every rank is then known to reach it.
    """
    if _several() is None:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def main_then_broadcast(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 (e.g. reading a file only it can see), its result on every rank;
    an error on rank 0 is raised on every rank."""
    s = _several()
    if s is None:
        return fn()
    result = None
    with agreed():
        if s.is_main:
            result = fn()
    return broadcast(result)  # type: ignore[arg-type]


def local_main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, the first process of each node first (e.g. a download to a
    shared cache: the others then find it in place)."""
    s = _several()
    if s is None:
        return fn()
    result = None
    with agreed():
        if s.local_rank == 0:
            result = fn()
    with agreed():
        if s.local_rank != 0:
            result = fn()
    return result  # type: ignore[return-value]


def any_signal(received: int | None) -> int:
    """The largest signal number any rank received (0: none), for every rank (one all-reduce
    of a CPU integer over gloo): the step boundary where one rank stops is where all stop."""
    s = _several()
    if s is None:
        return int(received or 0)
    flag = torch.tensor([int(received or 0)], dtype=torch.int64, device=_small_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def _small_device() -> torch.device:
    """Where small control messages go: the CPU (gloo), unless the process group was set up
    by the caller with a GPU-only backend (NCCL), which needs them on the current GPU."""
    backend = str(dist.get_backend())
    if "gloo" in backend or "mpi" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (in place; a no-op in one process)."""
    s = _several()
    if s is not None:
        dist.all_reduce(x)
        x.div_(s.world)
    return x


# -- the model -----------------------------------------------------------------------------
def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds BatchNorm layers (their statistics are per batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def shard_batch(batch_size: int, world: int, rank: int) -> tuple[int, slice]:
    """The global batch split evenly over ``world`` processes: rows per rank, and the rows of
    rank ``rank``.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``world`` (naming the nearest one).
    """
    b, w = batch_size, world
    if b % w:
        lower = b - b % w
        raise ValueError(
            f"train.batch_size: {b} is the global batch, split evenly over the {w} "
            f"processes of torchrun; use a multiple of {w} (e.g. {lower if lower else w})"
        )
    return b // w, slice(rank * (b // w), (rank + 1) * (b // w))


def sync_batchnorm(
    model: nn.Module, device: torch.device, world: int, log: Callable[[str], None], tag: str
) -> nn.Module:
    """``model`` with SyncBatchNorm on CUDA (BatchNorm statistics over the global batch); on
    another device the model as it is, with a warning: BatchNorm stays per process there."""
    if world == 1 or not has_batchnorm(model):
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log(f"{tag}: BatchNorm -> SyncBatchNorm (statistics of the global batch)")
        return model
    log(
        f"{tag}: warning: BatchNorm statistics are each process's own on {device.type} "
        "(SyncBatchNorm needs CUDA): the run differs from one process; a model without "
        "BatchNorm trains identically"
    )
    return model


class _Methods(nn.Module):
    """The model with any of its methods reachable through one ``forward`` (DDP's)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, method)(*args, **kwargs)


class DistributedModel:
    """What a pipeline calls instead of the model under DDP.

    ``dm(x)`` and ``dm.encode(x)`` (any method the model's class defines beyond ``nn.Module``'s)
    run through DistributedDataParallel's ``forward``, so that its gradient all-reduce is armed
    whatever the pipeline calls; other attributes are the model's own. ``forwards`` counts the
    calls (the trainer checks that a step made at least one).
    """

    def __init__(self, model: nn.Module, ddp: nn.Module) -> None:
        self._model = model
        self._ddp = ddp
        self.forwards: int = 0

    @property
    def module(self) -> nn.Module:
        """The wrapped model."""
        return self._model

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.forwards += 1
        return self._ddp(method, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("forward", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "forward":
            return functools.partial(self._call, "forward")
        attr = getattr(self._model, name)
        if callable(attr) and not isinstance(attr, nn.Module) and not hasattr(nn.Module, name):
            return functools.partial(self._call, name)
        return attr


def wrap_model(model: nn.Module, device: torch.device, compile: bool = False) -> DistributedModel:
    """DistributedDataParallel around ``model`` (already on ``device``), as a
    :class:`DistributedModel`. DDP broadcasts rank 0's parameters and buffers at construction;
    its backward hook averages the gradients over ranks (one bucketed all-reduce per step)."""
    ddp: nn.Module = nn.parallel.DistributedDataParallel(
        _Methods(model), device_ids=[device.index] if device.type == "cuda" else None
    )
    if compile:
        ddp = torch.compile(ddp)  # type: ignore[assignment]
    return DistributedModel(model, ddp)
