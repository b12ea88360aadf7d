"""Run configuration machinery shared by every pipeline, and the sections they all have.

A pipeline's configuration is one top-level dataclass whose fields are *sections* (dataclasses of
plain settings). This module knows nothing about any particular pipeline: it turns any such
dataclass into a plain dict and back, reads it from YAML/TOML, applies ``section.key=value``
overrides with type checks, and writes it as YAML. The sections every pipeline shares are here
too: :class:`LossConfig`, :class:`OptimConfig` and :class:`TrainConfig` (the shared run engine,
:mod:`otcl.pipelines.engine`, reads ``train`` and ``optim``). A pipeline adds its own sections
(data, model, evaluation) and presets next to its code, e.g. :mod:`otcl.pipelines.ssl.config`.

**Presets.** A section is a :class:`Section` dataclass: it remembers which of its settings the
user set (assigned after construction, read from a file, or given as an override).
:func:`apply_presets` gives every *other* setting the preset's value -- whatever its default,
``None`` or not, so a pipeline's preset can change a shared default such as
``optim.optimizer`` -- and a setting the user set keeps the user's value (unless it is ``None``,
which means "the preset's"). Values passed to a section's constructor are defaults (what a
pipeline's ``default_factory`` uses), which a preset may still replace. A mapping setting
(``loss.params``) takes the preset's entries for the keys the user did not give.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class MyConfig(ConfigBase):
    ...     loss: LossConfig = field(default_factory=LossConfig)
    ...     optim: OptimConfig = field(default_factory=OptimConfig)
    ...     train: TrainConfig = field(default_factory=TrainConfig)
    >>> cfg = apply_overrides(MyConfig(), ["train.epochs=5", "loss.params.temperature=0.2"])
    >>> cfg.train.epochs, cfg.loss.params
    (5, {'temperature': 0.2})
    >>> MyConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .files import atomic_write_text
from .values import coerce as _coerce
from .values import parse_value

__all__ = [
    "ConfigBase",
    "Section",
    "Preset",
    "RunConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "to_dict",
    "from_dict",
    "load_config",
    "save_config",
    "apply_overrides",
    "apply_presets",
    "preset_for",
    "user_settings",
    "given",
    "parse_value",
]

C = TypeVar("C")

#: ``{section: {setting: value}}``: the values a preset gives the settings the user did not set
Preset = Mapping[str, Mapping[str, Any]]


class Section:
    """Base of a config section (a dataclass): it records which settings the user set.

    Every assignment after construction -- ``cfg.train.epochs = 5``, :func:`from_dict`,
    :func:`load_config`, :func:`apply_overrides` -- marks the setting as the user's;
    :func:`apply_presets` never replaces such a setting (unless it is ``None``). Constructor
    arguments are defaults: ``field(default_factory=lambda: OptimConfig(optimizer="adam"))``
    gives a pipeline its own default, which a preset may still change. The record is not a
    setting: it is neither saved nor compared (``==`` compares the settings only).

    A second record, :func:`given`, holds the settings the user gave in *this* request (a
    config file, an override, an assignment): a saved run's config read back with
    :func:`from_dict` sets every setting but gives none, so a pipeline's rule "a setting given
    where it does not apply is refused, whatever its value" never refuses a saved run.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "_user_set", set())
        object.__setattr__(self, "_given", set())

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        marks = self.__dict__.get("_user_set")
        if marks is not None and name in self.__dataclass_fields__:  # type: ignore[attr-defined]
            marks.add(name)
            self.__dict__["_given"].add(name)

    def _set_default(self, name: str, value: Any) -> None:
        """Set ``name`` without marking it as the user's (how a preset writes)."""
        object.__setattr__(self, name, value)


# -- the sections every pipeline shares ----------------------------------------------------
@dataclass
class LossConfig(Section):
    """A named otcl loss and its parameters (``otcl.losses.build(name, **params)``).

    ``dmm_mix`` (for ``dmm``): ``"input"`` re-encodes mixed inputs through the loss's
    ``prepare_inputs`` hook, ``"embedding"`` mixes embeddings. ``memory_bank``: K > 0 keeps the
    last K embeddings of earlier steps as extra negatives (:class:`otcl.losses.MemoryBank`,
    saved in the checkpoint); 0: none. Pipelines whose step takes no extra negatives refuse it.
    """

    name: str = "infonce"
    params: dict[str, Any] = field(default_factory=dict)
    dmm_mix: str = "input"
    memory_bank: int = 0


@dataclass
class OptimConfig(Section):
    """SGD with momentum, Adam or AdamW; ``lr`` is per 128 samples (scaled by batch_size / 128).

    The schedule is stepped per iteration: linear warm-up over ``warmup_epochs``, then cosine to
    zero at the last step (or constant). ``fused``: torch's fused implementation of the
    optimizer (one kernel per step instead of a pass per operation: the step of a model made of
    large embedding tables runs ~2x faster on a CPU); the same update up to rounding. Where this
    torch or device has none, the run says so and uses the default implementation.
    """

    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    nesterov: bool = False
    warmup_epochs: float = 0.0
    schedule: str = "cosine"  # "cosine" | "constant"
    fused: bool = False


@dataclass
class TrainConfig(Section):
    """The training loop (read by :class:`otcl.pipelines.engine.trainer.EpochTrainer`)."""

    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # "auto" (bf16 on cuda, off on cpu) | "bf16" | "fp16" | "none"
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 10
    log_every: int = 20
    progress: bool = True
    out: str | None = None
    max_steps_per_epoch: int | None = None  # truncate epochs (smoke tests)
    threads: int | None = None
    log: str = "none"  # "none" | "tensorboard": metrics.jsonl's scalars also in <run>/tb


# -- dataclass <-> plain dict --------------------------------------------------------------
class ConfigBase:
    """Mixin for a top-level config dataclass: :meth:`to_dict` and :meth:`from_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), ready for YAML or JSON."""
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """A new config: the defaults of ``cls`` with the settings of ``d`` merged in (checked)."""
        return from_dict(cls, d)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a plain nested dict (tuples as lists)."""
    return _plain(dataclasses.asdict(cfg))


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """``cls()`` with the settings of ``d`` merged in; unknown or mistyped settings raise.

    A ``derived`` entry (what :func:`save_config` records for the reader, e.g. the effective
    learning rate) is not a setting: it is ignored.
    """
    cfg = cls()
    _merge(cfg, {k: v for k, v in d.items() if k != DERIVED}, prefix="")
    for f in fields(cfg):  # type: ignore[arg-type]
        marks = getattr(getattr(cfg, f.name), "__dict__", {}).get("_given")
        if marks is not None:
            marks.clear()  # a saved config sets its settings; it gives none (see Section)
    return cfg


def _field_type(cfg: Any, parts: list[str]) -> str | None:
    """The annotation of the setting ``parts`` (e.g. ``["train", "amp"]``), None if unknown."""
    obj: Any = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
            return None
        obj = getattr(obj, p)
    if not dataclasses.is_dataclass(obj):
        return None
    f = {f.name: f for f in fields(obj)}.get(parts[-1])
    return None if f is None else str(f.type)


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
            setattr(obj, key, _coerce(name, value, valid[key].type))


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    """A copy of ``cfg`` with ``section.key=value`` strings applied.

    A setting that is a mapping takes single entries: ``loss.params.temperature=0.2`` sets one
    loss parameter. Values are parsed by :func:`parse_value` and checked against the field type,
    except that a text setting keeps the text as typed (``train.amp=none`` is the string
    ``"none"``); ``null`` unsets an optional one.
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected section.key=value, got {item!r}")
        path, raw = item.split("=", 1)
        parts = [p.strip() for p in path.strip().split(".")]
        ann = _field_type(cfg, parts)
        if ann is not None and ann.startswith("str"):  # text as typed: `none` is a string
            text = raw.strip()
            value = None if text.lower() == "null" and "None" in ann else text
        else:
            value = parse_value(raw)
        if _set_mapping_entry(cfg, parts, value):
            continue
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        _merge(cfg, nested, prefix="")
    return cfg


def _set_mapping_entry(cfg: Any, parts: list[str], value: Any) -> bool:
    """``a.b.key=value`` where ``a.b`` is a dict field: set one entry; False if not that case."""
    obj = cfg
    for i, p in enumerate(parts[:-1]):
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in fields(obj)}:
            return False
        obj = getattr(obj, p)
        if isinstance(obj, dict):
            obj[".".join(parts[i + 1 :])] = value
            return True
    return False


# -- presets -------------------------------------------------------------------------------
def user_settings(cfg: Any) -> set[str]:
    """The settings of ``cfg`` the user set (``"optim.lr"``, ...), as :class:`Section` records."""
    out = set()
    for f in fields(cfg):
        sec = getattr(cfg, f.name)
        out |= {f"{f.name}.{k}" for k in getattr(sec, "_user_set", ())}
    return out


def given(section: Any) -> set[str]:
    """The settings of ``section`` given in this request (see :class:`Section`): assigned,
    read from the user's config file or given as an override; not those of a saved run."""
    return set(getattr(section, "__dict__", {}).get("_given", ()))


def _merged(presets: Iterable[Preset]) -> dict[str, dict[str, Any]]:
    """The presets as one, a later one winning (a mapping setting merges key by key)."""
    out: dict[str, dict[str, Any]] = {}
    for preset in presets:
        for section, values in preset.items():
            sec = out.setdefault(section, {})
            for k, v in values.items():
                if isinstance(v, Mapping) and isinstance(sec.get(k), Mapping):
                    v = {**sec[k], **v}
                sec[k] = v
    return out


def apply_presets(cfg: C, *presets: Preset) -> C:
    """A copy of ``cfg`` in which every setting the user did not set takes the presets' value.

    Args:
        cfg: a config whose preset sections are :class:`Section` dataclasses.
        presets: ``{section: {setting: value}}`` layers, the later ones taking priority (e.g. a
            pipeline's fallbacks, then the dataset's preset).

    A setting the user set keeps its value, unless it is ``None`` ("the preset's"); a mapping
    setting (``loss.params``) takes the presets' entries for the keys it lacks. The values
    written are not marked as the user's, so a later resolve with another preset (say another
    ``model.kind``) replaces them.

    Raises:
        TypeError: a preset names an unknown setting or a section that is not a
            :class:`Section` (a programming error: such a section cannot tell the user's
            settings from its defaults).

    Example:
        >>> cfg = RunConfig()
        >>> cfg.train.epochs = 5
        >>> r = apply_presets(cfg, {"optim": {"optimizer": "adam"}, "train": {"epochs": 9}})
        >>> r.optim.optimizer, r.train.epochs
        ('adam', 5)
    """
    cfg = copy.deepcopy(cfg)
    for section, values in _merged(presets).items():
        sec = getattr(cfg, section, None)
        if not isinstance(sec, Section):
            raise TypeError(
                f"preset: {section!r} is not a config Section of {type(cfg).__name__} (its "
                "settings must record what the user set)"
            )
        valid = {f.name for f in fields(sec)}  # type: ignore[arg-type]
        for k, v in values.items():
            if k not in valid:
                raise TypeError(f"preset: unknown setting {section}.{k}")
            current = getattr(sec, k)
            if isinstance(current, dict) and isinstance(v, Mapping):
                sec._set_default(k, {**copy.deepcopy(dict(v)), **current})
            elif current is None or k not in sec._user_set:  # type: ignore[attr-defined]
                sec._set_default(k, copy.deepcopy(v))
    return cfg


def preset_for(
    presets: Mapping[str, Preset], setting: str, value: Any, choices: Iterable[str] = ()
) -> Preset:
    """``presets[value]``; an unknown ``value`` is a ``ValueError`` naming ``setting`` and the
    choices (``choices``, default: the presets' names, sorted)."""
    if value not in presets:
        names = list(choices) or sorted(presets)
        raise ValueError(f"{setting}: expected one of {', '.join(names)}, got {value!r}")
    return presets[value]


# -- files ---------------------------------------------------------------------------------
def load_config(path: str | os.PathLike[str], cls: type[C]) -> C:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a ``cls`` config."""
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
    cfg = from_dict(cls, data)
    for f in fields(cfg):  # type: ignore[arg-type]
        sec = getattr(cfg, f.name)
        if isinstance(sec, Section):
            sec.__dict__["_given"].update(sec.__dict__["_user_set"])  # the user's file
    return cfg


#: the entry of a saved config that records values derived from the settings (not settings)
DERIVED = "derived"


def save_config(
    cfg: Any, path: str | os.PathLike[str], derived: Mapping[str, Any] | None = None
) -> None:
    """Write the config as YAML (atomically).

    ``derived``: values that follow from the settings and the run (e.g. ``effective_lr``, the
    learning rate the optimizer runs at), written under ``derived:`` at the end for the reader;
    reading the file back (:func:`load_config`, :func:`from_dict`) ignores them.
    """
    import yaml

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if derived:
        text += (
            "# derived from the settings above (for the reader; ignored when this file is read)\n"
            + yaml.safe_dump({DERIVED: _plain(dict(derived))}, sort_keys=False)
        )
    atomic_write_text(path, text)


@dataclass
class RunConfig(ConfigBase):
    """The smallest complete config: the shared sections only (a base for pipeline configs)."""

    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
