"""The settings of an image-encoder pipeline that every such pipeline shares.

:class:`ModelConfig` is the ``model`` section of :mod:`otcl.pipelines.ssl` and
:mod:`otcl.pipelines.domains`; :func:`check_probes` checks the kNN and linear-probe settings of
their ``eval`` sections. Importing this module imports no torch (a config reads without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Section

__all__ = ["ModelConfig", "check_probes"]


@dataclass
class ModelConfig(Section):
    """Encoder = backbone + projection head (``head_hidden`` 0 = linear head).

    ``arch``: ``small-cnn`` or ``resnet18`` (default: the dataset preset's); ``width``: the
    small CNN's channels. ``norm``: the backbone's normalisation, ``batch`` | ``group`` |
    ``none`` (GroupNorm and none are per sample: a run under torchrun on CPU then equals the
    one-process run, see ``docs/distributed.md``); ``head_bn``: BatchNorm in the projection head.
    """

    arch: str | None = None  # "small-cnn" | "resnet18" (preset)
    width: int | None = None  # small-cnn channels
    norm: str = "batch"
    head_hidden: int | None = None
    head_out: int | None = None
    head_bn: bool = True


def check_probes(e: Any) -> None:
    """Raise ``ValueError`` naming the first probe setting of the ``eval`` section ``e`` that
    cannot run: ``knn_k``, ``knn_t``, ``linear_lr``, ``linear_epochs``, ``linear_batch_size``
    and ``batch_size`` (feature extraction)."""
    if e.knn_k is None or e.knn_k < 1:
        raise ValueError(f"eval.knn_k: expected an integer >= 1, got {e.knn_k!r}")
    for name in ("knn_t", "linear_lr"):
        if not getattr(e, name) > 0:
            raise ValueError(f"eval.{name}: expected a number > 0, got {getattr(e, name)!r}")
    for name in ("linear_epochs", "linear_batch_size", "batch_size"):
        if getattr(e, name) < 1:
            raise ValueError(f"eval.{name}: expected an integer >= 1, got {getattr(e, name)!r}")
