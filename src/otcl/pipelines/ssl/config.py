"""Configuration of the self-supervised image pipeline: sections, dataset presets, :func:`resolve`.

Every setting of ``otcl train`` / ``otcl compare`` lives in :class:`Config`; the resolved config is
saved as ``config.yaml`` next to a run's checkpoints so ``otcl eval`` and ``--resume`` rebuild the
exact same run. Dataset presets (:data:`PRESETS`) fill in the settings that depend on the data
(model, augmentations, batch size, learning rate, epochs) unless the user set them explicitly
(:func:`otcl.pipelines.config.apply_presets`).
The generic machinery (files, overrides, the shared ``loss``/``optim``/``train`` sections) is
:mod:`otcl.pipelines.config`.
"""

from __future__ import annotations

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
from ..imaging.config import ModelConfig

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "ImageTrainConfig",
    "EvalConfig",
    "PRESETS",
    "resolve",
]


@dataclass
class DataConfig(Section):
    """Where the images come from and how they are augmented.

    ``dataset``: ``digits`` (scikit-learn's bundled 8x8 digits, no download), ``cifar10``,
    ``cifar100``, ``stl10``, ``svhn`` (torchvision) or ``imagefolder``. ``data_dir``: an ImageFolder
    directory (``train/<class>/*``, ``test/<class>/*``) or a ``.tar``/``.tar.gz`` of one, used
    instead of the torchvision download when given; for torchvision datasets without it, the
    download root. Augmentation fields left ``None`` take the dataset preset; random erasing
    (``erase_p``, ``erase_scale``, ``erase_ratio``) is off in every preset.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    skip_corrupt: bool = False
    image_size: int | None = None
    cache_dir: str | None = None
    unlabeled: bool = False
    crop_scale: tuple[float, float] | None = None
    flip_p: float | None = None
    jitter: tuple[float, float, float, float] | None = None
    jitter_p: float | None = None
    gray_p: float | None = None
    rotate: float | None = None
    erase_p: float | None = None
    erase_scale: tuple[float, float] | None = None
    erase_ratio: tuple[float, float] | None = None


@dataclass
class ImageTrainConfig(TrainConfig):
    """The shared training-loop settings plus ``channels_last`` (image tensors) and
    ``compile_loss`` (``torch.compile`` the loss too: every loss compiles into one graph without
    host syncs except with a solver tolerance and DMM's host-drawn mixing weight)."""

    channels_last: bool = True
    compile_loss: bool = False


@dataclass
class EvalConfig(Section):
    """kNN (InstDisc-style weighted votes) and the frozen linear probe."""

    knn_k: int | None = None  # preset: 200 (20 for the 1347-image digits)
    knn_t: float = 0.1
    knn_every: int = 0  # kNN monitor every N epochs during training (0 = at the end only)
    linear_epochs: int = 100
    linear_lr: float = 0.1
    linear_batch_size: int = 512
    linear_weight_decay: float = 0.0
    batch_size: int = 1024


@dataclass
class Config(ConfigBase):
    """Everything that defines a self-supervised image run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: ImageTrainConfig = field(default_factory=ImageTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# -- dataset presets -----------------------------------------------------------------------
#: random erasing is off in every preset; when turned on (``data.erase_p``), torchvision's ranges
_NO_ERASE = {"erase_p": 0.0, "erase_scale": (0.02, 0.33), "erase_ratio": (0.3, 3.3)}

_CIFAR = {
    "data": {
        "crop_scale": (0.08, 1.0),
        "flip_p": 0.5,
        "jitter": (0.4, 0.4, 0.4, 0.1),
        "jitter_p": 0.8,
        "gray_p": 0.2,
        "rotate": 0.0,
        **_NO_ERASE,
    },
    "model": {"arch": "resnet18", "head_hidden": 512, "head_out": 128},
    "optim": {"lr": 0.06, "weight_decay": 5e-4},
    "train": {"epochs": 200, "batch_size": 512},
    "eval": {"knn_k": 200},
}

#: dataset -> settings used where the user set none (lightly's CIFAR SimCLR recipe for the image
#: datasets; a small CNN and gentle augmentations for the 8x8 digits).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {
        "data": {
            "crop_scale": (0.5, 1.0),
            "flip_p": 0.0,
            "jitter": (0.4, 0.4, 0.0, 0.0),
            "jitter_p": 0.8,
            "gray_p": 0.0,
            "rotate": 15.0,
            **_NO_ERASE,
        },
        "model": {"arch": "small-cnn", "width": 16, "head_hidden": 128, "head_out": 32},
        "optim": {"lr": 0.1, "weight_decay": 5e-4},
        "train": {"epochs": 30, "batch_size": 256},
        "eval": {"knn_k": 20},
    },
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "svhn": {**_CIFAR, "data": {**_CIFAR["data"], "flip_p": 0.0}},
    "stl10": _CIFAR,
    "imagefolder": _CIFAR,
}


#: what every dataset's preset builds on
FALLBACK: Preset = {"model": {"width": 32}}


def resolve(cfg: Config) -> Config:
    """The settings the user did not set from the dataset preset; returns a new config."""
    return apply_presets(cfg, FALLBACK, preset_for(PRESETS, "data.dataset", cfg.data.dataset))
