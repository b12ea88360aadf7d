"""Contrastive losses as optimal transport, all called ``loss(z1, z2, labels=None, target=None)``.

>>> import otcl, torch
>>> loss_fn = otcl.losses.build("gca-uot")
>>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
>>> loss = loss_fn(z1, z2)

One file per paper (``infonce.py``, ``iot.py``, ``gca.py``, ``hard_negatives.py``, ``dmm.py``);
the shared parts: ``contrastive.py`` (the base class: parameters and training hooks),
``base.py`` (the OT composition), ``divergences.py``, ``targets.py``, ``pair_losses.py``,
``mixing.py``, ``wrappers.py``, ``memory.py`` (a queue of negatives), ``params.py`` and
``registry.py``.
"""

from . import divergences, mixing, pair_losses, targets
from .base import DIVERGENCES, OTContrastiveLoss
from .contrastive import ContrastiveLoss
from .dmm import DMM
from .gca import GCAINCE, GCARINCE, GCAUOT, RINCE
from .hard_negatives import DCL, HCL, HardNegativeLoss, OTHard
from .infonce import InfoNCE
from .iot import IOT, IOTUniformity, uniformity_penalty
from .memory import MemoryBank
from .mixing import Mixed
from .registry import (
    available,
    build,
    conditions,
    describe,
    get,
    inapplicable_params,
    parameters,
    register,
)
from .targets import domain_target, identity_target, label_target
from .wrappers import LossWrapper

__all__ = [
    "DIVERGENCES",
    "DCL",
    "DMM",
    "GCAINCE",
    "GCARINCE",
    "GCAUOT",
    "HCL",
    "IOT",
    "RINCE",
    "ContrastiveLoss",
    "HardNegativeLoss",
    "InfoNCE",
    "IOTUniformity",
    "LossWrapper",
    "MemoryBank",
    "Mixed",
    "OTContrastiveLoss",
    "OTHard",
    "available",
    "build",
    "conditions",
    "describe",
    "divergences",
    "domain_target",
    "get",
    "identity_target",
    "inapplicable_params",
    "label_target",
    "mixing",
    "pair_losses",
    "parameters",
    "register",
    "targets",
    "uniformity_penalty",
]
