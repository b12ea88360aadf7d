"""otcl: contrastive representation learning as optimal transport, in PyTorch."""

__version__ = "0.1.0"

from . import diagnostics, losses, ot  # noqa: E402

__all__ = ["diagnostics", "losses", "ot", "__version__"]
