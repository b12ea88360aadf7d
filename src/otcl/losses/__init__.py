"""Contrastive losses as optimal transport, all called ``loss(z1, z2, labels=None, target=None)``.

>>> import otcl, torch
>>> loss_fn = otcl.losses.build("gca-uot")
>>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
>>> loss = loss_fn(z1, z2)
"""

from . import divergences, targets
from .base import DIVERGENCES, OTContrastiveLoss
from .dmm import DMM, Mixed
from .gca import GCAINCE, GCARINCE, GCAUOT, RINCE
from .hard_negatives import DCL, HCL, HardNegativeLoss, OTHard
from .infonce import InfoNCE
from .iot import IOT, IOTUniformity, uniformity_penalty
from .registry import available, build, get, parameters, register
from .targets import domain_target, identity_target, label_target

__all__ = [
    "DIVERGENCES",
    "GCAINCE",
    "GCARINCE",
    "GCAUOT",
    "DCL",
    "DMM",
    "HCL",
    "HardNegativeLoss",
    "OTHard",
    "IOT",
    "RINCE",
    "InfoNCE",
    "Mixed",
    "IOTUniformity",
    "OTContrastiveLoss",
    "available",
    "build",
    "divergences",
    "domain_target",
    "get",
    "identity_target",
    "label_target",
    "parameters",
    "register",
    "targets",
    "uniformity_penalty",
]
