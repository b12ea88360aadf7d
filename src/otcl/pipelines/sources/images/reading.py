"""Image files read from a directory or a tar archive and decoded to ``uint8`` arrays.

What every folder layout (:func:`otcl.pipelines.sources.images.load_image_folder`'s
``<root>/<split>/<class>/<image>``, :func:`otcl.pipelines.sources.images.load_domain_folder`'s
``<root>/<domain>/<class>/<image>``) reads the same way: the files of a directory or an
archive (read without extracting it), each image decoded by Pillow with :class:`Decoder`
(unreadable files raise one :class:`DataError` line naming the file, or are skipped with a
warning; every image must have the first one's shape), and the arrays stacked into one tensor.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ...engine.signals import deferred_signals
from ..common import DataError

__all__ = ["ARCHIVE_EXTS", "IMAGE_EXTS", "Decoder", "iter_files", "stack_images"]

ARCHIVE_EXTS = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _iter_dir(root: Path) -> Iterator[tuple[str, bytes | Path]]:
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()  # a deterministic order, independent of the file system
        for f in sorted(files):
            p = Path(dirpath) / f
            yield str(p.relative_to(root)).replace(os.sep, "/"), p


def _iter_tree(root: Path) -> Iterator[tuple[str, bytes | Path | None]]:
    """The folders of ``root`` as ``(name/, None)``, then its files."""
    for dirpath, dirs, _ in os.walk(root):
        for sub in sorted(dirs):
            rel = (Path(dirpath) / sub).relative_to(root)
            yield str(rel).replace(os.sep, "/") + "/", None
    yield from _iter_dir(root)


def _iter_tar(path: Path, folders: bool) -> Iterator[tuple[str, bytes | None]]:
    """``(name, bytes)`` of the archive's files (and ``(name/, None)`` of its folders)."""
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"data_dir: cannot open archive {str(path)!r}: {e}") from None
    with tf:
        try:
            for m in tf:
                if m.isdir() and folders:
                    yield m.name.rstrip("/") + "/", None
                elif m.isfile():
                    fh = tf.extractfile(m)
                    if fh is not None:
                        yield m.name, fh.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(
                f"data_dir: archive {str(path)!r} is truncated or corrupt: {e}"
            ) from None


def iter_files(path: Path, folders: bool = False) -> Iterator[tuple[str, bytes | Path | None]]:
    """``(name relative to path, contents or file)`` of the files of a directory or a
    ``.tar``/``.tar.gz``/``.tgz`` archive, ``/``-separated; with ``folders``, each folder too
    as ``(name/, None)``. ``DataError`` for anything else, or an archive that does not read."""
    if path.is_dir():
        return _iter_tree(path) if folders else _iter_dir(path)
    if path.name.endswith(ARCHIVE_EXTS):
        return _iter_tar(path, folders)
    raise DataError(
        f"data_dir: expected a directory or a .tar/.tar.gz/.tgz archive, got {str(path)!r}"
    )


def _decode(data: bytes | Path, name: str, mode: str, size: int | None) -> np.ndarray:
    with deferred_signals():
        from PIL import Image, UnidentifiedImageError

    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(src) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)  # type: ignore[attr-defined]
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


class Decoder:
    """Decodes the images of one data set to (H, W, C) ``uint8`` arrays of one shape.

    Args:
        mode: Pillow's colour mode (``"RGB"``).
        size: resize each image to a square of this side (None: as stored; then every image
            must have the first one's size).
        skip_corrupt: an image that does not decode is skipped with a warning and listed in
            :attr:`skipped` instead of raising.
    """

    mode: str
    size: int | None
    skip_corrupt: bool

    def __init__(self, mode: str, size: int | None, skip_corrupt: bool) -> None:
        self.mode, self.size, self.skip_corrupt = mode, size, skip_corrupt
        #: the files left out as unreadable
        self.skipped: list[str] = []
        self._first: tuple[tuple[int, ...], str] | None = None

    def __call__(self, data: bytes | Path, where: str) -> np.ndarray | None:
        """The image ``data`` (``where`` names it in messages) decoded; None: skipped.

        Raises:
            DataError: it does not decode (without ``skip_corrupt``), or its shape differs
                from the first image's.
        """
        try:
            arr = _decode(data, where, self.mode, self.size)
        except DataError as e:
            if not self.skip_corrupt:
                raise DataError(
                    f"{e}; pass skip_corrupt=True (--skip-corrupt) to skip it"
                ) from None
            warnings.warn(f"skipping unreadable image {e}", stacklevel=3)  # the loader's caller
            self.skipped.append(where)
            return None
        if self._first is None:
            self._first = (arr.shape, where)
        elif arr.shape != self._first[0]:
            raise DataError(
                f"{where}: image shape {arr.shape[:2]} differs from {self._first[0][:2]} of "
                f"{self._first[1]}; pass image_size (--set data.image_size=N) to resize all images"
            )
        return arr


def stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, C) arrays as one (N, C, H, W) tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
