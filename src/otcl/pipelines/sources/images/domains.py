"""Multi-domain image data: every image has a class *and* a domain.

The layout is that of PACS, Office-Home and DomainNet::

    <root>/<domain>/<class>/<image>        e.g. pacs/sketch/dog/pic_001.jpg

as a directory or a ``.tar``/``.tar.gz``/``.tgz`` archive of one (read without extracting it;
a common prefix such as ``pacs/`` is allowed). Domains and classes are sorted by name; the class
index space is the union over the domains.

* **A domain missing a class** is kept: that domain simply has no images of the class, and
  :attr:`DomainData.missing` lists ``{domain: [classes]}`` (a leave-one-domain-out probe then
  tests that domain on the classes it has).
* **An empty domain** (a domain folder with no images, or only unreadable ones skipped) is
  refused with one :class:`DataError` line naming it, as is data with fewer than two domains.
* **An image that does not decode** raises one :class:`DataError` line naming the file; with
  ``skip_corrupt=True`` it is skipped with a warning and listed in ``skipped``.

Each domain is split into train and test per class (``test_fraction``, a fixed ``seed``), so both
splits hold every domain and class in proportion; a (domain, class) group of one image goes to
train. :func:`otcl.pipelines.sources.images.styles.style_domains` builds the offline stand-in
(four style domains) in the same :class:`DomainData`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common import DataError
from .datasets import STATS
from .reading import IMAGE_EXTS, Decoder, iter_files, stack_images

__all__ = ["DomainData", "load_domain_folder", "split_by_domain"]


@dataclass
class DomainData:
    """Train/test splits of uint8 images (N, C, H, W) with classes ``*_y`` (N,) and domains
    ``*_d`` (N,), both int64 indices into :attr:`classes` and :attr:`domains`; ``missing``:
    ``{domain: [classes it has no image of]}``; ``skipped``: unreadable files left out."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    train_d: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_d: torch.Tensor
    classes: list[str]
    domains: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    missing: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: where each image (train, then test) came from in a derived data set (the stand-in's
    #: source indices), else None
    source: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def ssl_images(self) -> torch.Tensor:
        """The images self-supervised training draws from (the train split of every domain)."""
        return self.train_x

    def __repr__(self) -> str:
        miss = f", missing={self.missing}" if self.missing else ""
        return (
            f"DomainData({self.name!r}, train={self.train_x.shape[0]}, "
            f"test={self.test_x.shape[0]}, shape={self.image_shape}, classes={self.num_classes}, "
            f"domains={self.domains}{miss})"
        )


def split_by_domain(
    x: torch.Tensor,
    y: torch.Tensor,
    d: torch.Tensor,
    *,
    test_fraction: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices: each (domain, class) group shuffled with ``seed`` and split,
    ``ceil(test_fraction * n)`` to test except for groups of one image (train)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    key = d * (int(y.max()) + 1) + y
    for k in torch.unique(key).tolist():
        idx = torch.nonzero(key == k).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = 0 if idx.numel() < 2 else math.ceil(test_fraction * idx.numel())
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def load_domain_folder(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    mode: str = "RGB",
    test_fraction: float = 0.25,
    seed: int = 0,
    skip_corrupt: bool = False,
    name: str = "domains",
) -> DomainData:
    """Read ``<root>/<domain>/<class>/<image>`` from a directory or a tar archive (see the
    module docstring) and split every domain into train and test.

    All images must share one size unless ``image_size`` is given (then each is resized to a
    square of that side).

    Raises:
        DataError: a missing path, an unreadable archive, an image that does not decode (unless
            ``skip_corrupt``), images of different sizes, an empty domain, fewer than two
            domains -- each in one line naming the file, the folder or the domain.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"data_dir: expected a <root>/<domain>/<class>/<image> directory or archive, "
            f"got {str(p)!r}"
        )
    items = iter_files(p, folders=True)
    folders: set[tuple[str, ...]] = set()
    found: list[tuple[tuple[str, ...], str, str, str, bytes | Path]] = []
    for fname, data in items:
        parts = _parts(fname)
        if data is None:
            folders.add(tuple(parts))
            continue
        if any(s.startswith(".") for s in parts) or not parts[-1].lower().endswith(IMAGE_EXTS):
            continue
        if len(parts) < 3:
            raise DataError(
                f"{fname}: an image outside a <domain>/<class>/ folder; expected the layout "
                "<root>/<domain>/<class>/<image>"
            )
        found.append((tuple(parts[:-3]), parts[-3], parts[-2], fname, data))
    if not found:
        raise DataError(
            f"data_dir: found no images in {str(p)!r}; expected <root>/<domain>/<class>/<image>"
        )
    prefixes = {f[0] for f in found}
    if len(prefixes) > 1:
        a, b = sorted(prefixes)[:2]
        raise DataError(
            f"data_dir: images at different depths ({'/'.join(a) or '.'} and "
            f"{'/'.join(b) or '.'}); expected every image at <root>/<domain>/<class>/<image>"
        )
    prefix = prefixes.pop()
    domain_dirs = {f[-1] for f in folders if len(f) == len(prefix) + 1 and f[:-1] == prefix}
    domain_dirs = {dname for dname in domain_dirs if not dname.startswith(".")}
    images: list[np.ndarray] = []
    labels: list[tuple[str, str]] = []
    decode = Decoder(mode, image_size, skip_corrupt)
    for _, dom, cls, fname, data in found:
        domain_dirs.add(dom)
        arr = decode(data, str(data) if isinstance(data, Path) else f"{p}:{fname}")
        if arr is not None:
            images.append(arr)
            labels.append((dom, cls))
    domains = sorted(domain_dirs)
    have = {dom for dom, _ in labels}
    for dom in domains:
        if dom not in have:
            raise DataError(
                f"data_dir: domain {dom!r} in {str(p)!r} holds no readable images; remove it or "
                "add <domain>/<class>/<image> files"
            )
    if len(domains) < 2:
        raise DataError(
            f"data_dir: found one domain ({domains[0]!r}) in {str(p)!r}; expected at least two "
            "<root>/<domain>/ folders"
        )
    classes = sorted({c for _, c in labels})
    pairs = set(labels)
    missing = {dom: [c for c in classes if (dom, c) not in pairs] for dom in domains}
    missing = {dom: cs for dom, cs in missing.items() if cs}
    x = stack_images(images)
    ci = {c: i for i, c in enumerate(classes)}
    di = {dom: i for i, dom in enumerate(domains)}
    y = torch.tensor([ci[c] for _, c in labels], dtype=torch.int64)
    d = torch.tensor([di[dom] for dom, _ in labels], dtype=torch.int64)
    tr, te = split_by_domain(x, y, d, test_fraction=test_fraction, seed=seed)
    mean, std = STATS["imagefolder"] if x.shape[1] == 3 else ((0.5,), (0.5,))
    return DomainData(
        name, x[tr], y[tr], d[tr], x[te], y[te], d[te], classes, domains, mean, std,
        missing=missing, skipped=decode.skipped,
    )  # fmt: skip
