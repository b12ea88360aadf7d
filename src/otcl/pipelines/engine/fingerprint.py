"""A run's data fingerprint: the size and hash of every file its data was read from.

A run records the fingerprint of ``data.data_dir`` (a file, or every file under a folder) in
its checkpoint. A resume, and a comparison that would reuse or resume the run, compare it with
the data as it is now: a file added, removed or changed (size or content) means the saved
numbers were computed from other data, and the run is refused (:class:`DataChanged`) instead
of being silently mixed with new ones. Data without a local path (a bundled or a downloaded
dataset, or a dataset passed in from Python) has an empty fingerprint.

Hashes are BLAKE2b over the file's bytes (about 1 GB/s; a gzip file's header time stamp left
out, so an archive rebuilt from the same files is the same data), kept per process for a file
whose size and modification time have not changed.

Example:
    >>> fingerprint_of(None)
    {}
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DataChanged", "fingerprint_of", "config_fingerprint", "check_fingerprint"]

#: the checkpoint key
KEY = "data_fingerprint"


class DataChanged(ValueError):
    """The data of a saved run is not the data it was trained on."""


@functools.lru_cache(maxsize=4096)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        head = f.read(1 << 20)
        if head[:2] == b"\x1f\x8b" and len(head) >= 8:  # gzip: its header's time stamp
            head = head[:4] + bytes(4) + head[8:]  # is not data (same files, same archive)
        h.update(head)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{_file_hash(str(path.resolve()), st.st_size, st.st_mtime_ns)}"


def fingerprint_of(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """``{file: "size:hash"}`` of ``path`` (a file: one entry keyed by its name; a folder:
    every file under it, keyed by its relative path, hidden ones left out); ``{}`` for None
    or a path that does not exist."""
    if path is None:
        return {}
    p = Path(path).expanduser()
    if p.is_file():
        return {p.name: _entry(p)}
    if not p.is_dir():
        return {}
    out = {}
    for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                f = Path(root) / name
                out[f.relative_to(p).as_posix()] = _entry(f)
    return out


def config_fingerprint(cfg: Any) -> dict[str, str]:
    """The fingerprint of a run config's ``data.data_dir`` (``{}`` without one)."""
    data = getattr(cfg, "data", None)
    return fingerprint_of(getattr(data, "data_dir", None))


def check_fingerprint(
    saved: Mapping[str, str] | None, now: Mapping[str, str], run_dir: str, hint: str
) -> None:
    """Refuse a run whose data changed since it was trained.

    Args:
        saved: the checkpoint's fingerprint (None: a run saved before fingerprints; accepted).
        now: the data's fingerprint today.
        hint: what to do instead, e.g. ``"use a new --out, or --force to train it again"``.
    Raises:
        DataChanged: one line naming the run, the first file that differs and ``hint``.
    """
    if saved is None or dict(saved) == dict(now):
        return
    gone = sorted(set(saved) - set(now))
    new = sorted(set(now) - set(saved))
    changed = sorted(k for k in set(saved) & set(now) if saved[k] != now[k])
    what = (
        f"{changed[0]} changed"
        if changed
        else f"{gone[0]} is gone"
        if gone
        else f"{new[0]} was added"
    )
    n = len(gone) + len(new) + len(changed)
    more = f" (and {n - 1} more file(s))" if n > 1 else ""
    raise DataChanged(
        f"data: the run in {run_dir!r} was trained on other data ({what}{more}); {hint}"
    )
