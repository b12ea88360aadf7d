"""How an :class:`~otcl.pipelines.engine.trainer.EpochTrainer` is put together once its run
directory is taken: :func:`assemble`.

In order: the checkpoint to resume (rank 0 reads it and refuses one that would change what the
run is, :func:`check_resume`, before any data loads; every rank gets it), the device, threads,
autocast and seeds (:mod:`.runtime`), the pipeline's ``build``, the steps per epoch, the global
batch split over the ranks, the memory bank (:mod:`.memory`), DistributedDataParallel or
``torch.compile``, the optimizer, schedule and AMP scaler, the counters, and the restore of the
checkpoint. Every setting a rank refuses is refused by every rank (:func:`.distributed.agreed`).
"""

from __future__ import annotations

from typing import Any

import torch

from . import checkpoint, fingerprint, identity, optim, runtime
from .distributed import agreed, broadcast, mean_over_ranks, sync_batchnorm, wrap_model
from .memory import build_bank
from .rundir import check_start
from .runlog import RunningLoss
from .selection import Selector

__all__ = ["assemble", "check_resume"]


def assemble(tr: Any, resume: bool, extend: bool) -> None:
    """Build trainer ``tr`` into its run directory ``tr.out`` and restore its checkpoint with
    ``resume`` (``extend``: ``train.epochs`` may grow).

    Raises:
        ValueError: a setting is invalid, or the checkpoint's run differs from this one.
        TypeError: the pipeline's ``build()`` left ``model``, ``loss_fn`` or
            ``steps_per_epoch`` unset.
    """
    t = tr.cfg.train
    st = None
    tr.data_fingerprint = {}
    with agreed():  # rank 0 alone sees the run directory (it may be on its node only)
        if tr.is_main:
            ckpt = check_start(tr.out, resume)
            st = checkpoint.load_checkpoint(ckpt) if ckpt is not None else None
            tr.data_fingerprint = fingerprint.config_fingerprint(tr.cfg)
            if st is not None:
                check_resume(tr, st, extend)  # before the data loads
    st = broadcast(st)  # every rank restores rank 0's checkpoint
    with agreed():
        tr.device = runtime.pick_device(t.device)
        if tr.session is not None:
            tr.device = tr.session.device(tr.device)  # cuda -> cuda:LOCAL_RANK
        tr.amp_dtype = runtime.amp_dtype(t.amp, tr.device)
        runtime.configure_torch(t, tr.device)
        tr.batch_size = int(t.batch_size)
        runtime.seed_everything(t.seed)
        tr.build()
        for attr in ("model", "loss_fn", "steps_per_epoch"):
            if not hasattr(tr, attr):
                raise TypeError(f"{type(tr).__name__}.build() must set self.{attr}")
        rule = tr.selection_rule()
        tr.selector = Selector(rule) if rule is not None else None
        steps = int(tr.steps_per_epoch)
        if t.max_steps_per_epoch:
            steps = min(steps, int(t.max_steps_per_epoch))
        if steps < 1:
            raise ValueError(f"train.batch_size: {tr.batch_size} leaves no step in an epoch")
        tr.steps_per_epoch = steps
        tr.total_steps = steps * int(t.epochs)
        tr._shard_batch()
        tr._loss_global = tr.world > 1 and tr.loss_is_global()
        tr.loss_scale = tr.world if tr._loss_global else 1
        size = getattr(getattr(tr.cfg, "loss", None), "memory_bank", 0)
        if size:
            tr.memory_bank = build_bank(
                tr.loss_fn,
                tr.cfg.loss.name,
                size,
                tr.embedding_dim(),
                tr.world,
                tr.device,
            )
        if tr.session is not None:
            tr.model = sync_batchnorm(tr.model, tr.device, tr.world, tr.log, tr.tag)
    tr.forward_model = tr.model
    tr._dm = None
    if tr.session is not None:  # right after the agreement: every rank is here
        tr._dm = wrap_model(tr.model, tr.device, compile=bool(t.compile))
        tr.forward_model = tr._dm
        tr.log(
            f"{tr.tag}: torchrun, {tr.world} process(es), backend "
            f"{torch.distributed.get_backend()}, {tr.device.type}; global batch "
            f"{tr.batch_size} = {tr.world} x {tr.local_batch_size}"
        )
    elif t.compile:
        tr.forward_model = torch.compile(tr.model)
    tr.optimizer = tr.build_optimizer()
    tr.scheduler = optim.build_scheduler(tr.optimizer, tr.lr_factor)
    tr.scaler = runtime.grad_scaler(tr.device, tr.amp_dtype)
    tr.epoch = 0  # epochs completed
    tr.step_in_epoch = 0  # steps of the current epoch completed
    tr.global_step = 0
    tr.epoch_seconds = 0.0  # time spent in the current epoch before a resume
    own = tr.world > 1 and not tr._loss_global  # each rank's own loss: their mean
    tr.running_loss = RunningLoss(tr.device, mean_over_ranks if own else None)
    tr.resumed = st is not None
    if st is not None:
        with agreed():
            tr.restore(st)


def check_resume(tr: Any, st: dict[str, Any], extend: bool) -> None:
    """Refuse settings that would change what the saved run ``st`` is (``train.epochs`` only
    grows, and only with ``extend``): :func:`.identity.check_resume` with the trainer's
    ``volatile``, and a data fingerprint that still matches (:mod:`.fingerprint`)."""
    saved = tr.resolve_config(type(tr.cfg).from_dict(st["config"])).to_dict()
    identity.check_resume(
        saved,
        tr.cfg.to_dict(),
        tr.volatile,
        extend=extend,
        run_dir=str(tr.out),
        log=tr.log,
    )
    fingerprint.check_fingerprint(
        st.get(fingerprint.KEY),
        tr.data_fingerprint,
        str(tr.out),
        "train it again into a new --out",
    )
