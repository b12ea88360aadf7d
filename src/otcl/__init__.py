"""otcl: contrastive representation learning as optimal transport, in PyTorch.

The subpackages ``otcl.losses``, ``otcl.ot`` and ``otcl.diagnostics`` are imported on first
use (``otcl.losses.build(...)`` works right after ``import otcl``), so that the ``otcl`` command
starts, and answers Ctrl-C with one line, before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["diagnostics", "losses", "ot", "__version__"]

_SUBPACKAGES = ("diagnostics", "losses", "ot")

if TYPE_CHECKING:  # pragma: no cover
    from . import diagnostics, losses, ot  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBPACKAGES})
