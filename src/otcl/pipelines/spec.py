"""What a pipeline is, declared once: a :class:`Pipeline` spec, registered by name.

A pipeline (images, multimodal, recommendation, or one of yours) says what it is in one frozen
object: its config class and how a config is resolved and checked, how its data load and its
model is built, its trainer, how a finished run is evaluated and read back, the methods a
comparison runs and how a method's name becomes a config, and the table and plots of a
comparison. Everything generic reads the spec and nothing else:

* :mod:`otcl.pipelines.verbs` -- the command line ``otcl <pipeline> train | eval | compare``;
* :mod:`otcl.pipelines.comparison` -- a comparison (methods x seeds, ``--jobs``, reuse,
  resume, refusal, merging into an existing directory) and its one ``results.json`` schema;
* :mod:`otcl.pipelines.runs` -- :class:`~otcl.pipelines.runs.Run`: a trained run loaded back
  (its config, model, encoder, summary, evaluation).

Method names of a comparison share one grammar: a base name (``infonce``, ``tt-gca-uot``,
``cml``) and, for DMM around it, the suffix ``+dmm`` (:func:`split_dmm`).

Example:
    >>> split_dmm("gca-uot+dmm")
    ('gca-uot', True)
    >>> sorted(available())[:1]
    ['multimodal']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Flag",
    "Pipeline",
    "register",
    "get",
    "available",
    "split_dmm",
    "dmm_around",
    "DMM_SUFFIX",
    "LossThen",
    "Deferred",
    "backbone",
]

#: the suffix of a comparison's method name that wraps the method's loss in DMM
DMM_SUFFIX = "+dmm"


def split_dmm(name: str) -> tuple[str, bool]:
    """``"infonce+dmm"`` -> ``("infonce", True)``; ``"infonce"`` -> ``("infonce", False)``."""
    if name.endswith(DMM_SUFFIX):
        return name[: -len(DMM_SUFFIX)], True
    return name, False


@dataclass(frozen=True)
class Flag:
    """A pipeline's own command-line flag, declared once for every verb that takes it.

    Attributes:
        name: the flag, ``"--dataset"``.
        setting: the config setting it sets (``"data.dataset"``); None for an ``eval`` option
            passed to :attr:`Pipeline.evaluate` as a keyword (its ``dest``).
        kwargs: :meth:`argparse.ArgumentParser.add_argument` keywords (``help``, ``type``,
            ``choices``, ``metavar``, ``action``).
        verbs: the verbs that offer it.
    """

    name: str
    setting: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    verbs: tuple[str, ...] = ("train", "compare")

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


def _none(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any) -> float:
    return 0.0


def _empty(*args: Any) -> str:
    return ""


def _same(x: Any) -> Any:
    return x


def _false(*args: Any) -> bool:
    return False


def dmm_around(cfg: Any) -> Any:
    """``train --dmm`` of a pipeline whose ``loss`` section names an otcl loss: the loss
    becomes DMM's base (its parameters go along: DMM forwards them)."""
    if cfg.loss.name == "dmm":
        raise ValueError("--dmm: the loss is dmm already; name its base with --loss")
    cfg.loss.params = {**cfg.loss.params, "base": cfg.loss.name}
    cfg.loss.name = "dmm"
    return cfg


@dataclass(frozen=True)
class LossThen:
    """A :attr:`Pipeline.check`: build the config's otcl loss (an unknown loss or parameter is
    one ``ValueError`` line), then run the pipeline's own ``check`` of the config."""

    check: Callable[[Any], None]

    def __call__(self, cfg: Any) -> None:
        from ..losses import build

        build(cfg.loss.name, **cfg.loss.params)
        self.check(cfg)


@dataclass(frozen=True)
class Deferred:
    """The function ``name`` of the module ``module``, imported when it is first called: a spec
    names a hook (e.g. its :attr:`Pipeline.evaluate`) without importing its module."""

    module: str
    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)


def backbone(model: Any) -> Any:
    """``model.backbone``: the :attr:`Pipeline.encoder` of a backbone + projection head."""
    return model.backbone


def _own_loss(method: str) -> tuple[str, ...]:
    base, dmm = split_dmm(method)
    return (base, "dmm") if dmm else (base,)


@dataclass(frozen=True)
class Pipeline:
    """One pipeline, declared once (see the module docstring). Every field is a class or a
    module-level function, so the spec pickles (a comparison's worker processes receive it).

    Required:
        name: the command group (``otcl <name> ...``) and the registry key.
        help: one line for ``otcl --help``.
        config_cls: the config dataclass (``from_dict`` of a saved config).
        resolve: ``cfg -> cfg``: presets filled in (a new object).
        check: ``cfg -> None``: raise ``ValueError`` naming the first setting that cannot train,
            before any data loads (the resolved config; includes building the loss).
        load_data: ``cfg -> data``: the dataset (a comparison loads it once per process).
        build_model: ``(cfg, data) -> nn.Module``: the run's model (restored from a checkpoint).
        trainer_cls: its :class:`~otcl.pipelines.engine.trainer.EpochTrainer`, built as
            ``trainer_cls(cfg, out, data=..., resume=..., extend=..., log=...)``.
        methods: the default methods of ``compare``.
        method_config: ``(cfg, method, shared, per_loss) -> cfg``: the config of one method of
            a comparison (``shared``: loss parameters for every loss; ``per_loss``:
            ``{loss: params}``); ``ValueError`` for an unknown method, naming the choices.
        record: ``(run_dir) -> {metric: number}``: a finished run's numbers.
        method_name: ``cfg -> str``: the method of a run's config (the inverse of
            :attr:`method_config`), e.g. ``"gca-uot+dmm"``.

    Optional:
        evaluate: ``(run_dir, *, device, data, **options) -> report``: evaluate a run again
            and write :attr:`eval_file`; None: the trainer's own end-of-run evaluation is the
            evaluation (``eval`` reprints it).
        eval_file: the file a finished run holds besides ``summary.json``.
        eval_after_train: a comparison calls :attr:`evaluate` after training each run.
        finished_files: files besides ``summary.json`` that a finished run holds (written by
            its trainer).
        info: ``(cfg, data) -> dict``: what a comparison's table says about its setting
            (``results.json``'s ``info``).
        parallel_by_default: ``compare``'s default ``--jobs`` is the CPU cores (at most 2)
            rather than 1.
        describe_eval: ``report -> str``: the line ``eval`` prints.
        describe_train: ``(trainer, summary) -> str``: the line ``train`` prints.
        encoder: ``model -> nn.Module``: the part of the model a user embeds with.
        with_dmm: ``cfg -> cfg``: the config with its loss wrapped in DMM (``train --dmm``;
            default :func:`dmm_around`).
        method_losses: ``method -> loss names``: the otcl losses a method trains with,
            ``dmm`` included (per-loss parameters for others are refused); default: the base
            name, and ``dmm`` for ``<m>+dmm``.
        baseline: ``(method, cfg, run_dir, data, log) -> None``: fit and evaluate a method
            without a training loop into ``run_dir/summary.json``; None if every method trains.
        is_baseline: ``method -> bool``.
        skip: ``method -> reason or None``: a method that cannot run here (an optional package).
        prepare_compare: ``cfg -> cfg``: the shared config of a comparison (e.g. curves).
        table: ``results -> str``: the Markdown table(s) of ``results.json``.
        plot: ``(results, out) -> [paths]``: the plots.
        plot_files: the file names :attr:`plot` writes (removed when a comparison has none).
        delta_metrics: the metrics of the paired ``<m>+dmm`` minus ``<m>`` deltas.
        flags: the pipeline's own flags.
        supports_compile: ``--compile`` is offered (it must work).
        cost / describe_run / data_key: worker scheduling and log lines of a comparison.
        examples: ``{verb: epilog}`` of the command line.
    """

    name: str
    help: str
    config_cls: type
    resolve: Callable[[Any], Any]
    check: Callable[[Any], None]
    load_data: Callable[[Any], Any]
    build_model: Callable[[Any, Any], Any]
    trainer_cls: type
    methods: tuple[str, ...]
    method_config: Callable[[Any, str, Mapping[str, Any], Mapping[str, Any]], Any]
    record: Callable[[Path], dict[str, float]]
    method_name: Callable[[Any], str] = _empty
    evaluate: Callable[..., dict[str, Any]] | None = None
    eval_file: str | None = None
    eval_after_train: bool = False
    finished_files: tuple[str, ...] = ()
    info: Callable[[Any, Any], dict[str, Any]] | None = None
    parallel_by_default: bool = False
    describe_eval: Callable[[dict[str, Any]], str] = _empty
    describe_train: Callable[[Any, dict[str, Any]], str] = _empty
    encoder: Callable[[Any], Any] = _same
    with_dmm: Callable[[Any], Any] = dmm_around
    method_losses: Callable[[str], Sequence[str]] = _own_loss
    baseline: Callable[..., None] | None = None
    is_baseline: Callable[[str], bool] = _false
    skip: Callable[[str], str | None] = _none
    prepare_compare: Callable[[Any], Any] = _same
    table: Callable[[dict[str, Any]], str] | None = None
    plot: Callable[[dict[str, Any], Path], list[Path]] | None = None
    plot_files: tuple[str, ...] = ()
    delta_metrics: tuple[str, ...] = ()
    flags: tuple[Flag, ...] = ()
    supports_compile: bool = True
    cost: Callable[[Any], float] = _zero
    describe_run: Callable[[dict[str, Any]], str] = _empty
    data_key: Callable[[Any], str] | None = None
    examples: Mapping[str, str] = field(default_factory=dict)

    def flags_for(self, verb: str) -> tuple[Flag, ...]:
        """The flags ``verb`` offers."""
        return tuple(f for f in self.flags if verb in f.verbs)

    def settings_for(self, verb: str) -> tuple[tuple[str, str], ...]:
        """(argparse attribute, config setting) of ``verb``'s flags that set a setting."""
        return tuple((f.dest, f.setting) for f in self.flags_for(verb) if f.setting)


#: name -> the module that registers it (imported on first use) or the spec itself
_REGISTRY: dict[str, str | Pipeline] = {
    "ssl": "otcl.pipelines.ssl.spec",
    "multimodal": "otcl.pipelines.multimodal.spec",
    "recsys": "otcl.pipelines.recsys.spec",
    "domains": "otcl.pipelines.domains.spec",
}


def register(spec: Pipeline) -> Pipeline:
    """Register ``spec`` under ``spec.name`` (a later one replaces it); returns it."""
    if not isinstance(spec, Pipeline):
        raise TypeError(f"register: expected a Pipeline, got {type(spec).__name__}")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> Pipeline:
    """The pipeline registered as ``name`` (``ValueError`` naming the choices)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"pipeline: expected one of {', '.join(available())}, got {name!r}")
    if isinstance(entry, str):
        importlib.import_module(entry)  # it registers itself
        entry = _REGISTRY[name]
        if isinstance(entry, str):  # pragma: no cover - a module that did not register
            raise RuntimeError(f"pipeline: {entry} did not register {name!r}")
    return entry


def available() -> list[str]:
    """The registered pipeline names."""
    return sorted(_REGISTRY)
