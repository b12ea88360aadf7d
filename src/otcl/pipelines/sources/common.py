"""What every source shares: the error of unreadable data and the cache folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataError", "cache_root"]


class DataError(ValueError):
    """Data that cannot be read or used: missing, wrong layout, corrupt or out-of-range values.

    A ``ValueError``, so the command line reports it in one line.
    """


def cache_root() -> Path:
    """The folder of downloads and derived files: ``$OTCL_CACHE``, else ``$XDG_CACHE_HOME/otcl``,
    else ``~/.cache/otcl``."""
    base = os.environ.get("OTCL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "otcl"
    )
    return Path(base)
