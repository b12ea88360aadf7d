"""Self-supervised (SimCLR-style) training of an image encoder with any otcl loss.

:class:`SSLTrainer` is the engine of ``otcl train``: an :class:`otcl.pipelines.engine.trainer.EpochTrainer`
(run directory, checkpoints, exact resume, metrics log, progress -- see there) whose step is

    two augmented views of a batch -> encoder under autocast -> loss in float32 -> SGD step.

Speed on a GPU: the decoded uint8 dataset is resident on the device, both views of a batch are
augmented there in one batched call (:class:`otcl.pipelines.sources.images.Augment`), the encoder runs in
channels_last under bf16 autocast (optionally ``torch.compile``-d), the loss is computed in
float32, and the host reads the loss back only every ``log_every`` steps. The loss is built with
``check_inputs=False`` unless ``loss.params`` sets it: its per-call NaN/Inf check reads a value
back to the host (a sync every step), and the loop's own finiteness check of the running loss,
every ``log_every`` steps, already stops a diverging run.

Reproducibility: the batch order of epoch ``e`` and the augmentations of global step ``s`` are
drawn from generators seeded by ``(seed, e)`` and ``(seed, s)``, and every other RNG state is in
the checkpoint. The run directory also receives ``eval.json`` from ``otcl eval``.

Under ``torchrun`` each rank takes its rows of the global batch and the augmentation parameters
of those rows (drawn for the whole batch), so a run equals the one-process run up to float
rounding when the model has no BatchNorm (``model.norm=group`` or ``none`` with
``model.head_bn=false``; on CUDA, BatchNorm becomes SyncBatchNorm).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..engine.distributed import local_main_first
from ..engine.rundir import METRICS, SUMMARY
from ..imaging.config import check_probes
from ..imaging.trainer import (
    TwoViewTrainer,
    build_augment,
    build_model,
    check_augment,
    check_model,
    load_image_run,
)
from ..sources.backbones import Encoder, ProjectionHead
from ..sources.features import split_features
from ..sources.images import Augment, ImageData, load_dataset
from ..sources.probes import knn_accuracy
from .config import Config, resolve

__all__ = ["SSLTrainer", "load_run", "load_data", "make_augment", "make_model"]


def make_augment(cfg: Config, data: ImageData) -> Augment:
    """The run's augmentation (and, as ``.plain``, its evaluation preprocessing)."""
    d = cfg.data
    erase = {"erase_p": d.erase_p, "erase_scale": d.erase_scale, "erase_ratio": d.erase_ratio}
    return build_augment(d, d.image_size, data, **erase)


#: ``model.arch`` of a run trained with a backbone of the user's (``train(cfg, model=...)``)
CUSTOM = "custom"


def make_model(cfg: Config, data: ImageData, backbone: torch.nn.Module | None = None) -> Encoder:
    """The run's encoder (backbone + projection head) for ``data``'s image shape.

    ``backbone``: a module of your own, images (B, C, H, W) -> features (B, D), used instead of
    ``model.arch`` (which reads ``custom``); the projection head is built on top of it from
    ``model.head_*`` (D from its ``feature_dim`` attribute, else from one forward pass).
    """
    m = cfg.model
    if backbone is not None or m.arch == CUSTOM:
        if backbone is None:
            raise ValueError(
                "model.arch: the run was trained with a backbone of your own; pass it again "
                "(Run.load(path, model=backbone) or train(cfg, model=backbone))"
            )
        dim = getattr(backbone, "feature_dim", None)
        if dim is None:
            was = backbone.training
            backbone.eval()
            with torch.no_grad():
                dim = backbone(torch.zeros(2, *data.image_shape)).shape[-1]
            backbone.train(was)
        head = ProjectionHead(int(dim), int(m.head_hidden or 0), int(m.head_out or 128), m.head_bn)
        return Encoder(backbone, head)
    return build_model(m, data.image_shape[0])


def load_data(cfg: Config, progress: bool = True) -> ImageData:
    """The dataset named by ``cfg.data``."""
    d = cfg.data
    return load_dataset(
        d.dataset,
        d.data_dir,
        download=d.download,
        skip_corrupt=d.skip_corrupt,
        image_size=d.image_size,
        cache_dir=d.cache_dir,
        unlabeled=d.unlabeled,
        progress=progress,
    )


def check_image_config(cfg: Config) -> None:
    """Raise ``ValueError`` naming the first invalid ``data``, ``model`` or ``eval`` setting
    (before any data is loaded)."""
    d, e = cfg.data, cfg.eval
    if d.image_size is not None and d.image_size < 1:
        raise ValueError(f"data.image_size: expected an integer >= 1 or none, got {d.image_size}")
    check_augment(cfg, make_augment)
    check_model(cfg.model, also=(CUSTOM,))
    check_probes(e)
    if e.knn_every < 0:
        raise ValueError(f"eval.knn_every: expected an integer >= 0, got {e.knn_every!r}")
    if not e.linear_weight_decay >= 0:
        raise ValueError(
            f"eval.linear_weight_decay: expected a number >= 0, got {e.linear_weight_decay!r}"
        )


class SSLTrainer(TwoViewTrainer):
    """Trains an image encoder on two augmented views per image; :meth:`fit` -> summary.

    Args:
        cfg: the configuration (dataset presets are applied here).
        out: run directory (default ``cfg.train.out``, else
            ``runs/ssl/<method>-<dataset>-s<seed>``, the method ``<loss>`` or ``<base>+dmm``).
        data: an already loaded dataset (``otcl compare`` loads it once for all runs), or an
            :class:`~otcl.pipelines.sources.images.ImageData` of your own.
        model: a backbone of your own (see :func:`make_model`; ``model.arch`` becomes
            ``custom``); a resumed custom run needs it again.
        resume: continue from ``out/checkpoint.pt``.
        extend: with ``resume``, allow ``train.epochs`` to grow.
        log: where progress lines go (standard error by default).
    """

    pipeline: str | None = "ssl"

    outputs: tuple[str, ...] = (METRICS, SUMMARY, "eval.json")
    volatile: tuple[str, ...] = (
        *TwoViewTrainer.volatile,
        "train.channels_last",
        "train.compile_loss",
        "data.download",
    )
    supports_memory_bank: bool = True  # loss.memory_bank: the second views' projections are queued
    cfg: Config
    data: ImageData
    #: what a step calls: the loss, compiled with ``train.compile_loss`` (``loss_fn`` stays
    #: the module: its state, hooks and parameters)
    loss_call: Callable[..., torch.Tensor]

    def __init__(
        self, cfg: Config, out: str | Path | None = None, *, model: Any = None, **kw: Any
    ) -> None:
        self.given_model = model
        if model is not None:
            cfg = copy.deepcopy(cfg)
            cfg.model.arch = CUSTOM
        super().__init__(cfg, out, **kw)

    # -- hooks -----------------------------------------------------------------------------
    def build_loss(self) -> torch.nn.Module:
        """The configured loss, with ``check_inputs=False`` unless ``loss.params`` sets it (no
        host sync per step; the loop checks the running loss every ``log_every`` steps)."""
        from ...losses import build, parameters

        params = self.loss_params(self.cfg.loss.params)  # the global batch under torchrun
        if "check_inputs" in parameters(self.cfg.loss.name):
            params.setdefault("check_inputs", False)
        return build(self.cfg.loss.name, **params).to(self.device)

    def resolve_config(self, cfg: Config) -> Config:
        return resolve(cfg)

    def check_config(self) -> None:
        super().check_config()
        check_image_config(self.cfg)

    def default_out(self) -> str:
        from .compare import method_name

        c = self.cfg
        return f"runs/ssl/{method_name(c)}-{c.data.dataset}-s{c.train.seed}"

    def build(self) -> None:
        t = self.cfg.train
        self.data = self.given_data
        if self.data is None:  # under torchrun: each node's first process downloads first
            self.data = local_main_first(
                lambda: load_data(self.cfg, progress=t.progress and self.is_main)
            )
        self.images: torch.Tensor = self.data.ssl_images().to(self.device)
        self.augment: Augment = make_augment(self.cfg, self.data).to(self.device)
        self.model: torch.nn.Module = make_model(self.cfg, self.data, self.given_model).to(
            self.device
        )
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.loss_fn: torch.nn.Module = self.build_loss()
        self.loss_call = torch.compile(self.loss_fn) if t.compile_loss else self.loss_fn
        self.set_steps_per_epoch(self.data.name)

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        return self.loss_on(self.batch_indices(self.images.shape[0], epoch, step))

    def loss_on(self, idx: torch.Tensor) -> torch.Tensor:
        """The loss of the images ``idx`` under the augmentations of the current global step
        (under torchrun: ``idx`` is this rank's rows of the global batch, and the augmentation
        draws are those of the global batch, so each image gets the draw of one process)."""
        x = self.images[idx.to(self.device, non_blocking=True)]
        shard = None if self.world == 1 else (self.local_rows.start, self.batch_size)
        views = self.two_views(x, shard)
        if self.cfg.train.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        b = x.shape[0]
        extra: dict[str, Any] = {}
        with self.autocast():
            z = self.forward_model(views)
            if self.cfg.loss.dmm_mix == "input":  # the loss's hook: {} for every loss but DMM
                prepare: Any = self.loss_fn.prepare_inputs
                extra = prepare(self.forward_model, views[:b], views[b:])
        z = z.float()
        negatives = self.bank_negatives()
        if negatives is not None:
            extra["negatives"] = negatives
        self.enqueue(z[b:])  # stored after the optimizer step (a no-op without a bank)
        return self.loss_call(z[:b], z[b:], **extra)

    def embedding_dim(self) -> int:
        """The projection's width (the last linear layer of the head)."""
        linear = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        return int(linear[-1].out_features)

    def evaluate(self, final: bool) -> dict[str, float]:
        every = self.cfg.eval.knn_every
        if final or (every and self.epoch % every == 0):
            return {"knn": self.knn()}
        return {}

    def summarize(self, summary: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        head = {"loss_name": c.loss.name, "dataset": c.data.dataset}
        return {**head, **summary, "knn_seconds": summary["eval_seconds"]}

    # -- evaluation ------------------------------------------------------------------------
    def knn(self) -> float:
        """kNN accuracy (k, t from the config) of the current backbone on the test split."""
        ftr, fte = split_features(
            self.model,
            self.data,
            self.augment.plain,
            batch_size=self.cfg.eval.batch_size,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.cfg.train.channels_last,
        )
        e = self.cfg.eval
        k: int = e.knn_k  # type: ignore[assignment]  # checked (the preset's where unset)
        return knn_accuracy(
            ftr, self.data.train_y, fte, self.data.test_y, self.data.num_classes, k, e.knn_t
        )


def load_run(
    run_dir: str | Path,
    device: str = "auto",
    data: ImageData | None = None,
    backbone: torch.nn.Module | None = None,
) -> tuple[Config, Encoder, ImageData, Augment, dict[str, Any]]:
    """Rebuild a run's config, trained encoder (eval mode), dataset and preprocessing
    (``backbone``: a run trained with a backbone of your own needs it again)."""
    return load_image_run(
        run_dir,
        Config,
        resolve,
        device=device,
        data=data,
        load_data=lambda c: load_data(c, progress=c.train.progress),
        make_model=lambda c, d: make_model(c, d, backbone),
        make_augment=make_augment,
    )
