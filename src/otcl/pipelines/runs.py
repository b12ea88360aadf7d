"""The pipelines' Python API: train a run, load it back, get its encoder.

A :class:`Run` is a run directory read back through its pipeline's spec: its config, summary
and numbers, and its trained model, without reading the checkpoint envelope yourself.

Example (the bundled digits, a few seconds on a CPU)::

    from otcl.pipelines import load_encoder, ssl

    cfg = ssl.Config()
    cfg.loss.name, cfg.train.epochs = "gca-uot", 5
    run = ssl.train(cfg, out="runs/digits-uot")      # -> Run
    encoder = run.encoder()                          # the trained backbone, eval mode
    same = load_encoder("runs/digits-uot")           # later, from the directory alone

Your own backbone and dataset plug into the image pipeline::

    run = ssl.train(cfg, model=my_backbone, data=my_image_data)
    run = Run.load("runs/mine", model=my_backbone)   # a custom backbone is passed again
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import Pipeline, available, get

__all__ = ["Run", "train", "load_run", "load_encoder"]


@dataclass
class Run:
    """A trained (or interrupted) run of any pipeline.

    Attributes:
        dir: the run directory.
        spec: its pipeline.
        config: its resolved config.
        state: the checkpoint state (``epoch``, ``done``, ``model``, ...).
    """

    dir: Path
    spec: Pipeline
    config: Any
    state: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str], pipeline: str | None = None) -> Run:
        """The run in ``path``; ``pipeline`` (default: the one whose config reads the saved
        one) names its pipeline."""
        from .engine.checkpoint import open_run

        names = [pipeline] if pipeline else available()
        errors = []
        for name in names:
            spec = get(name)
            try:
                cfg, st = open_run(path, spec.config_cls, spec.resolve)
            except ValueError as e:
                if "unknown setting" not in str(e) and "is a section" not in str(e):
                    raise  # not a run directory, a damaged checkpoint: the real error
                errors.append(f"{name}: {e}")
                continue
            return cls(Path(path), spec, cfg, st)
        raise ValueError(
            f"run: {str(path)!r} is not a run of "
            f"{'pipeline ' + repr(pipeline) if pipeline else 'any registered pipeline'} "
            f"({'; '.join(errors)})"
        )

    @property
    def method(self) -> str:
        """The method, as a comparison names it (``"gca-uot+dmm"``)."""
        return self.spec.method_name(self.config) or str(self.config.loss.name)

    @property
    def finished(self) -> bool:
        return bool(self.state.get("done", True)) and (self.dir / "summary.json").exists()

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json`` (written when the run finished)."""
        path = self.dir / "summary.json"
        if not path.exists():
            raise ValueError(f"run: {str(self.dir)!r} has not finished (no summary.json)")
        return json.loads(path.read_text())

    def metrics(self) -> dict[str, float]:
        """The numbers a comparison reads from this run (the spec's ``record``)."""
        return self.spec.record(self.dir)

    def data(self) -> Any:
        """The run's dataset, loaded as its config says."""
        return self.spec.load_data(self.config)

    def model(self, device: str = "cpu", *, data: Any = None, model: Any = None) -> Any:
        """The trained model on ``device``, in eval mode.

        Args:
            data: the dataset (loaded from the config when not given; the model's input
                shapes come from it).
            model: a run trained with a backbone of your own needs it again.
        """
        from .engine.checkpoint import restore_model

        data = self.data() if data is None else data
        kw = {"backbone": model} if model is not None else {}
        net = self.spec.build_model(self.config, data, **kw)
        return restore_model(net, self.state, self.dir, device)

    def encoder(self, device: str = "cpu", **kw: Any) -> Any:
        """The part of the model you embed with (the image pipeline: the backbone, before the
        projection head), trained, in eval mode; keywords as :meth:`model`."""
        return self.spec.encoder(self.model(device, **kw))

    def evaluate(self, **kw: Any) -> dict[str, Any]:
        """Evaluate the run again (what ``otcl <pipeline> eval`` does)."""
        if self.spec.evaluate is None:
            raise ValueError(f"eval: the {self.spec.name} pipeline has no evaluation of its own")
        return self.spec.evaluate(self.dir, **kw)


def train(
    pipeline: str,
    config: Any = None,
    *,
    out: str | os.PathLike[str] | None = None,
    data: Any = None,
    model: Any = None,
    resume: bool = False,
    log: Any = None,
) -> Run:
    """Train one run of ``pipeline`` (``config``: its config class's defaults if None) and
    return it. ``data``: a dataset of yours in the pipeline's form; ``model``: a model of
    yours, where the pipeline takes one (the image pipeline: a backbone)."""
    spec = get(pipeline)
    cfg = spec.config_cls() if config is None else config
    spec.check(spec.resolve(cfg))
    kw: dict[str, Any] = {"data": data, "resume": resume, "log": log}
    if model is not None:
        kw["model"] = model
    trainer = spec.trainer_cls(cfg, out, **kw)
    trainer.fit()
    return Run(Path(trainer.out), spec, trainer.cfg, _state(trainer.out))


def _state(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    from .engine.checkpoint import load_checkpoint

    return load_checkpoint(run_dir)


def load_run(path: str | os.PathLike[str], pipeline: str | None = None) -> Run:
    """:meth:`Run.load`."""
    return Run.load(path, pipeline)


def load_encoder(
    path: str | os.PathLike[str], device: str = "cpu", *, pipeline: str | None = None, **kw: Any
) -> Any:
    """The trained encoder of the run in ``path`` (see :meth:`Run.encoder`)."""
    return Run.load(path, pipeline).encoder(device, **kw)
