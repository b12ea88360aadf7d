"""otcl: contrastive representation learning as optimal transport, in PyTorch."""

__version__ = "0.1.0"

from . import losses, ot  # noqa: E402

__all__ = ["losses", "ot", "__version__"]
