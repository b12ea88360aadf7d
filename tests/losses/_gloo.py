"""Spawning gloo processes for the tests that compare a process group with one process."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def spawn_ranks(worker: Callable[[int, str, str], None], world: int) -> list[Any]:
    """Run ``worker(rank, init, out)`` in ``world`` processes and return, per rank, what it saved
    to ``out/rank<r>.pt`` (``init``: the file of the process group's file:// rendezvous)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(__file__).resolve().parents[2])  # the children import the tests package
        os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
        sys.path.insert(0, root)
        mp.spawn(worker, args=(os.path.join(tmp, "init"), tmp), nprocs=world, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
