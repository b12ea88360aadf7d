"""Self-supervised (SimCLR-style) image pipeline: ``otcl ssl train | eval | compare`` (short
forms ``otcl train | eval | compare``) and its Python API.

Its datasets, augmentations, encoders, frozen features and probes are shared with the other
pipelines in :mod:`otcl.pipelines.sources`.

* :func:`train` -- one run from a :class:`Config` (your own backbone and dataset plug in), a
  :class:`~otcl.pipelines.runs.Run` back; :func:`load_encoder` -- a trained backbone;
* :mod:`.spec` -- the pipeline, declared once (the verbs, the comparison and ``Run`` read it);
* :mod:`.config` -- :class:`Config` (data, model, loss, optim, train, eval) and dataset presets;
* :mod:`.trainer` -- :class:`SSLTrainer`, the engine's ``EpochTrainer`` of images;
* :mod:`.evaluate` -- kNN and linear probe of a run's frozen features;
* :mod:`.compare` -- the methods' configs, numbers, table and plots of a comparison.
"""

from __future__ import annotations

import os
from typing import Any

from ..runs import Run, load_encoder, load_run
from ..runs import train as _train
from .config import Config

__all__ = ["Config", "Run", "train", "load_run", "load_encoder"]


def train(
    config: Config | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    model: Any = None,
    data: Any = None,
    resume: bool = False,
    log: Any = None,
) -> Run:
    """Train one self-supervised run and return it (:class:`~otcl.pipelines.runs.Run`).

    Args:
        config: the settings (default ``Config()``: InfoNCE on the bundled digits).
        out: the run directory (default ``runs/ssl/<method>-<dataset>-s<seed>``).
        model: a backbone of yours, images (B, C, H, W) -> features (B, D); the projection head
            (``model.head_*``) is built on it and ``model.arch`` reads ``custom``.
        data: an :class:`~otcl.pipelines.sources.images.ImageData` of yours (uint8 images, int64
            labels); ``config.data.dataset`` still picks the preset.
    """
    return _train("ssl", config, out=out, data=data, model=model, resume=resume, log=log)
