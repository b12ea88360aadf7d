"""Images cut into patch-modalities: each of ``k`` equal patches of an image is one modality.

The embedded default of ``otcl multimodal``: scikit-learn's digits (8x8) in four 4x4 quadrants;
MNIST, CIFAR and ImageFolder copies through the shared image datasets
(:mod:`otcl.pipelines.sources.images`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..sources.common import DataError
from ..sources.images import load_dataset
from .dataset import MultimodalData

__all__ = ["patch_grid", "split_patches", "load_split_images"]


# -- images cut into patches ---------------------------------------------------------------
def patch_grid(k: int, height: int, width: int) -> tuple[int, int]:
    """Rows x columns of ``k`` equal patches, as square as possible (rows <= columns).

    2 -> 1 x 2 (left/right halves), 4 -> 2 x 2 (quadrants), 8 -> 2 x 4, 16 -> 4 x 4.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"patches: expected an integer >= 2, got {k!r}")
    rows = max(r for r in range(1, int(k**0.5) + 1) if k % r == 0)
    cols = k // rows
    if height % rows or width % cols:
        raise ValueError(
            f"patches: {k} patches make a {rows} x {cols} grid, which does not divide the "
            f"{height} x {width} images evenly"
        )
    return rows, cols


def split_patches(images: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Cut images (N, C, H, W) into ``k`` equal patches, row-major: ``{"r0c0": (N, C, h, w)}``."""
    if images.dim() != 4:
        raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
    rows, cols = patch_grid(k, images.shape[2], images.shape[3])
    h, w = images.shape[2] // rows, images.shape[3] // cols
    return {
        f"r{i}c{j}": images[:, :, i * h : (i + 1) * h, j * w : (j + 1) * w].contiguous()
        for i in range(rows)
        for j in range(cols)
    }


def load_split_images(
    dataset: str = "digits",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    patches: int = 4,
    download: bool = True,
    max_train: int | None = None,
) -> MultimodalData:
    """An image dataset cut into ``patches`` patch-modalities, labels = the image classes.

    Pixels are scaled to [0, 1] and standardised with the dataset's channel statistics before
    cutting, so each patch is a float (N, C, h, w) tensor that DMM can mix in input space.

    Args:
        dataset: ``digits`` (bundled, offline), or an image-pipeline dataset (``cifar10``,
            ``cifar100``, ``svhn``, ``imagefolder``; ``mnist`` through torchvision or an
            ImageFolder copy) read by :func:`otcl.pipelines.sources.images.load_dataset`.
        data_dir: local ImageFolder directory / archive, or the torchvision download root.
        patches: number of patches k (2 = halves, 4 = quadrants, ...).
        max_train: keep only the first ``max_train`` training images (quick runs).
    """
    if dataset == "mnist":
        img = _mnist(data_dir, download)
    else:
        img = load_dataset(dataset, data_dir, download=download)
    mean = torch.tensor(img.mean).view(1, -1, 1, 1)
    std = torch.tensor(img.std).view(1, -1, 1, 1)

    def prep(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return split_patches((x.float() / 255.0 - mean) / std, patches)

    xtr, ytr = img.train_x, img.train_y
    if max_train is not None:
        xtr, ytr = xtr[:max_train], ytr[:max_train]
    train, test = prep(xtr), prep(img.test_x)
    return MultimodalData(
        name=f"{dataset}-patches{patches}",
        train=train,
        test=test,
        kinds={m: "image" for m in train},
        train_y=ytr.long(),
        test_y=img.test_y.long(),
        task="classification",
        classes=tuple(img.classes),
        source=str(data_dir) if data_dir is not None else dataset,
        info={"image_shape": tuple(img.train_x.shape[1:]), "patches": patches},
    )


def _mnist(data_dir: str | os.PathLike[str] | None, download: bool):
    """MNIST: an ImageFolder copy (``data_dir`` with ``train/``), else torchvision."""
    from ..sources.images import ImageData

    if data_dir is not None and (Path(data_dir).is_file() or (Path(data_dir) / "train").is_dir()):
        img = load_dataset("imagefolder", data_dir)
        gray = img.train_x.float().mean(1, keepdim=True).round().to(torch.uint8)
        test = img.test_x.float().mean(1, keepdim=True).round().to(torch.uint8)
        return ImageData(
            "mnist", gray, img.train_y, test, img.test_y, img.classes, (0.1307,), (0.3081,)
        )
    try:
        # the optional extra otcl[vision]; not installed where the types are checked
        import torchvision.datasets as tvd  # pyright: ignore[reportMissingImports]
    except ImportError:
        raise DataError(
            "dataset: 'mnist' is downloaded through torchvision, which is not installed; "
            "install otcl[vision], or pass --data-dir an ImageFolder copy"
        ) from None
    root = Path(data_dir) if data_dir is not None else Path.home() / ".cache" / "otcl" / "data"
    try:
        tr = tvd.MNIST(root, train=True, download=download)
        te = tvd.MNIST(root, train=False, download=download)
    except RuntimeError as e:
        raise DataError(f"dataset: cannot load 'mnist' from {str(root)!r} ({e})") from None
    classes = [str(i) for i in range(10)]
    return ImageData(
        "mnist",
        torch.as_tensor(np.asarray(tr.data))[:, None].contiguous(),
        torch.as_tensor(np.asarray(tr.targets)).long(),
        torch.as_tensor(np.asarray(te.data))[:, None].contiguous(),
        torch.as_tensor(np.asarray(te.targets)).long(),
        classes,
        (0.1307,),
        (0.3081,),
    )


# -- MovieLens items ------------------------------------------------------------------------
