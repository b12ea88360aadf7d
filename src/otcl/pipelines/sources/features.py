"""Frozen features of an image encoder (backbone output, eval mode, no augmentation)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["extract_features", "split_features"]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """Backbone features (N, D) in float32 of uint8 ``images`` (N, C, H, W), model in eval mode."""
    was_training = model.training
    model.eval()
    feats_fn = getattr(model, "features", model)
    out = []
    starts = range(0, images.shape[0], batch_size)
    if progress and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, leave=False, unit="batch")
        except ImportError:
            pass
    dev = torch.device(device)
    try:
        for s in starts:
            x = preprocess(images[s : s + batch_size].to(dev, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
            ):
                f = feats_fn(x)
            out.append(f.float())
    finally:
        model.train(was_training)
    return torch.cat(out)


def split_features(
    model: nn.Module,
    data: Any,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``data.train_x`` and ``data.test_x`` (an :class:`otcl.pipelines.sources.images.ImageData`);
    keyword arguments go to :func:`extract_features`."""
    ftr = extract_features(model, data.train_x, preprocess, desc="train features", **kwargs)
    fte = extract_features(model, data.test_x, preprocess, desc="test features", **kwargs)
    return ftr, fte
