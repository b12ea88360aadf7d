"""Fixtures of the multimodal tests: tiny synthetic aligned modalities."""

from __future__ import annotations

import pytest
import torch

from otcl.pipelines.multimodal.data import MultimodalData


def synthetic(n_train=48, n_test=24, classes=3, seed=0, task="classification"):
    """Three modalities (vector, sequence, image) that all carry the class of each sample."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.arange(n) % classes
    centers = torch.randn(classes, 6, generator=g)
    base = centers[y] + 0.3 * torch.randn(n, 6, generator=g)
    feats = {
        "vec": base @ torch.randn(6, 5, generator=g),
        "seq": (base @ torch.randn(6, 12, generator=g)).view(n, 4, 3),
        "img": (base @ torch.randn(6, 16, generator=g)).view(n, 1, 4, 4),
    }
    kinds = {"vec": "vector", "seq": "sequence", "img": "image"}
    labels = y if task == "classification" else (y.float() - 1.0) * 1.5
    return MultimodalData(
        name="synthetic",
        train={k: v[:n_train] for k, v in feats.items()},
        test={k: v[n_train:] for k, v in feats.items()},
        kinds=kinds,
        train_y=labels[:n_train],
        test_y=labels[n_train:],
        task=task,
        classes=tuple(str(c) for c in range(classes)) if task == "classification" else (),
        source="synthetic",
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_data():
    """The :func:`synthetic` factory (keyword arguments: sizes, seed, task)."""
    return synthetic
