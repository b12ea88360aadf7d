"""Tiny synthetic MovieLens folders and CSV files for the recsys tests (no real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
