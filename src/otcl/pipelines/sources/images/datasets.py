"""Datasets as decoded ``uint8`` tensors (N, C, H, W) that can live on the training device.

* ``digits``: scikit-learn's bundled 8x8 digits (no download), a fixed stratified 75/25 split.
* ``cifar10``, ``cifar100``, ``stl10``, ``svhn``: torchvision (downloaded into ``data_dir`` or
  ``~/.cache/otcl/data``), or read from a local ImageFolder copy given as ``data_dir``.
* ``imagefolder``: any directory ``<root>/train/<class>/*.jpg`` and ``<root>/test/<class>/*``
  (``val/`` is accepted for ``test/``), or a ``.tar``/``.tar.gz``/``.tgz`` archive of one, read
  without extracting it. Decoded arrays are cached (``cache_dir``) so the next run starts at once.

Unreadable images raise :class:`DataError` naming the file; with ``skip_corrupt=True`` they are
skipped with a warning instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...engine.signals import deferred_signals
from ...files import atomic_write_bytes
from ..common import DataError
from .reading import ARCHIVE_EXTS, IMAGE_EXTS, Decoder, iter_files, stack_images

__all__ = ["ImageData", "DataError", "load_dataset", "load_image_folder", "DATASETS", "STATS"]

DATASETS = ("digits", "cifar10", "cifar100", "stl10", "svhn", "imagefolder")

#: per-channel mean and std (of [0, 1] pixels) used for normalisation
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3,), (0.4,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class ImageData:
    """A labelled train/test split of uint8 images (N, C, H, W) and int64 labels (N,).

    ``extra_x`` holds unlabelled images used only for self-supervised training (STL-10).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra_x: torch.Tensor | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def ssl_images(self) -> torch.Tensor:
        """The images self-supervised training draws from (train + unlabelled extra)."""
        if self.extra_x is None:
            return self.train_x
        return torch.cat([self.train_x, self.extra_x])

    def __repr__(self) -> str:
        extra = "" if self.extra_x is None else f", extra={self.extra_x.shape[0]}"
        return (
            f"ImageData({self.name!r}, train={self.train_x.shape[0]}, test={self.test_x.shape[0]}"
            f"{extra}, shape={self.image_shape}, classes={self.num_classes})"
        )


# -- digits --------------------------------------------------------------------------------
def _digits() -> ImageData:
    try:
        with deferred_signals():  # Ctrl-C inside a C extension's import reads as ImportError
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError(
            "dataset: 'digits' needs scikit-learn; install otcl[train] (pip install 'otcl[train]')"
        ) from None
    d: Any = load_digits()  # a Bunch (the stubs also allow the (X, y) tuple)
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = STATS["digits"]
    return ImageData(
        "digits",
        torch.from_numpy(xtr),
        torch.from_numpy(ytr),
        torch.from_numpy(xte),
        torch.from_numpy(yte),
        [str(i) for i in range(10)],
        mean,
        std,
    )


# -- ImageFolder directories and archives --------------------------------------------------
_SPLIT_NAMES = {"train": "train", "test": "test", "val": "test", "valid": "test"}


def _locate(name: str) -> tuple[str, str] | None:
    """``a/b/train/cat/x.jpg`` -> ("train", "cat"); None for files outside a split/class dir."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_EXTS):
        return None
    split = _SPLIT_NAMES.get(parts[-3].lower())
    return None if split is None else (split, parts[-2])


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    mode: str = "RGB",
    skip_corrupt: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    name: str = "imagefolder",
) -> ImageData:
    """Read ``<root>/{train,test}/<class>/<image>`` from a directory or a tar archive.

    Classes are sorted by name (torchvision's ImageFolder order). All images must share one size
    unless ``image_size`` is given (then every image is resized to a square of that side).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data_dir: expected an ImageFolder directory or archive, got {str(p)!r}")
    cache = _cache_path(p, image_size, mode, skip_corrupt, cache_dir)
    if cache is not None and cache.exists():
        try:
            return _load_cache(cache, name)
        except Exception as e:  # a stale or damaged cache is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable cache {cache}: {e}", stacklevel=2)
    items = iter_files(p)
    if progress and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm

            items = tqdm(items, desc=f"decoding {p.name}", unit="img", leave=False)
        except ImportError:
            pass
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[str]] = {"train": [], "test": []}
    decode = Decoder(mode, image_size, skip_corrupt)
    for fname, data in items:
        loc = _locate(fname)
        if loc is None or data is None:
            continue
        split, cls = loc
        arr = decode(data, f"{p}:{fname}" if not p.is_dir() else str(p / fname))
        if arr is not None:
            images[split].append(arr)
            labels[split].append(cls)
    if not images["train"]:
        raise DataError(
            f"data_dir: found no images under train/<class>/ in {str(p)!r}; expected the layout "
            "<root>/train/<class>/<image> and <root>/test/<class>/<image>"
        )
    if not images["test"]:
        raise DataError(
            f"data_dir: found no images under test/<class>/ (or val/<class>/) in {str(p)!r}"
        )
    classes = sorted(set(labels["train"]) | set(labels["test"]))
    index = {c: i for i, c in enumerate(classes)}

    def stack(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = stack_images(images[split])
        y = torch.tensor([index[c] for c in labels[split]], dtype=torch.int64)
        return x, y

    (xtr, ytr), (xte, yte) = stack("train"), stack("test")
    stats = STATS.get(name, STATS["imagefolder"])
    data = ImageData(name, xtr, ytr, xte, yte, classes, *stats, skipped=decode.skipped)
    if cache is not None:
        _save_cache(cache, data)
    return data


#: ``cache_dir`` values that turn the decoded-image cache off (None: the default location)
_NO_CACHE = ("none", "off", "false", "no", "")


def _cache_path(p: Path, size, mode, skip, cache_dir) -> Path | None:
    if cache_dir is None:
        cache_dir = os.environ.get("OTCL_CACHE", str(Path.home() / ".cache" / "otcl"))
    if str(cache_dir).strip().lower() in _NO_CACHE:
        return None
    st = p.stat()
    key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}|{mode}|{skip}|v1"
    if p.is_dir():  # a directory's mtime misses edits deep inside; include the file count
        key += f"|{sum(len(f) for _, _, f in os.walk(p))}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{p.name}-{digest}.npz"


def _save_cache(cache: Path, data: ImageData) -> None:
    buf = io.BytesIO()
    np.savez(
        buf,
        train_x=data.train_x.numpy(),
        train_y=data.train_y.numpy(),
        test_x=data.test_x.numpy(),
        test_y=data.test_y.numpy(),
        classes=np.array(data.classes),
        skipped=np.array(data.skipped, dtype=str),
    )
    try:
        atomic_write_bytes(cache, buf.getvalue())
    except OSError as e:
        warnings.warn(f"could not write the decoded-image cache {cache}: {e}", stacklevel=2)


def _load_cache(cache: Path, name: str) -> ImageData:
    with np.load(cache) as z:
        stats = STATS.get(name, STATS["imagefolder"])
        return ImageData(
            name,
            torch.from_numpy(z["train_x"]),
            torch.from_numpy(z["train_y"]),
            torch.from_numpy(z["test_x"]),
            torch.from_numpy(z["test_y"]),
            [str(c) for c in z["classes"]],
            *stats,
            skipped=[str(s) for s in z["skipped"]],
        )


# -- torchvision ---------------------------------------------------------------------------
def _torchvision(name: str, root: Path, download: bool, unlabeled: bool) -> ImageData:
    try:
        with deferred_signals():
            import torchvision.datasets as tvd  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            f"dataset: {name!r} is downloaded through torchvision, which is not installed; "
            "install otcl[vision], or pass data_dir= (--data-dir) an ImageFolder directory or "
            ".tar.gz of it"
        ) from None

    def arr(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.asarray(ds.data)
        if x.ndim == 4 and x.shape[-1] == 3:  # CIFAR: N, H, W, C
            x = x.transpose(0, 3, 1, 2)
        y = getattr(ds, "targets", None)
        if y is None:
            y = ds.labels
        return torch.from_numpy(np.ascontiguousarray(x)), torch.as_tensor(np.asarray(y)).long()

    try:
        extra = None
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            tr, te = (
                cls(root, train=True, download=download),
                cls(root, train=False, download=download),
            )
            classes = list(tr.classes)
        elif name == "svhn":
            tr = tvd.SVHN(root, split="train", download=download)
            te = tvd.SVHN(root, split="test", download=download)
            classes = [str(i) for i in range(10)]
        else:  # stl10
            tr = tvd.STL10(root, split="train", download=download)
            te = tvd.STL10(root, split="test", download=download)
            classes = list(tr.classes)
            if unlabeled:
                extra = arr(tvd.STL10(root, split="unlabeled", download=download))[0]
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"dataset: cannot load {name!r} from {str(root)!r} ({e}); pass download=True with "
            "internet access, or data_dir= an ImageFolder copy"
        ) from None
    (xtr, ytr), (xte, yte) = arr(tr), arr(te)
    return ImageData(name, xtr, ytr, xte, yte, classes, *STATS[name], extra_x=extra)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    skip_corrupt: bool = False,
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    unlabeled: bool = False,
    progress: bool = False,
) -> ImageData:
    """Load a dataset by name (see the module docstring)."""
    if name not in DATASETS:
        raise DataError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    if name == "digits":
        if data_dir is not None:
            raise DataError("data_dir: the digits dataset is bundled with scikit-learn; got a path")
        return _digits()
    if data_dir is not None and not Path(data_dir).exists() and name != "imagefolder":
        if str(data_dir).endswith(ARCHIVE_EXTS) or not download:
            raise DataError(
                f"data_dir: {str(data_dir)!r} does not exist; expected an ImageFolder directory "
                "or archive" + ("" if download else ", or a download root (with download=True)")
            )
    local = data_dir is not None and (
        Path(data_dir).is_file() or (Path(data_dir) / "train").is_dir() or name == "imagefolder"
    )
    if name == "imagefolder" and data_dir is None:
        raise DataError("data_dir: dataset 'imagefolder' needs a directory or archive, got None")
    if local:
        return load_image_folder(
            data_dir,  # type: ignore[arg-type]
            image_size=image_size,
            skip_corrupt=skip_corrupt,
            cache_dir=cache_dir,
            progress=progress,
            name=name,
        )
    root = Path(data_dir) if data_dir is not None else Path.home() / ".cache" / "otcl" / "data"
    return _torchvision(name, root, download, unlabeled)
