r"""Probes of a domain run's frozen representation: classes, domains, leave-one-domain-out.

Backbone features (before the projection head, ``eval()`` mode, no augmentation) are extracted
once for the train and test splits (every domain in both); then

* ``knn``, ``linear`` -- class accuracy of the weighted kNN and of a linear probe (final epoch)
  trained on the train split of all domains, tested on the test split;
* ``domain`` -- accuracy of a linear probe that predicts the *domain* (how much domain
  information the representation keeps; chance is ``1 / D``), and ``domain_knn``, that of the
  weighted kNN (whether a sample's neighbours are of its domain: the geometry the target
  shapes, which moves where a linear probe still separates the domains);
* ``lodo`` -- leave-one-domain-out class accuracy: for each domain a linear class probe
  trained on the train split of the *other* domains, tested on the test split of the held-out
  one; ``lodo`` is the mean over the domains, ``lodo_per_domain`` each one. The encoder saw the
  unlabelled train images of every domain (self-supervised); the probe sees the labels of the
  other domains only.

Every probe is :func:`otcl.pipelines.sources.probes.linear_probe` (standardised features, SGD,
final epoch; no selection on the test set).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_text
from ..imaging.trainer import check_eval_writable, frozen_features
from ..sources.images import DomainData
from ..sources.probes import knn_accuracy, linear_options, linear_probe
from .trainer import EVAL_FILE, load_run

__all__ = ["domain_accuracy", "lodo_accuracy", "probe_all", "evaluate_run"]


def domain_accuracy(
    train_features: torch.Tensor,
    train_domains: torch.Tensor,
    test_features: torch.Tensor,
    test_domains: torch.Tensor,
    num_domains: int,
    **options: Any,
) -> float:
    """Test accuracy of a linear probe predicting the domain (N,) from features (N, D);
    ``options`` as :func:`~otcl.pipelines.sources.probes.fit_linear_probe`'s."""
    return linear_probe(
        train_features, train_domains, test_features, test_domains, num_domains, **options
    ).test_accuracy


def lodo_accuracy(
    train_features: torch.Tensor,
    train_y: torch.Tensor,
    train_d: torch.Tensor,
    test_features: torch.Tensor,
    test_y: torch.Tensor,
    test_d: torch.Tensor,
    num_classes: int,
    num_domains: int,
    **options: Any,
) -> list[float]:
    """Leave-one-domain-out class accuracy, one per held-out domain (NaN for a domain without
    test images): a linear class probe on the train features of the other domains, tested on
    the held-out domain's test features."""
    out = []
    for j in range(num_domains):
        tr, te = train_d != j, test_d == j
        if not bool(te.any()) or not bool(tr.any()):
            out.append(float("nan"))
            continue
        res = linear_probe(
            train_features[tr], train_y[tr], test_features[te], test_y[te], num_classes, **options
        )
        out.append(res.test_accuracy)
    return out


def probe_all(
    ftr: torch.Tensor,
    fte: torch.Tensor,
    data: DomainData,
    *,
    knn_k: int = 20,
    knn_t: float = 0.1,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Every probe of the module docstring on train/test features ``ftr``, ``fte`` of ``data``."""
    opts = dict(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    c, nd = data.num_classes, data.num_domains
    knn = knn_accuracy(ftr, data.train_y, fte, data.test_y, c, knn_k, knn_t)
    lin = linear_probe(ftr, data.train_y, fte, data.test_y, c, **opts).test_accuracy
    dom = domain_accuracy(ftr, data.train_d, fte, data.test_d, nd, **opts)
    dom_knn = knn_accuracy(ftr, data.train_d, fte, data.test_d, nd, knn_k, knn_t)
    per = lodo_accuracy(
        ftr, data.train_y, data.train_d, fte, data.test_y, data.test_d, c, nd, **opts
    )
    finite = [v for v in per if v == v]
    return {
        "knn": knn,
        "linear": lin,
        "domain": dom,
        "domain_knn": dom_knn,
        "domain_chance": 1.0 / nd,
        "lodo": statistics.fmean(finite) if finite else float("nan"),
        "lodo_per_domain": dict(zip(data.domains, per, strict=True)),
    }


def evaluate_run(
    run_dir: str | Path,
    *,
    device: str = "auto",
    data: DomainData | None = None,
    progress: bool = False,
    write: bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Every probe of a run's checkpoint (settings: the run's ``eval`` section); writes
    ``<run_dir>/eval.json``."""
    if write:
        check_eval_writable(run_dir, EVAL_FILE)
    cfg, model, data, aug, st = load_run(run_dir, device=device, data=data)
    e = cfg.eval
    ftr, fte = frozen_features(model, data, aug, cfg, progress=progress)
    options = linear_options(e, cfg.train.seed)
    probes = probe_all(ftr.cpu(), fte.cpu(), data, knn_k=e.knn_k, knn_t=e.knn_t, **options)
    result = {
        "run": str(run_dir),
        "loss_name": cfg.loss.name,
        "alpha": cfg.target.alpha,
        "beta": cfg.target.beta,
        "scale": cfg.target.scale,
        "dataset": data.name,
        "domains": data.domains,
        "seed": cfg.train.seed,
        "epoch": int(st["epoch"]),
        **probes,
        "knn_k": e.knn_k,
        "linear_epochs": e.linear_epochs,
        "protocol": "frozen backbone features, no augmentation; kNN cosine weighted votes; "
        "linear probes (class, domain, leave-one-domain-out) final-epoch test accuracy",
        "torch": torch.__version__,
    }
    if write:
        atomic_write_text(Path(run_dir) / EVAL_FILE, json.dumps(result, indent=2))
    return result
