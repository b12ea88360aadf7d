"""The multimodal data container: M >= 2 aligned modalities per sample, as float tensors.

:class:`MultimodalData` holds, for the train and the test split, one float32 tensor per modality
with aligned rows (row i of every modality is the same sample), optional labels (classes, or
real-valued targets) and the *kind* of each modality (``vector`` (N, D), ``sequence`` (N, T, D),
``image`` (N, C, H, W)), which picks its encoder. :func:`check_modalities` is the one check every
loader of :mod:`.data` runs; :func:`split_rows` the seeded train/test partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..sources.common import DataError

__all__ = ["MultimodalData", "KINDS", "KIND_BY_NDIM", "TASKS", "check_modalities", "split_rows"]

KINDS = ("vector", "sequence", "image")
TASKS = ("classification", "regression")
#: the kind of a modality from its number of dimensions (with the sample axis)
KIND_BY_NDIM = {2: "vector", 3: "sequence", 4: "image"}


def check_modalities(
    split: Mapping[str, Any], *, source: str, split_name: str, labels: Any = None
) -> int:
    """Check one split: float arrays with a batch axis, equal row counts, finite values.

    Args:
        split: modality name -> array-like (N, ...).
        source: the file (or dataset) the arrays came from, named in the error.
        split_name: ``"train"`` / ``"test"``, named in the error.
        labels: optional (N,) labels, checked for the same row count and finite values.
    Returns:
        the common row count N.
    Raises:
        DataError: one line naming ``source``, the array and what was expected.
    """
    if len(split) < 2:
        raise DataError(
            f"{source}: expected at least 2 modalities, got {len(split)} ({', '.join(split)})"
        )
    n_ref: int | None = None
    ref = ""
    for name, x in split.items():
        if not isinstance(x, torch.Tensor):
            raise DataError(
                f"{source}: array {name!r} ({split_name}) is a {type(x).__name__}, "
                "expected a float tensor"
            )
        if x.dim() < 2 or x.dim() > 4:
            raise DataError(
                f"{source}: array {name!r} ({split_name}) has shape {tuple(x.shape)}, expected "
                "(N, D) vectors, (N, T, D) sequences or (N, C, H, W) images"
            )
        if not x.is_floating_point():
            raise DataError(
                f"{source}: array {name!r} ({split_name}) has dtype {x.dtype}, expected floats"
            )
        if 0 in x.shape[1:]:
            raise DataError(
                f"{source}: array {name!r} ({split_name}) has shape {tuple(x.shape)}: no "
                "features per sample"
            )
        n = int(x.shape[0])
        if n_ref is None:
            n_ref, ref = n, name
        elif n != n_ref:
            raise DataError(
                f"{source}: modalities have different lengths in the {split_name} split: "
                f"{name!r} has {n} rows, {ref!r} has {n_ref}; rows must be aligned samples"
            )
        _check_finite(x, f"{source}: array {name!r} ({split_name})")
    if labels is not None:
        if labels.shape[0] != n_ref:
            raise DataError(
                f"{source}: labels ({split_name}) have {labels.shape[0]} rows, the modalities "
                f"{n_ref}"
            )
        if labels.is_floating_point():
            _check_finite(labels, f"{source}: labels ({split_name})")
    return int(n_ref or 0)


def _check_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten()
        raise DataError(
            f"{what} holds {int(bad.sum())} NaN/Inf value(s) (first in row {int(rows[0])}); "
            "expected finite features"
        )


@dataclass(frozen=True)
class MultimodalData:
    """A train/test split of M aligned modalities.

    Attributes:
        name: dataset name.
        train, test: modality name -> float32 tensor (N, ...) (read-only mappings; same keys,
            same order, rows aligned across modalities).
        kinds: modality name -> ``"vector"`` | ``"sequence"`` | ``"image"``.
        train_y, test_y: labels (N,): int64 classes, float32 targets, or ``None``.
        task: ``"classification"``, ``"regression"`` or ``None`` (no labels).
        classes: class names (classification).
        source: where the data came from (named in errors).
    """

    name: str
    train: Mapping[str, torch.Tensor]
    test: Mapping[str, torch.Tensor]
    kinds: Mapping[str, str]
    train_y: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    task: str | None = None
    classes: tuple[str, ...] = ()
    source: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        src = self.source or self.name
        if list(self.train) != list(self.test):
            raise DataError(
                f"{src}: the train and test splits have different modalities: "
                f"{list(self.train)} vs {list(self.test)}"
            )
        if set(self.kinds) != set(self.train):
            raise DataError(
                f"{src}: kinds name {sorted(self.kinds)}, modalities {list(self.train)}"
            )
        for m, k in self.kinds.items():
            if k not in KINDS:
                raise DataError(f"{src}: modality {m!r} has kind {k!r}, expected one of {KINDS}")
        if (self.train_y is None) != (self.test_y is None) or (self.task is None) != (
            self.train_y is None
        ):
            raise DataError(f"{src}: labels and task must be given for both splits or neither")
        if self.task is not None and self.task not in TASKS:
            raise DataError(f"{src}: task {self.task!r}, expected one of {TASKS}")
        check_modalities(self.train, source=src, split_name="train", labels=self.train_y)
        check_modalities(self.test, source=src, split_name="test", labels=self.test_y)
        for m in self.train:
            if self.train[m].shape[1:] != self.test[m].shape[1:]:
                raise DataError(
                    f"{src}: array {m!r} has per-sample shape {tuple(self.train[m].shape[1:])} "
                    f"in train and {tuple(self.test[m].shape[1:])} in test"
                )
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))
        object.__setattr__(self, "test", MappingProxyType(dict(self.test)))
        object.__setattr__(self, "kinds", MappingProxyType(dict(self.kinds)))
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.train)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shape(self, modality: str) -> tuple[int, ...]:
        """Per-sample shape of ``modality`` (without the batch axis)."""
        return tuple(self.train[modality].shape[1:])

    @property
    def num_train(self) -> int:
        return int(next(iter(self.train.values())).shape[0])

    @property
    def num_test(self) -> int:
        return int(next(iter(self.test.values())).shape[0])

    def __repr__(self) -> str:
        mods = ", ".join(f"{m}:{self.kinds[m]}{list(self.shape(m))}" for m in self.modalities)
        lab = f", {self.task} ({self.num_classes} classes)" if self.task == "classification" else ""
        if self.task == "regression":
            lab = ", regression"
        return (
            f"MultimodalData({self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"modalities=[{mods}]{lab})"
        )


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random train/test partition of ``range(n)``: (train_idx, test_idx), sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    n_test = int(round(n * test_fraction))
    if n_test < 2 or n - n_test < 2:
        raise DataError(
            f"test_fraction: {test_fraction} of {n} samples leaves fewer than 2 in a split"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values
