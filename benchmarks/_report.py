"""Shared by the benchmark scripts: machine/version lines and section updates of a Markdown file."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch


def machine(device: str) -> str:
    """One line naming the hardware the numbers come from."""
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        return f"Machine: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}."
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"Machine: {cpu}, {cores} cores usable, torch threads {torch.get_num_threads()}."


def versions() -> str:
    parts = [
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"numpy {np.__version__}",
    ]
    try:
        import ot

        parts.append(f"POT {ot.__version__}")
    except ImportError:
        pass
    import otcl

    parts.append(f"otcl {otcl.__version__}")
    return "Versions: " + ", ".join(parts) + "."


def update_doc(path: Path, key: str, section: str) -> None:
    """Replace the block between ``<!-- key:begin -->`` and ``<!-- key:end -->`` (or append it)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
