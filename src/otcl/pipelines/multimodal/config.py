"""Configuration of the multimodal pipeline: sections, dataset presets, :func:`resolve`.

Every setting of ``otcl multimodal train`` / ``compare`` lives in :class:`MultimodalConfig`
(saved as ``config.yaml`` in each run). The generic machinery (files, ``section.key=value``
overrides, the shared ``loss`` / ``optim`` / ``train`` sections) is :mod:`otcl.pipelines.config`;
this module adds the ``data``, ``model``, ``objective`` and ``eval`` sections and the dataset
presets that fill the settings the user did not set (Adam is this pipeline's optimizer unless
set, as GMC's).

Loss defaults for this pipeline (applied by :func:`resolve` unless set): ``layout="cross"``
(an N x N modality-vs-modality score matrix, CLIP-style), ``temperature=0.3`` (GMC), and for
``dmm`` GMC's ramp offset ``warmup=12`` (margin 0.2 and lambda in [0.5, 1] are DMM's defaults).
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
    given,
    preset_for,
)
from .data import DATASETS
from .models import FUSIONS, IMAGE_ARCHS, SEQ_ARCHS
from .objectives import DMM_MIX, OBJECTIVES
from .robustness import MISSING

__all__ = [
    "MultimodalConfig",
    "DataConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "EvalConfig",
    "PRESETS",
    "LOSS_DEFAULTS",
    "PROBES",
    "resolve",
    "check",
]

PROBES = ("knn", "linear", "ridge")


@dataclass
class DataConfig(Section):
    """Which dataset and how it is read (see :mod:`otcl.pipelines.multimodal.data`).

    ``dataset``: ``digits`` (default, bundled), ``mnist``, ``cifar10``, ``cifar100``, ``svhn``,
    ``imagefolder`` (images cut into ``patches`` patch-modalities), ``movielens`` (``data_dir`` =
    the ml-100k folder), ``mosi`` / ``mosei`` (``data_dir`` = the processed pickle or its folder),
    ``npz`` (``data_dir`` = a file or a folder with train.npz / test.npz; ``modalities`` names the
    arrays, joined by ``+`` or ``,``).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    patches: int = 4
    max_train: int | None = None
    text: str = "hash"
    text_dim: int = 1024
    text_model: str | None = None
    modalities: str | None = None
    labels: str = "labels"
    test_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class ModelConfig(Section):
    """Encoders (one per modality) -> ``hidden`` -> shared head -> ``latent``; fusion."""

    hidden: int | None = None
    latent: int | None = None
    fusion: str = "mean"
    seq_arch: str = "gru"
    image_arch: str | None = None
    width: int = 16


@dataclass
class ObjectiveConfig(Section):
    """What is aligned: ``kind`` = ``joint`` (GMC), ``pairwise`` or ``both``."""

    kind: str = "joint"


@dataclass
class EvalConfig(Section):
    """Probe, missing modalities and noise (see :mod:`otcl.pipelines.multimodal.robustness`).

    ``probe``: ``knn`` (classes, default), ``linear`` (classes; trained once, on the joint
    representation of the training set with every modality present, and scored on every subset) or
    ``ridge`` (real-valued targets, default for them). ``every``: evaluate the full-modality
    probe every N epochs during training (0 = at the end only).
    """

    probe: str | None = None
    knn_k: int = 20
    knn_t: float = 0.1
    linear_epochs: int = 100
    linear_lr: float = 0.1
    ridge_alpha: float = 1.0
    missing: str = "drop"
    snr_db: tuple[float, ...] = (10.0, 0.0)
    batch_size: int = 1024
    every: int = 0


@dataclass
class MultimodalConfig(ConfigBase):
    """Everything that defines a multimodal run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    #: the shared optimizer settings with Adam as the default (GMC trains with Adam)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adam"))
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_IMAGES = {
    "model": {"hidden": 128, "latent": 64, "image_arch": "cnn"},
    "optim": {"lr": 1e-3, "weight_decay": 0.0},
    "train": {"epochs": 50, "batch_size": 256},
}
_VECTORS = {
    "model": {"hidden": 128, "latent": 64},
    "optim": {"lr": 1e-3, "weight_decay": 0.0},
    "train": {"epochs": 50, "batch_size": 128},
}

#: dataset -> settings used where the user set none. Adam with GMC's learning rate
#: (1e-3 at batch 128; ``optim.lr`` is per 128 samples); digits: 4 x 4 patches through an MLP,
#: 30 epochs and one CPU thread (tiny matrices: a second thread costs more than it gives, ~10x
#: on a loaded 2-core machine), so that ``otcl multimodal compare`` runs in minutes on a CPU;
#: MOSI/MOSEI: GMC's latent 60, 40 epochs, batch 128.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {
        "model": {"hidden": 64, "latent": 32, "image_arch": "mlp"},
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 30, "batch_size": 256, "threads": 1},
    },
    "mnist": _IMAGES,
    "cifar10": _IMAGES,
    "cifar100": _IMAGES,
    "svhn": _IMAGES,
    "imagefolder": _IMAGES,
    "movielens": _VECTORS,
    "mosi": {
        "model": {"hidden": 64, "latent": 60},
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 40, "batch_size": 128},
    },
    "npz": _VECTORS,
}
PRESETS["mosei"] = PRESETS["mosi"]

#: loss parameters this pipeline sets unless given (``dmm``: on the wrapper, the rest go to its
#: base through DMM's keyword forwarding)
LOSS_DEFAULTS: dict[str, Any] = {"layout": "cross", "temperature": 0.3}
DMM_DEFAULTS: dict[str, Any] = {"warmup": 12.0}


#: what every dataset's preset builds on
FALLBACK: Preset = {"model": {"image_arch": "cnn"}}


def resolve(cfg: MultimodalConfig) -> MultimodalConfig:
    """The settings the user did not set from the dataset preset, and the loss defaults under
    the user's loss parameters; returns a new config."""
    preset = preset_for(PRESETS, "data.dataset", cfg.data.dataset, DATASETS)
    params = {**LOSS_DEFAULTS, **(DMM_DEFAULTS if cfg.loss.name == "dmm" else {})}
    return apply_presets(cfg, FALLBACK, preset, {"loss": {"params": params}})


_IMAGE_SETS = ("digits", "mnist", "cifar10", "cifar100", "svhn", "imagefolder")
#: data settings -> the datasets they apply to
DATA_APPLIES: dict[str, tuple[str, ...]] = {
    "patches": _IMAGE_SETS,
    "max_train": _IMAGE_SETS,
    "download": _IMAGE_SETS,
    "text": ("movielens",),
    "text_dim": ("movielens",),
    "text_model": ("movielens",),
    "modalities": ("npz",),
    "labels": ("npz",),
    "test_fraction": ("movielens", "npz"),
    "split_seed": ("movielens", "npz"),
}


def check_applies(section: str, obj: Any, applies: dict[str, bool], why: str) -> None:
    """A setting the user gave where it does not apply is an error, whatever its value (never
    ignored; a saved run's settings are not "given", see :func:`otcl.pipelines.config.given`).

    Args:
        section: the section's name (``"data"``); obj: the section.
        applies: setting -> whether it applies here; why: the reason, completed by the name.
    """
    mine = given(obj)
    for name, ok in applies.items():
        if not ok and name in mine:
            raise ValueError(f"{section}.{name}: does not apply {why}; leave it unset")


def check(cfg: MultimodalConfig) -> None:
    """Raise ``ValueError`` naming the first invalid pipeline setting."""
    d = cfg.data
    check_applies(
        "data",
        d,
        {k: d.dataset in v for k, v in DATA_APPLIES.items()},
        f"to dataset {d.dataset!r}",
    )
    choices = (
        ("model.fusion", cfg.model.fusion, FUSIONS),
        ("model.seq_arch", cfg.model.seq_arch, SEQ_ARCHS),
        ("model.image_arch", cfg.model.image_arch, IMAGE_ARCHS),
        ("objective.kind", cfg.objective.kind, OBJECTIVES),
        ("loss.dmm_mix", cfg.loss.dmm_mix, DMM_MIX),
        ("eval.missing", cfg.eval.missing, MISSING),
        ("data.text", cfg.data.text, ("hash", "minilm")),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    if cfg.eval.probe is not None and cfg.eval.probe not in PROBES:
        raise ValueError(f"eval.probe: expected one of {', '.join(PROBES)}, got {cfg.eval.probe!r}")
    if "per_modality" in cfg.loss.params:
        raise ValueError(
            "loss.params.per_modality: does not apply to the multimodal pipeline (its DMM "
            "objective always mixes every modality on its own); leave it unset"
        )
    if cfg.train.compile:
        raise ValueError(
            "train.compile: not supported by the multimodal pipeline (its encoders are called "
            "one modality at a time, outside the compiled forward); leave it false"
        )
    e = cfg.eval
    if e.knn_k < 1 or not e.knn_t > 0:
        raise ValueError(f"eval: expected knn_k >= 1 and knn_t > 0, got {e.knn_k}, {e.knn_t}")
    if e.every < 0:
        raise ValueError(f"eval.every: expected an integer >= 0, got {e.every!r}")


def modality_names(spec: str | None) -> list[str] | None:
    """``"video+text"`` or ``"video,text"`` -> ``["video", "text"]`` (None: all arrays)."""
    if spec is None:
        return None
    names = [s.strip() for s in spec.replace(",", "+").split("+") if s.strip()]
    if len(names) < 2:
        raise ValueError(f"data.modalities: expected at least 2 names joined by +, got {spec!r}")
    return names
