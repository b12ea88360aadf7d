r"""The offline stand-in for a domain dataset: four style domains made from one labelled source.

:func:`style_domains` deals the source images out to four domains -- disjoint subsets, each
stratified by class, so no image appears in two domains -- and renders each subset in its style:

* ``photo`` -- the image as it is;
* ``sketch`` -- a pencil edge map: dark Sobel edges of the grey image on white paper;
* ``cartoon`` -- flat posterised colours (4 levels per channel of a smoothed, saturated image)
  with black outlines where the edges are strong;
* ``painting`` -- strong colour and texture shifts: a random hue rotation and saturation boost,
  a brush-stroke canvas texture and colour noise.

A grey source (scikit-learn's 8x8 digits) is first upscaled (``size``) and, for ``cartoon`` and
``painting``, coloured with a random pair of colours per image, so the four styles differ
visibly there too. Everything is drawn from generators seeded by ``(seed, domain)``: the same
arguments give the same images, bit for bit.

:func:`save_domain_grids` writes one sample grid per domain as a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .domains import DomainData, split_by_domain

__all__ = ["STYLES", "style_domains", "stylize", "save_domain_grids"]

STYLES = ("photo", "sketch", "cartoon", "painting")


# -- pixel operations on float images (N, 3, H, W) in [0, 1] --------------------------------
def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blur(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


def _edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel edge magnitude of the grey image (N, 1, H, W), scaled to [0, 1] per image."""
    g = F.pad(_gray(x), (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype)
    k = torch.stack([kx, kx.T]).unsqueeze(1)
    e = F.conv2d(g, k).pow(2).sum(1, keepdim=True).sqrt()
    return e / e.amax((2, 3), keepdim=True).clamp_min(1e-6)


def _colorize(g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Grey (N, 1, H, W) -> colour: per image a random dark and a random bright saturated
    colour at the two ends of the grey ramp."""
    n = g.shape[0]
    hue = torch.rand(n, 2, generator=gen) * 2 * math.pi
    rgb = 0.5 + 0.5 * torch.stack([torch.cos(hue + s) for s in (0.0, 2.1, 4.2)], -1)  # (n,2,3)
    lo = 0.35 * rgb[:, 0]
    hi = 0.35 + 0.65 * rgb[:, 1]
    return lo.view(n, 3, 1, 1) + g * (hi - lo).view(n, 3, 1, 1)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor, saturation: float) -> torch.Tensor:
    """Rotate the colours of each image about the grey axis by ``angle`` (N,) radians and scale
    their distance from grey by ``saturation``."""
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    u = torch.full((3, 1), 1 / math.sqrt(3.0), dtype=x.dtype)
    uu = u @ u.T
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    rot = c * torch.eye(3) + s * cross + (1 - c) * uu  # (N, 3, 3), Rodrigues
    y = torch.einsum("nij,njhw->nihw", rot, x)
    g = _gray(y)
    return (g + saturation * (y - g)).clamp(0, 1)


def photo(x: torch.Tensor, gen: torch.Generator, grey: bool) -> torch.Tensor:
    return x


def sketch(x: torch.Tensor, gen: torch.Generator, grey: bool) -> torch.Tensor:
    e = _edges(_blur(x) if x.shape[-1] >= 24 else x)
    paper = 0.92 + 0.08 * torch.rand(x.shape[0], 1, 1, 1, generator=gen)
    return (paper - 1.4 * e).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def cartoon(x: torch.Tensor, gen: torch.Generator, grey: bool) -> torch.Tensor:
    base = _colorize(_gray(x), gen) if grey else x
    g = _gray(base)
    base = (g + 1.6 * (base - g)).clamp(0, 1)  # saturated
    flat = torch.floor(_blur(base) * 3.999) / 3.0  # 4 levels per channel
    outline = (_edges(x) > 0.35).to(x.dtype)
    return flat * (1 - outline)


def painting(x: torch.Tensor, gen: torch.Generator, grey: bool) -> torch.Tensor:
    n, _, h, w = x.shape
    base = _colorize(_gray(x), gen) if grey else x
    angle = (0.6 + 0.8 * torch.rand(n, generator=gen)) * math.pi  # 108 to 252 degrees
    col = _hue_rotate(base, angle, saturation=1.8)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    freq = 3.0 + 4.0 * torch.rand(n, 2, 1, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
    strokes = torch.sin(2 * math.pi * (freq[:, 0] * xx + freq[:, 1] * yy) + phase)  # (n, h, w)
    noise = _blur(torch.rand(n, 3, h, w, generator=gen), 3) - 0.5
    tex = 0.75 + 0.25 * strokes.unsqueeze(1)
    return (col * tex + 0.45 * noise).clamp(0, 1)


_STYLE_FNS: dict[str, Callable[[torch.Tensor, torch.Generator, bool], torch.Tensor]] = {
    "photo": photo,
    "sketch": sketch,
    "cartoon": cartoon,
    "painting": painting,
}


def stylize(images: torch.Tensor, style: str, seed: int, size: int | None = None) -> torch.Tensor:
    """uint8 images (N, C, H, W), C in {1, 3} -> uint8 (N, 3, size, size) in ``style``
    (deterministic in ``seed``)."""
    if style not in _STYLE_FNS:
        raise ValueError(f"style: expected one of {', '.join(STYLES)}, got {style!r}")
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8:
        raise ValueError(
            f"images: expected uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    grey = images.shape[1] == 1
    x = images.float().div(255).expand(-1, 3, -1, -1)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    gen = torch.Generator().manual_seed(seed)
    y = _STYLE_FNS[style](x.contiguous(), gen, grey)
    return (y * 255).round().clamp(0, 255).to(torch.uint8)


def style_domains(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    *,
    name: str = "styles",
    size: int | None = None,
    per_domain: int | None = None,
    styles: tuple[str, ...] = STYLES,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> DomainData:
    """Four (``styles``) domains from disjoint, class-stratified subsets of the source ``x``
    (N, C, H, W) uint8 with labels ``y`` (N,); ``per_domain`` caps each domain's images (about
    that many, each class in its share of the source); ``size`` resizes to a square.

    The source indices of each domain's images are ``DomainData.source`` (train, then test
    order is the split's), so disjointness can be checked.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"y: expected {x.shape[0]} labels (one per image), got {y.shape[0]}")
    k = len(styles)
    if per_domain is not None and per_domain < 1:
        raise ValueError(f"per_domain: expected an integer >= 1 or None, got {per_domain!r}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_total = x.shape[0]
    parts: list[list[torch.Tensor]] = [[] for _ in range(k)]
    for c in range(len(classes)):
        idx = perm[y[perm] == c]
        cap = None if per_domain is None else math.ceil(per_domain * idx.numel() / n_total)
        for j in range(k):
            parts[j].append(idx[j::k][:cap])
    src = [torch.cat(p).sort().values for p in parts]
    xs, ys, ds = [], [], []
    for j, (style, idx) in enumerate(zip(styles, src, strict=True)):
        xs.append(stylize(x[idx], style, seed * 1009 + j, size))
        ys.append(y[idx])
        ds.append(torch.full((idx.numel(),), j, dtype=torch.int64))
    ax, ay, ad, asrc = torch.cat(xs), torch.cat(ys), torch.cat(ds), torch.cat(src)
    tr, te = split_by_domain(ax, ay, ad, test_fraction=test_fraction, seed=seed)
    data = DomainData(
        name, ax[tr], ay[tr], ad[tr], ax[te], ay[te], ad[te], list(classes), list(styles),
        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), source=torch.cat([asrc[tr], asrc[te]]),
    )  # fmt: skip
    return data


def save_domain_grids(
    data: DomainData, out: str | os.PathLike[str], *, n: int = 32, per_row: int = 8, scale: int = 3
) -> list[Path]:
    """One PNG per domain, ``<out>/domain-<name>.png``: its first ``n`` train images (classes in
    turn) in a grid, each pixel drawn ``scale`` times larger. Needs Pillow."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, dom in enumerate(data.domains):
        idx = torch.nonzero(data.train_d == j).flatten()
        order = sorted(idx.tolist(), key=lambda i: (int(data.train_y[i]), i))
        by_class: dict[int, list[int]] = {}
        for i in order:
            by_class.setdefault(int(data.train_y[i]), []).append(i)
        pick: list[int] = []
        while len(pick) < n and any(by_class.values()):
            for c in sorted(by_class):
                if by_class[c] and len(pick) < n:
                    pick.append(by_class[c].pop(0))
        imgs = data.train_x[pick]
        if imgs.shape[1] == 1:
            imgs = imgs.expand(-1, 3, -1, -1)
        rows = math.ceil(len(pick) / per_row)
        h, w = imgs.shape[-2:]
        grid = torch.full((3, rows * (h + 1) + 1, per_row * (w + 1) + 1), 255, dtype=torch.uint8)
        for t, im in enumerate(imgs):
            r, c = divmod(t, per_row)
            grid[
                :, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w
            ] = im
        pil = Image.fromarray(grid.permute(1, 2, 0).numpy())
        # Image.NEAREST is set at import (invisible to the checker); Image.Resampling needs
        # Pillow >= 9.1
        nearest = Image.NEAREST  # pyright: ignore[reportAttributeAccessIssue]
        pil = pil.resize((pil.width * scale, pil.height * scale), nearest)
        path = out / f"domain-{dom}.png"
        pil.save(path)
        paths.append(path)
    return paths
