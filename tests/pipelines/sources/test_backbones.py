"""Image encoders: shapes and the ResNet-18 parameter count of torchvision's layout."""

from __future__ import annotations

import pytest
import torch

from otcl.pipelines.sources.backbones import build_encoder


def test_encoders_shapes():
    enc = build_encoder("resnet18", 3, head_hidden=64, head_out=16)
    x = torch.randn(2, 3, 32, 32)
    assert enc.features(x).shape == (2, 512) and enc(x).shape == (2, 16)
    n_params = sum(p.numel() for p in enc.backbone.parameters())
    assert n_params == 11_168_832  # torchvision resnet18 trunk with the 3x3 CIFAR stem
    small = build_encoder("small-cnn", 1, width=8, head_hidden=0, head_out=4)
    assert small(torch.randn(3, 1, 8, 8)).shape == (3, 4)
    with pytest.raises(ValueError, match="model.arch"):
        build_encoder("vgg", 3)
