r"""SimCLR augmentations computed for a whole batch at once, on the batch's device.

Images stay resident as ``uint8`` tensors (B, C, H, W) on the training device; each call draws
per-sample random parameters from a ``torch.Generator`` on that device and applies

1. random resized crop (area fraction ``crop_scale``, aspect ratio ``crop_ratio``), optional
   rotation and horizontal flip, all as one affine map per sample sampled with
   ``F.grid_sample`` (bilinear, reflection padding) -- one kernel for the whole batch;
2. colour jitter with probability ``jitter_p``: brightness, contrast, saturation (factors
   uniform in :math:`[1-s, 1+s]`) and hue (shift uniform in :math:`[-h, h]`, in HSV);
3. grayscale with probability ``gray_p``;
4. normalisation with the dataset's mean and std;
5. random erasing with probability ``erase_p`` (off by default): one rectangle per image, of
   area fraction uniform in ``erase_scale`` and aspect ratio log-uniform in ``erase_ratio``, set
   to ``erase_value`` after normalisation (0: the dataset's mean colour), as torchvision's
   ``RandomErasing`` placed after ``Normalize``.

Differences from torchvision's per-image transforms, all deliberate for speed and all small:
a crop whose sampled width or height exceeds the image is clamped to the image (torchvision
re-draws up to 10 times, then falls back to a centre crop); the jitter operations run in the
fixed order brightness, contrast, saturation, hue (torchvision shuffles the order per image);
an erasing rectangle larger than the image is clamped to it (torchvision re-draws up to 10
times, then erases nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Augment", "to_float", "rgb_to_hsv", "hsv_to_rgb", "grayscale"]

_GRAY = (0.299, 0.587, 0.114)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., C, H, W) in [0, 255] -> float32 in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) luma (ITU-R 601, as torchvision)."""
    w = x.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with every channel in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dsafe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc = (maxc - r) / dsafe
    gc = (maxc - g) / dsafe
    bc = (maxc - b) / dsafe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    h6 = (h % 1.0) * 6.0
    k = torch.stack(((5.0 + h6) % 6.0, (3.0 + h6) % 6.0, (1.0 + h6) % 6.0), 1)
    # f(n) = v - v s max(0, min(k, 4 - k, 1)), the closed form of the sector table
    t = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * t


def _range(name: str, values: Sequence[float], fraction: bool = False) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 < lo <= hi`` (and ``hi <= 1`` for a ``fraction``), else ValueError."""
    lo, hi = (float(v) for v in values)
    if not (0 < lo <= hi and (hi <= 1 or not fraction)):
        bound = " <= 1" if fraction else ""
        raise ValueError(f"{name}: expected 0 < lo <= hi{bound}, got {tuple(values)}")
    return lo, hi


class _Draws:
    """Uniform draws for the rows ``offset .. offset + n`` of a batch of ``total``: each call
    draws ``total`` numbers and keeps those rows, so that a shard of a batch gets exactly the
    draws its images get when the whole batch is augmented at once (one process)."""

    def __init__(self, n: int, gen, device, shard: tuple[int, int] | None) -> None:
        offset, total = (0, n) if shard is None else (int(shard[0]), int(shard[1]))
        if offset < 0 or offset + n > total:
            raise ValueError(
                f"shard: expected (offset, total) with 0 <= offset and offset + {n} <= total, "
                f"got {shard}"
            )
        self.rows = slice(offset, offset + n)
        self.total, self.gen, self.device = total, gen, device

    def rand(self) -> torch.Tensor:
        return torch.rand(self.total, generator=self.gen, device=self.device)[self.rows]

    def uniform(self, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * self.rand()


class Augment(nn.Module):
    r"""Random SimCLR views of a uint8 batch, computed batched on its device.

    Args:
        size: output side length (square); defaults to the input size.
        crop_scale: range of the crop's area as a fraction of the image (SimCLR: (0.08, 1)).
        crop_ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter: colour-jitter strengths (brightness, contrast, saturation, hue); hue <= 0.5.
        jitter_p: probability of applying the colour jitter to an image.
        gray_p: probability of converting an image to grayscale (kept with C channels).
        rotate: maximum absolute rotation in degrees (0 = none).
        mean, std: per-channel normalisation.
        erase_p: probability of erasing one random rectangle of an image (0 = never; then no
            random numbers are drawn for it, so the other augmentations are unchanged).
        erase_scale: range of the rectangle's area as a fraction of the image.
        erase_ratio: range of the rectangle's aspect ratio (width / height), log-uniform.
        erase_value: the erased pixels' value after normalisation (0 = the mean colour).

    Call:
        ``aug(x, generator=None, shard=None) -> (B, C, size, size)`` float32, ``x`` (B, C, H, W)
        uint8 (or float in [0, 1]); ``generator`` on ``x.device`` makes the draw reproducible.
        ``shard=(offset, total)``: ``x`` is rows ``offset .. offset + B`` of a batch of
        ``total`` (one rank's share under torchrun); the parameters are drawn for the whole
        batch and those rows kept, so each image is augmented as in one process.
    """

    #: the per-channel normalisation (buffers, not saved in a state dict)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        size: int | None = None,
        *,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        rotate: float = 0.0,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        erase_p: float = 0.0,
        erase_scale: Sequence[float] = (0.02, 0.33),
        erase_ratio: Sequence[float] = (0.3, 3.3),
        erase_value: float = 0.0,
    ) -> None:
        super().__init__()
        lo, hi = _range("crop_scale", crop_scale, fraction=True)
        rlo, rhi = _range("crop_ratio", crop_ratio)
        if len(jitter) != 4 or any(float(j) < 0 for j in jitter) or float(jitter[3]) > 0.5:
            raise ValueError(
                "jitter: expected 4 strengths >= 0 (brightness, contrast, saturation, hue <= 0.5), "
                f"got {tuple(jitter)}"
            )
        elo, ehi = _range("erase_scale", erase_scale, fraction=True)
        erlo, erhi = _range("erase_ratio", erase_ratio)
        if not math.isfinite(float(erase_value)):
            raise ValueError(f"erase_value: expected a finite number, got {erase_value!r}")
        probs = (("flip_p", flip_p), ("jitter_p", jitter_p), ("gray_p", gray_p))
        for name, p in (*probs, ("erase_p", erase_p)):
            if not (0.0 <= float(p) <= 1.0):
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
        if len(mean) != len(std) or any(float(s) <= 0 for s in std):
            raise ValueError(
                f"std: expected positive values, one per mean entry, got mean={mean}, std={std}"
            )
        self.size = size
        self.crop_scale: tuple[float, float] = (lo, hi)
        self.log_ratio: tuple[float, float] = (math.log(rlo), math.log(rhi))
        self.flip_p: float = float(flip_p)
        self.jitter: tuple[float, ...] = tuple(float(j) for j in jitter)
        self.jitter_p: float = float(jitter_p)
        self.gray_p: float = float(gray_p)
        self.rotate: float = float(rotate)
        self.erase_p: float = float(erase_p)
        self.erase_scale: tuple[float, float] = (elo, ehi)
        self.erase_log_ratio: tuple[float, float] = (math.log(erlo), math.log(erhi))
        self.erase_value: float = float(erase_value)
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]), persistent=False)

    # -- parts -----------------------------------------------------------------------------
    def crop_grid(
        self,
        b: int,
        size: int,
        gen: torch.Generator | None,
        device: torch.device | str,
        shard: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Sampling grids (B, size, size, 2) of random resized crops, flips and rotations."""
        draw = _Draws(b, gen, device, shard)
        area = draw.uniform(*self.crop_scale)
        ratio = torch.exp(draw.uniform(*self.log_ratio))
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the side
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1.0 - w) * (2.0 * draw.rand() - 1.0)
        cy = (1.0 - h) * (2.0 * draw.rand() - 1.0)
        flip = draw.rand() < self.flip_p
        sx = torch.where(flip, -w, w)
        theta = torch.zeros(b, 2, 3, device=device)
        if self.rotate > 0:
            ang = draw.uniform(-self.rotate, self.rotate) * (math.pi / 180.0)
            cos, sin = torch.cos(ang), torch.sin(ang)
            theta[:, 0, 0], theta[:, 0, 1] = sx * cos, -h * sin
            theta[:, 1, 0], theta[:, 1, 1] = sx * sin, h * cos
        else:
            theta[:, 0, 0], theta[:, 1, 1] = sx, h
        theta[:, 0, 2], theta[:, 1, 2] = cx, cy
        return F.affine_grid(theta, [b, 1, size, size], align_corners=False)

    def color(
        self, x: torch.Tensor, gen: torch.Generator | None, shard: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Colour jitter (with probability ``jitter_p``) and grayscale (``gray_p``), x in [0, 1]."""
        b, c = x.shape[:2]
        draw = _Draws(b, gen, x.device, shard)
        bri, con, sat, hue = self.jitter
        if self.jitter_p > 0 and any(v > 0 for v in self.jitter):
            on = draw.rand() < self.jitter_p
            onf = on.float().view(b, 1, 1, 1)

            def factor(s: float) -> torch.Tensor:
                f = draw.uniform(1.0 - s, 1.0 + s).clamp_min(0.0).view(b, 1, 1, 1)
                return 1.0 + onf * (f - 1.0)  # identity for images without jitter

            if bri > 0:
                x = (x * factor(bri)).clamp_(0.0, 1.0)
            if con > 0:
                g = grayscale(x) if c == 3 else x
                m = g.mean(dim=(1, 2, 3), keepdim=True)
                f = factor(con)
                x = (f * x + (1.0 - f) * m).clamp_(0.0, 1.0)
            if c == 3 and sat > 0:
                f = factor(sat)
                x = (f * x + (1.0 - f) * grayscale(x)).clamp_(0.0, 1.0)
            if c == 3 and hue > 0:
                shift = draw.uniform(-hue, hue) * on.float()
                hsv = rgb_to_hsv(x)
                hsv[:, 0] = (hsv[:, 0] + shift.view(b, 1, 1)) % 1.0
                x = torch.where(on.view(b, 1, 1, 1), hsv_to_rgb(hsv), x)
        if c == 3 and self.gray_p > 0:
            g = draw.rand() < self.gray_p
            x = torch.where(g.view(b, 1, 1, 1), grayscale(x).expand_as(x), x)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if mean.numel() == 1:
            mean, std = mean.expand(c), std.expand(c)
        elif mean.numel() != c:
            raise ValueError(f"x: expected {mean.numel()} channels for this normalisation, got {c}")
        return (x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)

    def erase(
        self, x: torch.Tensor, gen: torch.Generator | None, shard: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Random erasing (with probability ``erase_p``) of one rectangle per image.

        The rectangle covers the pixels whose centres fall inside it: its area fraction is drawn
        from ``erase_scale``, its aspect ratio log-uniformly from ``erase_ratio`` (both sides
        clamped to the image), its position uniformly among those inside the image.
        """
        if self.erase_p <= 0:
            return x
        b, _, h, w = x.shape
        dev = x.device
        draw = _Draws(b, gen, dev, shard)
        on = draw.rand() < self.erase_p
        area = draw.uniform(*self.erase_scale)
        ratio = torch.exp(draw.uniform(*self.erase_log_ratio))
        eh = torch.sqrt(area / ratio).clamp(max=1.0)  # fractions of the side
        ew = torch.sqrt(area * ratio).clamp(max=1.0)
        y0 = (1.0 - eh) * draw.rand()
        x0 = (1.0 - ew) * draw.rand()
        ys = (torch.arange(h, device=dev, dtype=x.dtype) + 0.5) / h  # pixel centres
        xs = (torch.arange(w, device=dev, dtype=x.dtype) + 0.5) / w
        in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # (B, H)
        in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # (B, W)
        mask = on[:, None, None] & in_y[:, :, None] & in_x[:, None, :]
        return x.masked_fill(mask[:, None], self.erase_value)

    # -- call ------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x: expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        b = x.shape[0]
        size = self.size or x.shape[-1]
        xf = to_float(x)
        grid = self.crop_grid(b, size, generator, x.device, shard)
        xf = F.grid_sample(
            xf, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        xf = self.color(xf, generator, shard)
        return self.erase(self.normalize(xf), generator, shard)

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The un-augmented, normalised view (evaluation), resized to ``size`` if needed."""
        xf = to_float(x)
        if self.size is not None and xf.shape[-1] != self.size:
            xf = F.interpolate(xf, size=(self.size, self.size), mode="bilinear", antialias=True)
        return self.normalize(xf)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, crop_scale={self.crop_scale}, flip_p={self.flip_p}, "
            f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, "
            f"rotate={self.rotate}, erase_p={self.erase_p}, erase_scale={self.erase_scale}"
        )
