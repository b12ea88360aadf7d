"""Image encoders: a backbone (features for evaluation) + a projection head (for the loss).

* ``resnet18``: ResNet-18 (He et al. 2016) with the CIFAR stem used by SimCLR-on-CIFAR recipes
  (lightly, solo-learn, GCA): a 3x3 stride-1 first convolution and no max-pool; 512-d features.
  ``stem="imagenet"`` keeps the 7x7 stride-2 convolution and max-pool (for 96 px STL-10).
  Written here rather than taken from torchvision so the core pipeline runs where torchvision
  is not installed; the layer layout and initialisation follow ``torchvision.models.resnet18``.
* ``small-cnn``: three 3x3 conv-BN-ReLU blocks and global average pooling, for 8x8 digits.

``norm`` picks the backbone's normalisation layers (:data:`NORMS`): ``batch`` (BatchNorm, the
default), ``group`` (GroupNorm with gcd(C, 8) groups of the C channels: per sample, so a run
split over processes equals the one-process run without SyncBatchNorm) or ``none`` (the
convolutions then get a bias).

The projection head is ``Linear(feat, hidden) -> BN -> ReLU -> Linear(hidden, out)`` (lightly's
SimCLR head is 512-512-128; GCA's code uses 2048-128 without BN); ``hidden=0`` gives a linear head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "ARCHS",
    "NORMS",
    "norm_layer",
    "BasicBlock",
    "ResNet18",
    "SmallCNN",
    "ProjectionHead",
    "Encoder",
    "build_encoder",
]


#: normalisation layers of the backbones
NORMS = ("batch", "group", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``BatchNorm2d(C)``, ``GroupNorm(gcd(C, 8), C)`` or the identity, by ``kind`` (NORMS)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm: expected one of {', '.join(NORMS)}, got {kind!r}")


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-norm layers and the (projected) shortcut."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1: nn.Conv2d = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1: nn.Module = norm_layer(norm, cout)
        self.conv2: nn.Conv2d = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2: nn.Module = norm_layer(norm, cout)
        self.relu: nn.ReLU = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=bias), norm_layer(norm, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet18(nn.Module):
    """ResNet-18 trunk: (B, C, H, W) -> (B, 512) features after global average pooling."""

    feature_dim = 512

    def __init__(self, in_channels: int = 3, stem: str = "cifar", norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.stem: nn.Sequential
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, 1, 1, bias=bias),
                norm_layer(norm, 64),
                nn.ReLU(inplace=True),
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=bias),
                norm_layer(norm, 64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            raise ValueError(f"stem: expected 'cifar' or 'imagenet', got {stem!r}")
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm))
            )
            cin = cout
        self.layers: nn.Sequential = nn.Sequential(*layers)
        self.pool: nn.AdaptiveAvgPool2d = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(self.stem(x))).flatten(1)


class SmallCNN(nn.Module):
    """Three conv-norm-ReLU blocks (width, 2 width, 4 width) and global average pooling."""

    def __init__(self, in_channels: int = 1, width: int = 32, norm: str = "batch") -> None:
        super().__init__()
        w = int(width)
        if w < 1:
            raise ValueError(f"width: expected a positive channel count, got {width!r}")

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 1, 1, bias=norm == "none"),
                norm_layer(norm, cout),
                nn.ReLU(True),
            )

        self.net: nn.Sequential = nn.Sequential(
            block(in_channels, w),
            block(w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
        )
        self.feature_dim: int = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class ProjectionHead(nn.Module):
    """``Linear -> BN -> ReLU -> Linear`` (SimCLR); ``hidden=0`` is one linear layer."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, bn: bool = True) -> None:
        super().__init__()
        if dim_out < 1 or hidden < 0:
            raise ValueError(
                f"head: expected hidden >= 0 and out >= 1, got hidden={hidden}, out={dim_out}"
            )
        if hidden == 0:
            self.net: nn.Module = nn.Linear(dim_in, dim_out)
        else:
            mid: list[nn.Module] = [nn.Linear(dim_in, hidden, bias=not bn)]
            if bn:
                mid.append(nn.BatchNorm1d(hidden))
            mid += [nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)]
            self.net = nn.Sequential(*mid)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class Encoder(nn.Module):
    """Backbone + projection head. ``forward`` returns the projection z (B, out);
    :meth:`features` the backbone representation h (B, feature_dim) used for evaluation."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


ARCHS = ("small-cnn", "resnet18", "resnet18-imagenet")


def build_encoder(
    arch: str,
    in_channels: int,
    *,
    width: int = 32,
    head_hidden: int = 512,
    head_out: int = 128,
    head_bn: bool = True,
    norm: str = "batch",
) -> Encoder:
    """Build an :class:`Encoder` by architecture name (one of :data:`ARCHS`); ``norm``: the
    backbone's normalisation (:data:`NORMS`)."""
    if arch == "small-cnn":
        backbone: nn.Module = SmallCNN(in_channels, width, norm)
    elif arch == "resnet18":
        backbone = ResNet18(in_channels, stem="cifar", norm=norm)
    elif arch == "resnet18-imagenet":
        backbone = ResNet18(in_channels, stem="imagenet", norm=norm)
    else:
        raise ValueError(f"model.arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    dim = backbone.feature_dim  # type: ignore[attr-defined]
    return Encoder(backbone, ProjectionHead(int(dim), int(head_hidden), int(head_out), head_bn))
