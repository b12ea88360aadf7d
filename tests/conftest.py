"""Fixtures shared by the test suite (the library's and the pipelines').

* ``make_pairs`` -- two views of a batch, seeded: independent (``noise=None``) or
  ``z2 = z1 + noise * randn`` (positives that are close);
* ``make_problem`` -- a seeded random OT problem ``(C, a, b, eps)`` in NumPy (POT-comparable);
* ``make_scores`` -- a seeded random batched score problem ``(S, a, b, W)`` in torch float64
  with one excluded pair, and ``W`` an upstream gradient;
* ``build_applicable`` -- ``otcl.losses.build(name, **params)`` keeping only the parameters that
  apply to that loss (for tests that sweep one setting over every loss);
* ``tol`` -- the tolerance of a dtype (``tol[torch.float64]``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import otcl

F64 = torch.float64

#: loss names of the OT contrastive family (OTContrastiveLoss presets)
OT_FAMILY = ["infonce", "iot", "iot-uni", "gca-ince", "gca-rince", "gca-uot", "rince"]


@pytest.fixture
def make_pairs() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def make(
        n: int = 8,
        d: int = 5,
        seed: int = 0,
        dtype: torch.dtype = F64,
        noise: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        z1 = torch.randn(n, d, generator=g, dtype=dtype)
        if noise is None:
            return z1, torch.randn(n, d, generator=g, dtype=dtype)
        return z1, z1 + noise * torch.randn(n, d, generator=g, dtype=dtype)

    return make


@pytest.fixture
def make_problem() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    def make(
        seed: int, n: int = 7, m: int = 9, eps: float = 0.3
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        rng = np.random.default_rng(seed)
        C = rng.random((n, m))
        a = rng.random(n) + 0.1
        b = rng.random(m) + 0.1
        return C, a / a.sum(), b / b.sum(), eps

    return make


@pytest.fixture
def make_scores() -> Callable[..., tuple[torch.Tensor, ...]]:
    def make(
        seed: int = 0, batch: tuple[int, ...] = (2,), n: int = 7, m: int = 6
    ) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        S = torch.randn(*batch, n, m, generator=g, dtype=F64)
        S[..., 1, 2] = float("-inf")  # an excluded pair
        a = torch.rand(n, generator=g, dtype=F64) + 0.2
        b = torch.rand(*batch, m, generator=g, dtype=F64) + 0.2
        W = torch.randn(*batch, n, m, generator=g, dtype=F64)
        return S, a / a.sum(), b / b.sum(-1, keepdim=True), W

    return make


@pytest.fixture
def build_applicable() -> Callable[..., torch.nn.Module]:
    def build(name: str, **params: object) -> torch.nn.Module:
        drop = otcl.losses.inapplicable_params(name, params)
        return otcl.losses.build(name, **{k: v for k, v in params.items() if k not in drop})

    return build


@pytest.fixture
def tol() -> dict[torch.dtype, float]:
    return {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture
def assert_same() -> Callable[..., None]:
    def check(x: torch.Tensor | None, y: torch.Tensor | None, tol: float, floor: float = 1e-12):
        """max |x - y| <= tol * max(max |y|, floor); None (an unused input's gradient in autograd)
        matches None or zeros (the fused paths)."""
        if x is None or y is None:
            assert all(t is None or t.abs().max() == 0 for t in (x, y))
            return
        x, y = x.detach(), y.detach()
        scale = max(float(y.abs().max()), floor)
        assert float((x - y).abs().max()) <= tol * scale, (x, y)

    return check


# -- NumPy references of the simclr layout (plain functions: used in parametrize and helpers) --
def np_cos_all(z1: torch.Tensor, z2: torch.Tensor) -> np.ndarray:
    """(2N, 2N) cosine similarities of all views [z1; z2], in NumPy."""
    z = np.concatenate([z1.numpy(), z2.numpy()])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z @ z.T


def np_pos(n: int) -> np.ndarray:
    """(2N,) positive column of every row of the simclr layout: i + N mod 2N."""
    return np.concatenate([np.arange(n) + n, np.arange(n)])
