"""Shared by the benchmark scripts: machine and version lines, and sections of a Markdown page.

A section lives between ``<!-- key:begin -->`` and ``<!-- key:end -->``; a script rerun on a
device replaces only its own section, so CPU and GPU numbers, and the numbers of different
scripts, coexist in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def machine(device: str) -> str:
    """The hardware the numbers come from, in one line."""
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores available, torch threads: {torch.get_num_threads()}"


def versions() -> str:
    """Python, torch, numpy, POT and otcl versions and the git commit of the checkout."""
    import otcl

    try:  # the installed version, without importing POT (seconds)
        from importlib.metadata import PackageNotFoundError, version

        pot = f"POT {version('POT')}"
    except PackageNotFoundError:
        pot = "POT not installed"
    parts = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"numpy {np.__version__}",
        pot,
        f"otcl {otcl.__version__}",
    ]
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "src", "benchmarks"]
        ).returncode
        parts.append(f"commit {rev}" + (" + uncommitted changes" if dirty else ""))
    except (OSError, subprocess.CalledProcessError):
        pass
    return ", ".join(parts)


def replace_section(
    path: Path, key: str, body: str, *, header: str = "# Benchmarks\n", keep: bool = False
) -> None:
    """Put ``body`` between the ``key`` markers of ``path`` (appended if absent).

    With ``keep=True`` an existing section is left as it is (``body`` is only a placeholder).
    """
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else header
    if begin in text and end in text:
        if keep:
            return
        i, j = text.index(begin) + len(begin), text.index(end)
        text = text[:i] + "\n" + body.strip("\n") + "\n" + text[j:]
    else:
        text = text.rstrip("\n") + f"\n\n{begin}\n{body.strip(chr(10))}\n{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
