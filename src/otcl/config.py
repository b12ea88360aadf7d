"""Run configuration: one nested dataclass, loadable from YAML/TOML, overridable by ``a.b=value``.

Every setting of ``otcl train`` / ``otcl compare`` lives in :class:`Config`; the resolved config is
saved as ``config.yaml`` next to a run's checkpoints so ``otcl eval`` and ``--resume`` rebuild the
exact same run. Dataset presets (:data:`PRESETS`) fill in the settings that depend on the data
(model, augmentations, batch size, learning rate, epochs) unless the user set them explicitly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "EvalConfig",
    "PRESETS",
    "load_config",
    "save_config",
    "apply_overrides",
    "parse_value",
    "resolve",
]


@dataclass
class DataConfig:
    """Where the images come from and how they are augmented.

    ``dataset``: ``digits`` (scikit-learn's bundled 8x8 digits, no download), ``cifar10``,
    ``cifar100``, ``stl10``, ``svhn`` (torchvision) or ``imagefolder``. ``data_dir``: an ImageFolder
    directory (``train/<class>/*``, ``test/<class>/*``) or a ``.tar``/``.tar.gz`` of one, used
    instead of the torchvision download when given; for torchvision datasets without it, the
    download root. Augmentation fields left ``None`` take the dataset preset.
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


@dataclass
class ModelConfig:
    """Encoder = backbone + projection head (``head_hidden`` 0 = linear head)."""

    arch: str | None = None  # "small-cnn" | "resnet18" (preset)
    width: int | None = None  # small-cnn channels
    head_hidden: int | None = None
    head_out: int | None = None
    head_bn: bool = True


@dataclass
class LossConfig:
    """A named otcl loss and its parameters (``otcl.losses.build(name, **params)``)."""

    name: str = "infonce"
    params: dict[str, Any] = field(default_factory=dict)
    dmm_mix: str = "input"  # for ``dmm``: "input" (re-encode mixed images) or "embedding"


@dataclass
class OptimConfig:
    """SGD with momentum; ``lr`` is per 128 samples (scaled by batch_size / 128)."""

    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    nesterov: bool = False
    warmup_epochs: float = 0.0
    schedule: str = "cosine"  # "cosine" | "constant"


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # "auto" (bf16 on cuda, off on cpu) | "bf16" | "fp16" | "none"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 10
    log_every: int = 20
    progress: bool = True
    out: str | None = None
    max_steps_per_epoch: int | None = None  # truncate epochs (smoke tests)
    threads: int | None = None


@dataclass
class EvalConfig:
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
class Config:
    """Everything that defines a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = cls()
        _merge(cfg, d, prefix="")
        return cfg


# -- dataset presets -----------------------------------------------------------------------
_CIFAR = {
    "data": {
        "crop_scale": (0.08, 1.0),
        "flip_p": 0.5,
        "jitter": (0.4, 0.4, 0.4, 0.1),
        "jitter_p": 0.8,
        "gray_p": 0.2,
        "rotate": 0.0,
    },
    "model": {"arch": "resnet18", "head_hidden": 512, "head_out": 128},
    "optim": {"lr": 0.06, "weight_decay": 5e-4},
    "train": {"epochs": 200, "batch_size": 512},
    "eval": {"knn_k": 200},
}

#: dataset -> settings used where the config leaves ``None`` (lightly's CIFAR SimCLR recipe for
#: the image datasets; a small CNN and gentle augmentations for the 8x8 digits).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {
        "data": {
            "crop_scale": (0.5, 1.0),
            "flip_p": 0.0,
            "jitter": (0.4, 0.4, 0.0, 0.0),
            "jitter_p": 0.8,
            "gray_p": 0.0,
            "rotate": 15.0,
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


def resolve(cfg: Config) -> Config:
    """Fill the ``None`` fields from the dataset preset; returns a new config."""
    cfg = copy.deepcopy(cfg)
    if cfg.data.dataset not in PRESETS:
        raise ValueError(
            f"data.dataset: expected one of {', '.join(sorted(PRESETS))}, got {cfg.data.dataset!r}"
        )
    for section, values in PRESETS[cfg.data.dataset].items():
        sec = getattr(cfg, section)
        for k, v in values.items():
            if getattr(sec, k) is None:
                setattr(sec, k, copy.deepcopy(v))
    if cfg.model.width is None:
        cfg.model.width = 32
    return cfg


# -- loading, saving, overrides ------------------------------------------------------------
def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def parse_value(text: str) -> Any:
    """``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, ``"[1, 2]"`` -> [1, 2], else str."""
    t = text.strip()
    low = t.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return json.loads(t)
    except (json.JSONDecodeError, ValueError):
        pass
    if "," in t and not t.startswith(("'", '"')):
        return [parse_value(p) for p in t.split(",")]
    return t


def _coerce(name: str, value: Any, current: Any, ftype: Any) -> Any:
    """Coerce ``value`` to the type of field ``name`` (given its annotation string)."""
    ann = str(ftype)
    if value is None:
        if "None" in ann:
            return None
        raise ValueError(f"{name}: expected a value of type {ann}, got None")
    if "dict" in ann:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if "tuple" in ann:
        if isinstance(value, (int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a list of numbers, got {value!r}") from None
    if ann.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if ann.startswith("int"):
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if ann.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if ann.startswith("str"):
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def _merge(obj: Any, d: dict[str, Any], prefix: str) -> None:
    valid = {f.name: f for f in fields(obj)}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if key not in valid:
            raise ValueError(
                f"config: unknown setting {name!r}; valid under "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(valid))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(
                    f"config: {name!r} is a section, expected a mapping, got {value!r}"
                )
            _merge(current, value, prefix=f"{name}.")
        else:
            setattr(obj, key, _coerce(name, value, current, valid[key].type))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (``loss.params.temperature=0.2`` sets a loss parameter)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected section.key=value, got {item!r}")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        value = parse_value(raw)
        if len(parts) >= 3 and parts[0] == "loss" and parts[1] == "params":
            cfg.loss.params[".".join(parts[2:])] = value
            continue
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        _merge(cfg, nested, prefix="")
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config: expected a YAML or TOML file, got {str(p)!r} (not found)")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config: cannot parse {str(p)!r} as YAML: {e}") from None
    elif p.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config: cannot parse {str(p)!r} as TOML: {e}") from None
    else:
        raise ValueError(f"config: expected a .yaml, .yml or .toml file, got {str(p)!r}")
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a mapping at the top of {str(p)!r}")
    return Config.from_dict(data)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the config as YAML (atomically)."""
    import yaml

    from .utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
