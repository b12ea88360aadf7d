"""``otcl eval``: kNN and linear-probe accuracy of a self-supervised run's frozen backbone.

Features are extracted once without augmentation from the backbone (before the projection head,
``eval()`` mode) for the train and test splits; :mod:`otcl.pipelines.sources.probes` gives the weighted
kNN and the final-epoch linear-probe accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_text
from ..imaging.trainer import check_eval_writable, frozen_features
from ..sources.images import ImageData
from ..sources.probes import knn_accuracy, linear_options, linear_probe
from .trainer import load_run

__all__ = ["evaluate_run"]


def evaluate_run(
    run_dir: str | Path,
    *,
    device: str = "auto",
    data: ImageData | None = None,
    linear_epochs: int | None = None,
    knn_k: int | None = None,
    knn_t: float | None = None,
    progress: bool = True,
    write: bool = True,
    backbone: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """kNN and linear-probe accuracy of a run's checkpoint; writes ``<run_dir>/eval.json``.

    Settings default to the run's ``eval`` config section.
    """
    if write:
        check_eval_writable(run_dir, "eval.json")
    cfg, model, data, aug, st = load_run(run_dir, device=device, data=data, backbone=backbone)
    e = cfg.eval
    k: int = e.knn_k if knn_k is None else knn_k  # type: ignore[assignment]  # checked
    t = e.knn_t if knn_t is None else knn_t
    epochs = e.linear_epochs if linear_epochs is None else linear_epochs
    ftr, fte = frozen_features(
        model, data, aug, cfg, channels_last=cfg.train.channels_last, progress=progress
    )
    knn = knn_accuracy(ftr, data.train_y, fte, data.test_y, data.num_classes, k, t)
    options = {**linear_options(e, cfg.train.seed), "epochs": epochs}
    probe = linear_probe(
        ftr, data.train_y, fte, data.test_y, data.num_classes, **options, progress=progress
    )
    result = {
        "run": str(run_dir),
        "loss_name": cfg.loss.name,
        "dataset": cfg.data.dataset,
        "seed": cfg.train.seed,
        "epoch": int(st["epoch"]),
        "knn": knn,
        "knn_k": k,
        "knn_t": t,
        "linear": probe.test_accuracy,
        "linear_train": probe.train_accuracy,
        "linear_epochs": epochs,
        "protocol": "frozen backbone features, no augmentation; kNN cosine weighted votes; "
        "linear probe final-epoch test accuracy",
        "torch": torch.__version__,
    }
    if write:
        atomic_write_text(Path(run_dir) / "eval.json", json.dumps(result, indent=2))
    return result
