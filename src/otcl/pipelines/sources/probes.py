r"""Probes of frozen representations, shared by the pipelines: weighted kNN and a linear probe.

* **kNN** (Wu et al. 2018, as lightly's ``knn_predict``): cosine similarity between L2-normalised
  test and train features, the ``k`` nearest train samples vote for their class with weight
  :math:`\exp(s/t)`; defaults ``k=200``, ``t=0.1``.
* **Linear probe**: a linear classifier on frozen features, standardised with the train
  statistics, trained with SGD (momentum 0.9, cosine learning rate). The reported accuracy is the
  test accuracy **after the final epoch** -- never the best epoch on the test set (the GCA code's
  pitfall). :func:`linear_probe` returns the trained :class:`LinearClassifier` too, and
  :func:`fit_linear_probe` trains one without a test set, to score several test sets with.

Both take feature tensors, so any pipeline (images, text, audio) can use them on whatever its
encoder produces.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "knn_predict",
    "knn_accuracy",
    "linear_probe",
    "fit_linear_probe",
    "linear_options",
    "LinearClassifier",
    "LinearProbeResult",
]


@torch.no_grad()
def knn_predict(
    test_features: torch.Tensor,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    r"""Predicted classes (M,) by similarity-weighted kNN votes.

    Args:
        test_features: (M, D); train_features: (N, D); train_labels: (N,) int in [0, C).
        k: neighbours (clipped to N); t: temperature of the vote weights :math:`e^{s/t}`.
    """
    if k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    if t <= 0:
        raise ValueError(f"t: expected a temperature > 0, got {t!r}")
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(
            f"train_labels: expected {train_features.shape[0]} labels (one per train feature), "
            f"got {train_labels.shape[0]}"
        )
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device)
    preds = []
    for s in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[s : s + chunk].float().to(bank.device), dim=1)
        sim = q @ bank.T
        w, idx = sim.topk(k, dim=1)
        w = (w / t).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[idx], w)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on the test set."""
    pred = knn_predict(test_features, train_features, train_labels, num_classes, k, t)
    return (pred.cpu() == test_labels.cpu()).float().mean().item()


@dataclass(frozen=True)
class LinearClassifier:
    r"""A trained linear probe: standardise with the train statistics, then one linear layer,
    :math:`\hat y = \arg\max_c\, (W ((x - \mu) / \sigma) + b)_c`.

    Attributes:
        linear: the ``nn.Linear(D, C)`` layer (on the train features' device).
        mean, std: (1, D) train-feature statistics.
        train_accuracy: accuracy on the training features after the final epoch.
        history: ``{"epoch", "loss"}`` about ten times per run (and after the last epoch).

    One probe scores any number of test sets -- e.g. the joint representation of every subset
    of present modalities -- without training again.
    """

    linear: nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    train_accuracy: float
    history: list[dict[str, float]]

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores (M, C) of features (M, D)."""
        x = (features.to(self.mean.device) - self.mean) / self.std
        return self.linear(x)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted classes (M,) of features (M, D)."""
        return self.logits(features).argmax(1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy on ``features`` (M, D) with ``labels`` (M,)."""
        pred = self.predict(features)
        return (pred == labels.to(pred.device)).float().mean().item()


@dataclass(frozen=True)
class LinearProbeResult:
    """Final-epoch test accuracy, the final train accuracy, the per-epoch history and the
    trained probe (``classifier``: score other test sets with it)."""

    test_accuracy: float
    train_accuracy: float
    history: list[dict[str, float]]
    classifier: LinearClassifier


def fit_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 512,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> LinearClassifier:
    """Train a linear classifier on frozen features (N, D) with labels (N,) in [0, C).

    Features are standardised with their own mean and std; SGD (momentum 0.9) with a cosine
    learning rate over ``epochs``, minibatches of ``batch_size`` in an order drawn from
    ``seed``. Nothing is selected on a test set: the probe is the one after the last epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs: expected an integer >= 1, got {epochs!r}")
    dev = train_features.device
    mean = train_features.mean(0, keepdim=True)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6)
    xtr = (train_features - mean) / std
    ytr = train_labels.to(dev)
    gen = torch.Generator().manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], num_classes).to(dev)
    with torch.no_grad():
        w = torch.randn(clf.weight.shape, generator=gen) * 0.01
        clf.weight.copy_(w.to(dev))
        clf.bias.zero_()
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = xtr.shape[0]
    steps = max(1, (n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    history: list[dict[str, float]] = []
    epochs_iter = range(epochs)
    if progress and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm

            epochs_iter = tqdm(epochs_iter, desc="linear probe", leave=False, unit="ep")
        except ImportError:
            pass
    for epoch in epochs_iter:
        perm = torch.randperm(n, generator=gen).to(dev)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * idx.numel()
        if epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 10) == 0:
            history.append({"epoch": epoch + 1, "loss": float(total) / n})
    clf.requires_grad_(False)
    with torch.no_grad():
        train_acc = (clf(xtr).argmax(1) == ytr).float().mean().item()
    return LinearClassifier(clf, mean, std, train_acc, history)


def linear_options(section: Any, seed: int) -> dict[str, Any]:
    """The :func:`fit_linear_probe` keywords of an evaluation settings section (its
    ``linear_epochs``, ``linear_lr``, ``linear_batch_size``, ``linear_weight_decay``) and
    ``seed``."""
    return {
        "epochs": section.linear_epochs,
        "lr": section.linear_lr,
        "batch_size": section.linear_batch_size,
        "weight_decay": section.linear_weight_decay,
        "seed": seed,
    }


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    **options: Any,
) -> LinearProbeResult:
    """Train a linear classifier on frozen features (:func:`fit_linear_probe`, whose keyword
    arguments ``options`` are: ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``seed``,
    ``progress``); report its accuracy on the test set after the last epoch, and the classifier
    itself."""
    clf = fit_linear_probe(train_features, train_labels, num_classes, **options)
    return LinearProbeResult(
        clf.accuracy(test_features, test_labels), clf.train_accuracy, clf.history, clf
    )
