"""Optional loggers of a run's scalars, besides ``metrics.jsonl`` (which is always written).

``train.log=tensorboard`` (``--log tensorboard`` on every train verb) writes the same scalars
as ``metrics.jsonl`` -- each epoch record's numbers, the final evaluation added to the last
one -- as TensorBoard events in ``<run>/tb/``, with the epoch as the step. It needs the
``tensorboard`` package (``pip install 'otcl[tensorboard]'``); without it the run is refused in
one line before any data loads. A resumed run first drops the events of the epochs after its
checkpoint (TensorBoard's ``purge_step``), as ``metrics.jsonl`` is cut back; a run started
afresh removes the ``tb/`` of an earlier run that saved no checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LOGGERS", "TB_DIR", "check_log", "ScalarLogger", "TensorBoardLogger", "open_logger"]

#: the values of ``train.log``
LOGGERS = ("none", "tensorboard")
#: the TensorBoard event directory inside a run directory
TB_DIR = "tb"
INSTALL_HINT = "pip install 'otcl[tensorboard]'"


def check_log(value: Any) -> None:
    """Raise ``ValueError`` naming ``train.log`` when it is not one of :data:`LOGGERS`, or names
    a logger whose package is not installed (with the install hint)."""
    if value not in LOGGERS:
        raise ValueError(f"train.log: expected one of {', '.join(LOGGERS)}, got {value!r}")
    if value == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"train.log=tensorboard: needs the tensorboard package ({INSTALL_HINT})")


class ScalarLogger:
    """Receives the scalars of each epoch record; the base logs nothing (``train.log=none``)."""

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Log the numeric fields of ``record`` (all but ``epoch``) at ``step``."""

    def close(self) -> None:
        """Flush and release the logger's files."""


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite real numbers of ``record`` but its ``epoch`` (what a logger writes)."""
    out = {}
    for k, v in record.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoardLogger(ScalarLogger):
    """The scalars of ``metrics.jsonl`` as TensorBoard events in ``<run_dir>/tb`` (tag = the
    field, step = the epoch).

    Args:
        run_dir: the run directory.
        start_epoch: the epochs already done (a resume): events of later epochs are dropped.
    """

    def __init__(self, run_dir: str | Path, start_epoch: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard missing (or broken)
            raise ValueError(
                f"train.log=tensorboard: needs the tensorboard package ({INSTALL_HINT})"
            ) from None
        path = Path(run_dir) / TB_DIR
        if start_epoch == 0 and path.exists():  # an earlier run that saved no checkpoint
            shutil.rmtree(path)
        self.writer: SummaryWriter = SummaryWriter(
            str(path), purge_step=start_epoch + 1 if start_epoch else None
        )

    def log(self, record: Mapping[str, Any], step: int) -> None:
        for k, v in scalars(record).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_logger(name: str, run_dir: str | Path, start_epoch: int = 0) -> ScalarLogger:
    """The logger of ``train.log`` for ``run_dir`` (``start_epoch``: the epochs already done)."""
    check_log(name)
    if name == "tensorboard":
        return TensorBoardLogger(run_dir, start_epoch)
    return ScalarLogger()
