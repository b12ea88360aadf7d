"""Fixtures shared by the pipeline tests: tiny configs, CLI arguments, weight comparisons, and tiny
synthetic MovieLens folders (no real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from otcl.pipelines.config import RunConfig
from otcl.pipelines.ssl.config import Config


@pytest.fixture
def tiny_config():
    """Factory: the image pipeline on digits, a 4-channel CNN, 3 epochs of 3 steps (~1 s on CPU).

    Keyword arguments set ``train`` settings, e.g. ``tiny_config(epochs=1, log_every=1)``.
    """
    pytest.importorskip("sklearn")
    pytest.importorskip("yaml")

    def make(**train) -> Config:
        cfg = Config()
        cfg.model.width = 4
        cfg.model.head_hidden = 16
        cfg.model.head_out = 8
        cfg.train.epochs = 3
        cfg.train.batch_size = 32
        cfg.train.max_steps_per_epoch = 3
        cfg.train.progress = False
        cfg.train.deterministic = True
        cfg.train.checkpoint_every = 1
        cfg.eval.linear_epochs = 5
        for k, v in train.items():
            setattr(cfg.train, k, v)
        return cfg

    return make


@pytest.fixture
def toy_config():
    """Factory: a :class:`RunConfig` for the toy trainer of ``test_run.py`` (3 epochs x 4 steps)."""
    pytest.importorskip("yaml")

    def make(**train) -> RunConfig:
        cfg = RunConfig()
        cfg.optim.lr = 0.5
        cfg.train.epochs = 3
        cfg.train.batch_size = 16
        cfg.train.progress = False
        cfg.train.deterministic = True
        cfg.train.checkpoint_every = 1
        cfg.train.device = "cpu"
        for k, v in train.items():
            setattr(cfg.train, k, v)
        return cfg

    return make


#: `otcl train` / `otcl compare` arguments for a run of a second or two
TINY_ARGS = [
    "--no-progress",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--set",
    "train.max_steps_per_epoch=2",
    "--set",
    "model.width=4",
    "--set",
    "eval.linear_epochs=3",
]


@pytest.fixture
def tiny_args() -> list[str]:
    pytest.importorskip("sklearn")
    pytest.importorskip("yaml")
    return list(TINY_ARGS)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def weights():
    """``weights(model)``: a detached copy of the state dict."""
    return _weights


@pytest.fixture
def assert_same_weights():
    """``assert_same_weights(a, b)``: two state dicts are bit-identical."""
    return _assert_same


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The pipeline tests train tiny models: one intra-op thread is faster than two, and much
    faster on a machine shared with other jobs. The previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- MovieLens files ------------------------------------------------------------------------
OCCUPATIONS = ("artist", "doctor", "engineer", "student")


def write_ml100k(
    root: Path, n_users: int = 30, n_items: int = 40, n_ratings: int = 600, seed: int = 0
) -> Path:
    """A folder in MovieLens 100K's format (u.data, u.user, u.item) with random ratings."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pairs = rng.choice(n_users * n_items, size=n_ratings, replace=False)
    lines = [
        f"{p // n_items + 1}\t{p % n_items + 1}\t{rng.integers(1, 6)}\t{880000000 + k}"
        for k, p in enumerate(pairs)
    ]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    users = [
        f"{u}|{rng.integers(10, 70)}|{'MF'[u % 2]}|{OCCUPATIONS[u % 4]}|0000{u}"
        for u in range(1, n_users + 1)
    ]
    (root / "u.user").write_text("\n".join(users) + "\n")
    items = []
    for i in range(1, n_items + 1):
        genres = "|".join(str(int(g)) for g in rng.random(19) < 0.2)
        items.append(f"{i}|Movie {i} story (19{50 + i % 50})|01-Jan-1995||http://x|{genres}")
    (root / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    return root


@pytest.fixture
def ml_dir(tmp_path: Path) -> Path:
    return write_ml100k(tmp_path / "ml")


@pytest.fixture
def make_ml(tmp_path: Path):
    """Factory: ``make_ml(name, **sizes)`` writes another synthetic folder under tmp_path."""
    return lambda name, **kw: write_ml100k(tmp_path / name, **kw)
