"""Configuration of the domain pipeline: data with domains, the encoder, the target, evaluation.

``data.dataset``:

* ``styles`` (default) -- the offline stand-in: four style domains (photo, sketch, cartoon,
  painting; :mod:`otcl.pipelines.sources.images.styles`) made from disjoint subsets of a source:
  scikit-learn's digits (upscaled to ``data.image_size``, 16 by default), or, when
  ``data.data_dir`` is given, an ImageFolder copy (``train/<class>/*``, ``test/<class>/*``, or a
  ``.tar.gz`` of one, e.g. the CIFAR-10 JPEG copy) whose images are pooled first;
  ``data.per_domain`` caps each domain's images;
* ``folder`` -- a PACS / Office-Home / DomainNet layout ``<root>/<domain>/<class>/<image>`` at
  ``data.data_dir`` (:mod:`otcl.pipelines.sources.images.domains`).

``target``: the domain-block target plan of the training loss,
``otcl.losses.domain_target(domains, alpha, beta, scale=...)`` of each batch's domains;
``alpha = beta = 0`` is the plain identity target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import (
    ConfigBase,
    LossConfig,
    OptimConfig,
    Preset,
    Section,
    TrainConfig,
    apply_presets,
    preset_for,
)
from ..imaging.config import ModelConfig, check_probes

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TargetConfig",
    "EvalConfig",
    "PRESETS",
    "DATASETS",
    "resolve",
    "check",
]

DATASETS = ("styles", "folder")


@dataclass
class DataConfig(Section):
    """Where the images with domains come from, their split, and the augmentations."""

    dataset: str = "styles"
    data_dir: str | None = None
    image_size: int | None = None
    per_domain: int | None = None
    test_fraction: float = 0.25
    split_seed: int = 0
    skip_corrupt: bool = False
    cache_dir: str | None = None
    crop_scale: tuple[float, float] | None = None
    flip_p: float | None = None
    jitter: tuple[float, float, float, float] | None = None
    jitter_p: float | None = None
    gray_p: float | None = None
    rotate: float | None = None


@dataclass
class TargetConfig(Section):
    """The domain-block target: ``alpha`` same-domain, ``beta`` cross-domain weight (>= 0),
    ``scale`` ``block`` (each weight is its block's mass next to the positive's 1) or ``pair``."""

    alpha: float = 0.0
    beta: float = 0.0
    scale: str = "block"


@dataclass
class EvalConfig(Section):
    """Probes of the frozen backbone: class kNN and linear, domain linear, leave-one-domain-out."""

    knn_k: int = 20
    knn_t: float = 0.1
    linear_epochs: int = 100
    linear_lr: float = 0.1
    linear_batch_size: int = 256
    linear_weight_decay: float = 0.0
    batch_size: int = 1024


@dataclass
class Config(ConfigBase):
    """Everything that defines a run of the domain pipeline."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_SMALL: dict[str, dict[str, Any]] = {
    "data": {
        "image_size": 16,
        "crop_scale": (0.5, 1.0),
        "flip_p": 0.0,
        "jitter": (0.4, 0.4, 0.4, 0.1),
        "jitter_p": 0.8,
        "gray_p": 0.2,
        "rotate": 10.0,
    },
    "model": {"arch": "small-cnn", "width": 16, "head_hidden": 128, "head_out": 32},
    "optim": {"lr": 0.1, "weight_decay": 5e-4},
    "train": {"epochs": 20, "batch_size": 256},
}

_CIFAR: dict[str, dict[str, Any]] = {
    "data": {
        "crop_scale": (0.2, 1.0),
        "flip_p": 0.5,
        "jitter": (0.4, 0.4, 0.4, 0.1),
        "jitter_p": 0.8,
        "gray_p": 0.2,
        "rotate": 0.0,
    },
    "model": {"arch": "resnet18", "head_hidden": 512, "head_out": 128},
    "optim": {"lr": 0.06, "weight_decay": 5e-4},
    "train": {"epochs": 100, "batch_size": 256},
}

#: dataset -> the settings the user did not set; ``styles`` from a ``data_dir`` (real photos)
#: and ``folder`` take the ResNet-18 recipe, the digit stand-in a small CNN.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "styles": _SMALL,
    "styles-images": _CIFAR,
    "folder": {**_CIFAR, "data": {**_CIFAR["data"], "image_size": 64}},
}

FALLBACK: Preset = {"model": {"width": 32}}


def resolve(cfg: Config) -> Config:
    """The settings the user did not set from the dataset preset; returns a new config."""
    key = cfg.data.dataset
    if key == "styles" and cfg.data.data_dir is not None:
        key = "styles-images"
    return apply_presets(cfg, FALLBACK, preset_for(PRESETS, "data.dataset", key, DATASETS))


def check(cfg: Config) -> None:
    """Raise ``ValueError`` naming the first setting of ``data``, ``target`` or ``eval`` that
    cannot run (before any data loads); the model and augmentation are checked by the trainer."""
    d, t = cfg.data, cfg.target
    if d.dataset not in DATASETS:
        raise ValueError(f"data.dataset: expected one of {', '.join(DATASETS)}, got {d.dataset!r}")
    if d.dataset == "folder" and d.data_dir is None:
        raise ValueError(
            "data.data_dir: dataset 'folder' needs a <root>/<domain>/<class>/<image> directory "
            "or archive (--data-dir), got none"
        )
    if d.image_size is not None and d.image_size < 4:
        raise ValueError(f"data.image_size: expected an integer >= 4 or none, got {d.image_size}")
    if d.per_domain is not None and d.per_domain < 8:
        raise ValueError(f"data.per_domain: expected an integer >= 8 or none, got {d.per_domain}")
    if not 0.0 < d.test_fraction < 1.0:
        raise ValueError(f"data.test_fraction: expected a number in (0, 1), got {d.test_fraction}")
    from ...losses.targets import SCALES

    for name in ("alpha", "beta"):
        v = getattr(t, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
            raise ValueError(f"target.{name}: expected a finite number >= 0, got {v!r}")
    if t.scale not in SCALES:
        raise ValueError(f"target.scale: expected one of {', '.join(SCALES)}, got {t.scale!r}")
    if (t.alpha or t.beta) and cfg.loss.name not in _TARGET_LOSSES:
        raise ValueError(
            f"target: loss {cfg.loss.name!r} takes no target plan; use one of "
            f"{', '.join(_TARGET_LOSSES)} (or target.alpha = target.beta = 0)"
        )
    check_probes(cfg.eval)


#: the losses whose target plan is a design knob here (the OT contrastive family)
_TARGET_LOSSES = ("infonce", "iot", "iot-uni", "gca-ince", "gca-rince", "gca-uot", "rince", "ot")
