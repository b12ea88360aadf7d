"""Training an image encoder on two augmented views per image: the image pipelines' common part.

* :func:`build_model` and :func:`check_model` -- the encoder of a ``model`` section
  (:class:`~otcl.pipelines.imaging.config.ModelConfig`) and its checks;
* :func:`build_augment` and :func:`check_augment` -- the augmentation of a ``data`` section's
  ``crop_scale``, ``flip_p``, ``jitter``, ``jitter_p``, ``gray_p``, ``rotate`` and its checks;
* :class:`TwoViewTrainer` -- the engine's :class:`~otcl.pipelines.engine.trainer.EpochTrainer`
  whose step sees two augmented views of a batch of device-resident images;
* :func:`load_image_run` -- a run's config, trained encoder, data and preprocessing back;
* :func:`check_eval_writable` and :func:`frozen_features` -- what an evaluation of a run does
  before its probes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..engine.checkpoint import open_run, restore_model
from ..engine.runtime import amp_dtype, pick_device
from ..engine.trainer import EpochTrainer
from ..files import check_writable
from ..sources.backbones import ARCHS, NORMS, Encoder, build_encoder
from ..sources.features import split_features
from ..sources.images import Augment

__all__ = [
    "TwoViewTrainer",
    "build_augment",
    "build_model",
    "check_augment",
    "check_eval_writable",
    "check_model",
    "frozen_features",
    "load_image_run",
]

C = TypeVar("C")
D = TypeVar("D")


def build_model(m: Any, in_channels: int) -> Encoder:
    """The encoder (backbone + projection head) of the ``model`` section ``m`` for images of
    ``in_channels`` channels (``width`` 32 where it is unset)."""
    return build_encoder(
        m.arch,
        in_channels,
        width=m.width or 32,
        head_hidden=m.head_hidden,
        head_out=m.head_out,
        head_bn=m.head_bn,
        norm=m.norm,
    )


def check_model(m: Any, also: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` naming the first setting of the ``model`` section ``m`` that cannot
    build (``also``: architectures accepted besides :data:`~otcl.pipelines.sources.backbones.ARCHS`)."""
    if m.arch not in (*ARCHS, *also):
        raise ValueError(f"model.arch: expected one of {', '.join(ARCHS)}, got {m.arch!r}")
    if m.norm not in NORMS:
        raise ValueError(f"model.norm: expected one of {', '.join(NORMS)}, got {m.norm!r}")
    for name, low in (("width", 1), ("head_hidden", 0), ("head_out", 1)):
        v = getattr(m, name)
        if v is not None and v < low:
            raise ValueError(f"model.{name}: expected an integer >= {low}, got {v!r}")


def build_augment(d: Any, size: int | None, data: Any, **extra: Any) -> Augment:
    """The augmentation of the ``data`` section ``d`` to ``size`` (None: the input's), normalised
    with ``data``'s ``mean`` and ``std`` (``.plain``: the evaluation preprocessing); ``extra``:
    further :class:`~otcl.pipelines.sources.images.Augment` arguments."""
    return Augment(
        size,
        crop_scale=d.crop_scale,
        flip_p=d.flip_p,
        jitter=d.jitter,
        jitter_p=d.jitter_p,
        gray_p=d.gray_p,
        rotate=d.rotate,
        mean=data.mean,
        std=data.std,
        **extra,
    )


class _StandIn:
    """A dataset's shape and statistics when only the augmentation settings are checked."""

    image_shape = (3, 16, 16)
    mean = (0.5,)
    std = (0.5,)


def check_augment(cfg: Any, make_augment: Callable[[Any, Any], Augment]) -> None:
    """Raise ``ValueError`` naming the ``data`` setting for which ``make_augment(cfg, data)``
    cannot build the augmentation (before any data loads)."""
    try:  # the augmentation checks its own arguments; name them as settings
        make_augment(cfg, _StandIn())
    except ValueError as err:
        raise ValueError(f"data.{err}") from None


class TwoViewTrainer(EpochTrainer):
    """An :class:`~otcl.pipelines.engine.trainer.EpochTrainer` whose step encodes two augmented
    views of a batch of images (``2 * batch_size`` views a step). A subclass's ``build`` sets
    :attr:`images` and :attr:`augment`, then calls :meth:`set_steps_per_epoch`."""

    throughput_unit: str = "views"
    volatile: tuple[str, ...] = (
        *EpochTrainer.volatile,
        "data.data_dir",  # the same dataset, moved
        "data.cache_dir",
        "eval",  # evaluation settings do not change the training
    )
    measures: tuple[str, ...] = ("eval",)  # ... but they change the numbers: not reused
    #: the training images on the device, uint8 (N, C, H, W)
    images: torch.Tensor
    augment: Augment

    def set_steps_per_epoch(self, name: str) -> None:
        """``steps_per_epoch``: the full batches of :attr:`images` (of the data set ``name``).

        Raises:
            ValueError: the batch size exceeds the images (never clamped silently: config.yaml
                must say what ran).
        """
        n = self.images.shape[0]
        if self.batch_size > n:
            raise ValueError(
                f"train.batch_size: {self.batch_size} is more than the {n} training images of "
                f"{name}; use --batch-size {n} or less"
            )
        self.steps_per_epoch: int = n // self.batch_size

    def two_views(self, x: torch.Tensor, shard: tuple[int, int] | None = None) -> torch.Tensor:
        """Both views of the images ``x``, stacked (2B, C, H, W), under the augmentation draws
        of the current global step (``shard``: this rank's rows of the global batch)."""
        gen = self.step_generator("augment")
        return torch.cat([self.augment(x, gen, shard), self.augment(x, gen, shard)])

    def items_per_step(self) -> int:
        return 2 * self.batch_size


def load_image_run(
    run_dir: str | Path,
    config_cls: type[C],
    resolve: Callable[[C], C],
    *,
    device: str,
    data: D | None,
    load_data: Callable[[C], D],
    make_model: Callable[[C, D], torch.nn.Module],
    make_augment: Callable[[C, D], Augment],
) -> tuple[C, Any, D, Augment, dict[str, Any]]:
    """A run's config, trained model (eval mode, on ``device``), data (``data``, else loaded)
    and preprocessing, and its checkpoint state."""
    cfg, st = open_run(run_dir, config_cls, resolve)
    if data is None:
        data = load_data(cfg)
    dev = pick_device(device)
    model = restore_model(make_model(cfg, data), st, run_dir, dev)
    aug = make_augment(cfg, data).to(dev)
    return cfg, model, data, aug, st


def check_eval_writable(run_dir: str | Path, name: str) -> None:
    """Raise ``ValueError`` when the run directory exists but ``name`` cannot be written in it
    (an evaluation fails before its data load, not after its probes)."""
    if Path(run_dir).is_dir():
        try:
            check_writable(run_dir)
        except OSError as e:
            raise ValueError(
                f"run: cannot write {name} in {str(run_dir)!r}: {e.strerror}"
            ) from None


def frozen_features(
    model: torch.nn.Module, data: Any, aug: Augment, cfg: Any, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``data``'s train and test images under the model (no augmentation:
    ``aug.plain``) in batches of ``eval.batch_size``, on the model's device under the run's
    ``train.amp``; ``kwargs`` go to :func:`~otcl.pipelines.sources.features.split_features`."""
    dev = next(model.parameters()).device
    return split_features(
        model,
        data,
        aug.plain,
        batch_size=cfg.eval.batch_size,
        device=dev,
        amp_dtype=amp_dtype(cfg.train.amp, dev),
        **kwargs,
    )
