"""Where and how a run computes: the device, autocast, seeds, RNG states, the AMP scaler.

Every random draw of a step comes from ``(seed, tag, step)`` (:func:`derive_seed`,
:func:`step_generator`, :func:`epoch_order`), never from a generator carried across steps: that
is what makes a resumed run identical to an uninterrupted one. The global generators
(:func:`seed_everything`) only seed what a pipeline builds before the first step, and their
states travel in the checkpoint (:func:`rng_state`, :func:`set_rng_state`).
"""

from __future__ import annotations

import hashlib
import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

__all__ = [
    "pick_device",
    "amp_dtype",
    "autocast",
    "configure_torch",
    "grad_scaler",
    "derive_seed",
    "seed_everything",
    "step_generator",
    "epoch_order",
    "rng_state",
    "set_rng_state",
]


# -- devices -------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available on this machine")
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None = no autocast)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if amp not in table:
        raise ValueError(f"train.amp: expected auto, bf16, fp16 or none, got {amp!r}")
    return table[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device`` (a no-op without one)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def configure_torch(train: Any, device: torch.device) -> None:
    """Apply the ``train`` section's process-wide settings: ``threads``, and ``deterministic``
    algorithms (or, on CUDA without them, cuDNN autotuning and TF32 matmuls)."""
    if train.threads:
        torch.set_num_threads(int(train.threads))
    if train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> Any:
    """The AMP gradient scaler, enabled under fp16 only (``torch.amp.GradScaler``; before
    torch 2.3, ``torch.cuda.amp.GradScaler``)."""
    scaler_cls = getattr(torch.amp, "GradScaler", None)
    fp16 = dtype == torch.float16
    if scaler_cls is None:  # torch < 2.3
        return torch.cuda.amp.GradScaler(enabled=fp16)
    return scaler_cls(device.type, enabled=fp16)


# -- seeds and RNG states ------------------------------------------------------------------
def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed from ``seed`` and tags, stable across processes and platforms."""
    h = hashlib.sha256(repr((int(seed),) + tags).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, tag: str, step: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded by ``(seed, tag, step)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, tag, step))
    return g


def epoch_order(seed: int, n: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(n)`` (CPU, int64) that epoch ``epoch`` visits: a function of
    ``(seed, epoch)`` alone."""
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(n, generator=g)


def rng_state() -> dict[str, Any]:
    """Every global RNG state (Python, NumPy, torch CPU and CUDA) as tensors, lists and numbers
    (what a ``weights_only`` load accepts)."""
    version, key, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), list(key), gauss],
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.asarray(mt, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states returned by :func:`rng_state` (or stored by checkpoint format 1:
    Python's tuple and NumPy's own tuple)."""
    version, key, gauss = state["python"]
    random.setstate((int(version), tuple(int(k) for k in key), gauss))
    npst = state["numpy"]
    if isinstance(npst, dict):
        key = npst["key"].cpu().numpy().astype(np.uint32)
        npst = (npst["kind"], key, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
