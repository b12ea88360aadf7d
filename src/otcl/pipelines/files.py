"""Atomic files and JSON-lines logs: how the pipelines write every file they keep."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "append_jsonl",
    "check_writable",
    "write_jsonl",
    "read_jsonl",
]


def _named(e: OSError, path: str | os.PathLike[str]) -> OSError:
    """``e`` as an OSError that names ``path`` (a failed write() names no file)."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def _atomic(path: str | os.PathLike[str], write) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``.

    A reader sees either the old file or the complete new one, never a half-written file.

    Raises:
        OSError: naming ``path`` (``filename``) and the cause (``strerror``), e.g. a full disk;
            the old file is left as it was and no temporary file remains.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _named(e, path) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results private to their writer
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _named(e, path) from None
        raise


def check_writable(directory: str | os.PathLike[str]) -> None:
    """Create and remove a file in ``directory``; raises ``OSError`` naming it if that fails
    (permissions, a read-only file system, a full disk -- ``os.access`` misses the last two)."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".otcl-probe."):
            pass
    except OSError as e:
        raise _named(e, directory) from None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    _atomic(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` that never leaves a half-written file behind.

    The object is serialised in memory first and the bytes written with plain file I/O, so a
    failed write is the system's own ``OSError`` (e.g. ``No space left on device``) naming
    ``path``; torch's writer would turn it into an opaque ``unexpected pos`` error."""

    def write(fh: Any) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        fh.write(buf.getbuffer())

    _atomic(path, write)


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record as a line (``OSError`` names ``path``)."""
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    except OSError as e:
        raise _named(e, path) from None


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with ``records`` (atomically)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a truncated last line (a killed writer) is ignored."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
