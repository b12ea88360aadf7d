"""Checkpoints: the format, a safe load, the state of a run's parts, save and restore.

A checkpoint is a ``torch.save`` of ``{"format": 2, "otcl_version", "sha256", "payload"}``
whose ``payload`` holds the ``torch.save`` bytes of the run's state and ``sha256`` their
digest. It is written atomically (temp file, fsync, rename; :func:`save_checkpoint`) and read
with ``torch.load(weights_only=True)`` after the digest is checked (:func:`load_checkpoint`):
nothing in a file runs code, and a damaged file is one error line. NaN/inf weights are never
written (the trainer checks first) and never loaded (:func:`check_finite_weights`).

A run's state (:func:`run_state`) holds the model, optimizer,
scheduler, AMP scaler and loss states (and the memory bank's queue with ``loss.memory_bank``),
the epoch and step, the running loss of the current epoch, every RNG state (under ``torchrun``:
every rank's), ``done`` and, for a run that selects its model on validation data, the selection
state with the best weights (:mod:`.selection`).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ... import __version__
from ..files import atomic_torch_save
from .distributed import agreed, gather_objects
from .progress import first_line
from .rundir import CHECKPOINT
from .runlog import trim_log
from .runtime import pick_device, rng_state, set_rng_state
from .stops import TrainingDiverged

__all__ = [
    "CHECKPOINT_FORMAT",
    "READABLE_FORMATS",
    "check_finite_weights",
    "load_model_weights",
    "open_run",
    "restore_model",
    "save_checkpoint",
    "load_checkpoint",
    "run_state",
    "finite_weights",
    "save_run",
    "restore_run",
]

CHECKPOINT_FORMAT = 2
#: checkpoint formats this version reads: 1 (otcl 0.1 before the pipelines moved) and 2
READABLE_FORMATS = (1, 2)
_REQUIRED_KEYS = {"format", "config", "model", "epoch", "step_in_epoch", "global_step", "rng"}


# -- weights -------------------------------------------------------------------------------
def check_finite_weights(weights: dict[str, Any], where: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` if a floating tensor of ``weights`` (a state dict) holds NaN/inf:
    such a model evaluates to chance level without any other sign of trouble."""
    floats = {k: v for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()}
    bad = [k for k, v in floats.items() if not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(
            f"run: the checkpoint in {str(where)!r} holds NaN/inf weights ({bad[0]}{more}): the "
            "run diverged; train it again with a lower optim.lr"
        )


def load_model_weights(
    model: torch.nn.Module, weights: dict[str, Any], where: str | os.PathLike[str]
) -> None:
    """Load a checkpoint's model state into ``model``: NaN/inf weights and a state that does not
    fit the model are each one ``ValueError`` naming the run (``where``)."""
    check_finite_weights(weights, where)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(
            f"run: the checkpoint in {str(where)!r} does not fit its model: {first_line(e)}"
        ) from None


def open_run(
    run_dir: str | os.PathLike[str], config_cls: Any, resolve: Callable[[Any], Any]
) -> tuple[Any, dict[str, Any]]:
    """A finished or interrupted run's config (``resolve(config_cls.from_dict(saved))``: a
    setting added since the run was saved takes its preset) and checkpoint state.

    NaN/inf weights are refused here, before a pipeline loads any data for the run.
    """
    st = load_checkpoint(run_dir)
    check_finite_weights(st["model"], run_dir)
    return resolve(config_cls.from_dict(st["config"])), st


def restore_model(
    model: nn.Module,
    st: dict[str, Any],
    run_dir: str | os.PathLike[str],
    device: torch.device | str = "auto",
) -> nn.Module:
    """``model`` with the weights of the checkpoint state ``st`` (:func:`load_model_weights`),
    on ``device`` (``"auto"``: :func:`~otcl.pipelines.engine.runtime.pick_device`), in eval
    mode."""
    load_model_weights(model, st["model"], run_dir)
    dev = pick_device(device) if isinstance(device, str) else device
    return model.to(dev).eval()


# -- the file ------------------------------------------------------------------------------
def _format1_globals() -> list[tuple[Callable[..., Any], str]]:
    """The only globals a format-1 checkpoint needs beyond tensors: NumPy's RNG-state array
    (under the module names NumPy 1 and 2 pickle it with)."""
    reconstruct = cast(Callable[..., Any], np.ndarray.__reduce__(np.zeros(1))[0])  # a function
    u32 = type(np.dtype(np.uint32))
    return [
        (np.dtype, "numpy.dtype"),
        (np.ndarray, "numpy.ndarray"),
        (u32, f"numpy.dtypes.{u32.__name__}"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) as a checkpoint, atomically.

    The file is a ``torch.save`` of ``{"format": 2, "otcl_version", "sha256", "payload"}``:
    ``payload`` holds the ``torch.save`` bytes of ``state`` (a uint8 tensor) and ``sha256``
    their digest.
    """
    buf = io.BytesIO()
    torch.save({**state, "format": CHECKPOINT_FORMAT}, buf)
    payload = buf.getvalue()
    outer = {
        "format": CHECKPOINT_FORMAT,
        "otcl_version": __version__,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    atomic_torch_save(outer, path)


def _safe_load(source: Any, where: str) -> Any:
    """``torch.load(weights_only=True)`` onto the CPU. A file that needs other globals is
    refused before anything in it runs, except a format-1 file's NumPy RNG-state array."""
    try:
        with warnings.catch_warnings():  # a bare pickle's protocol warning says nothing useful
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:
        raise ValueError(f"run: cannot read checkpoint {where!r}: {first_line(e)}") from None
    if hasattr(source, "seek"):
        source.seek(0)
    try:  # lists the pickle's globals without loading it
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception:
        needed = set()
    allowed = _format1_globals()
    refused = sorted(needed - {name for _, name in allowed})
    if refused or not needed:
        what = ", ".join(refused) if refused else "objects other than tensors"
        raise ValueError(
            f"run: refusing to load {where!r}: not an otcl checkpoint, it references {what} "
            "(nothing in it was run)"
        )
    if hasattr(source, "seek"):
        source.seek(0)
    safe: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [*allowed]
    with torch.serialization.safe_globals(safe):
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"run: cannot read checkpoint {where!r}: {first_line(e)}") from None


def load_checkpoint(
    path: str | os.PathLike[str], required: set[str] | frozenset[str] | None = None
) -> dict[str, Any]:
    """Read a run's checkpoint (``path``: the file or its run directory) onto the CPU.

    Safe on untrusted files: only tensors, numbers, strings and containers are unpickled
    (``weights_only=True``), and format 2 verifies the payload's SHA-256 first. Format-1 files
    (otcl 0.1) may also hold NumPy's RNG-state array, which is allowed for them alone.

    ``required``: the keys the state must hold (default: a run's; the best-weights file of
    :mod:`.selection` has its own).

    Returns:
        the state dict written by :meth:`~otcl.pipelines.engine.trainer.EpochTrainer.state`
        (``"format"``: 1 or 2).

    Raises:
        ValueError: no checkpoint there, a damaged file, a newer format, or a file that is not
            an otcl checkpoint (any pickle that would run code is refused unloaded).
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        if (p.parent / "config.yaml").is_file():  # a run killed before its first checkpoint
            raise ValueError(
                f"run: the run in {str(p.parent)!r} stopped before its first checkpoint, so "
                "there is nothing to resume or evaluate; run the same command without --resume"
            )
        raise ValueError(f"run: expected a run directory holding {CHECKPOINT}, got {str(path)!r}")
    st = _safe_load(p, str(p))
    fmt = st.get("format") if isinstance(st, dict) else None
    if isinstance(fmt, int) and fmt > max(READABLE_FORMATS):
        raise ValueError(
            f"run: {str(p)!r} has checkpoint format {fmt} (otcl {st.get('otcl_version', '?')}); "
            f"otcl {__version__} reads formats {', '.join(map(str, READABLE_FORMATS))}: "
            "upgrade otcl"
        )
    if fmt == 2:
        payload, digest = st.get("payload"), st.get("sha256")
        if not (
            isinstance(payload, torch.Tensor)
            and payload.dtype == torch.uint8
            and payload.dim() == 1
            and isinstance(digest, str)
        ):
            raise ValueError(f"run: {str(p)!r} is not an otcl checkpoint (no payload)")
        payload = payload.numpy().tobytes()
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ValueError(f"run: {str(p)!r} is damaged (its payload fails the SHA-256 check)")
        st = _safe_load(io.BytesIO(payload), str(p))
        fmt = st.get("format") if isinstance(st, dict) else None
    if fmt not in READABLE_FORMATS or not (required or _REQUIRED_KEYS) <= set(st):
        raise ValueError(f"run: {str(p)!r} is not an otcl checkpoint")
    return st


# -- a run's state ----------------------------------------------------------------------
# ``tr`` below: a built :class:`~otcl.pipelines.engine.trainer.EpochTrainer` (not imported here:
# the trainer imports this module).
def _parts(tr: Any) -> dict[str, Any]:
    """The parts of a trainer whose ``state_dict`` a checkpoint holds, under their keys."""
    parts = {
        "model": tr.model,
        "optimizer": tr.optimizer,
        "scheduler": tr.scheduler,
        "scaler": tr.scaler,
        "loss": tr.loss_fn,
    }
    if getattr(tr, "memory_bank", None) is not None:  # loss.memory_bank: the queue
        parts["memory_bank"] = tr.memory_bank
    return parts


def run_state(tr: Any) -> dict[str, Any]:
    """Everything a resume of ``tr`` needs: the config, the parts' states, the epoch and step,
    the running loss of the epoch, every RNG state, ``done`` and the pipeline's own state."""
    tr.running_loss.fold()
    st = {
        "otcl_version": __version__,
        "config": tr.cfg.to_dict(),
        **{key: part.state_dict() for key, part in _parts(tr).items()},
        "epoch": tr.epoch,
        "step_in_epoch": tr.step_in_epoch,
        "global_step": tr.global_step,
        "epoch_loss": list(tr.running_loss.epoch),
        "epoch_seconds": tr.epoch_seconds,
        "rng": rng_state(),
        "done": tr.epoch >= int(tr.cfg.train.epochs) or stopped_early(tr),
        "data_fingerprint": dict(getattr(tr, "data_fingerprint", {}) or {}),
    }
    if tr.selector is not None:
        st["selection"] = tr.selector.state_dict()
    extra = tr.extra_state()
    if extra:
        st["pipeline"] = extra
    return st


def stopped_early(tr: Any) -> bool:
    """Whether ``tr``'s model selection stopped its training early (:mod:`.selection`)."""
    return tr.selector is not None and tr.selector.stopped


def finite_weights(model: nn.Module) -> bool:
    """Whether every parameter and buffer of ``model`` is finite (one host sync)."""
    tensors = [v for v in model.state_dict().values() if v.is_floating_point()]
    return all(bool(torch.isfinite(v).all()) for v in tensors)


def save_run(tr: Any) -> Path:
    """Write ``tr``'s checkpoint atomically (:func:`run_state`; under ``torchrun`` with every
    rank's RNG states, written by rank 0 while the others wait); returns its path.

    Raises:
        TrainingDiverged: the weights are no longer finite (the last good checkpoint stays).
    """
    if not finite_weights(tr.model):
        epoch = tr.epoch + (1 if tr.step_in_epoch else 0)
        raise TrainingDiverged(
            f"the weights became NaN/inf by step {tr.global_step} (epoch {epoch}); the "
            "last finite checkpoint is kept; lower optim.lr or raise the loss temperature"
        )
    path = tr.out / CHECKPOINT
    st = run_state(tr)
    if tr.world > 1:  # every rank's RNG states, restored rank by rank
        st["rng_ranks"] = gather_objects(st["rng"])
        st["world_size"] = tr.world
    with agreed():  # the others wait until rank 0 has written it
        if tr.is_main:
            save_checkpoint(st, path)
    return path


def restore_run(tr: Any, st: dict[str, Any]) -> None:
    """Load the state ``st`` of :func:`run_state` into ``tr`` (the model's weights through
    :func:`load_model_weights`; this rank's RNG states if the run had as many processes)."""
    parts = _parts(tr)
    load_model_weights(parts.pop("model"), st["model"], tr.out)
    for key, part in parts.items():
        part.load_state_dict(st[key])
    tr.epoch = int(st["epoch"])
    tr.step_in_epoch = int(st["step_in_epoch"])
    tr.global_step = int(st["global_step"])
    tr.running_loss.epoch = [float(st["epoch_loss"][0]), int(st["epoch_loss"][1])]
    tr.epoch_seconds = float(st.get("epoch_seconds", 0.0))
    tr.load_extra_state(st.get("pipeline", {}))
    if tr.selector is not None and "selection" in st:
        tr.selector.load_state_dict(st["selection"])
    ranks = st.get("rng_ranks")
    if isinstance(ranks, list) and len(ranks) == tr.world:  # the run had as many processes
        set_rng_state(ranks[tr.rank])
    else:
        set_rng_state(st["rng"])
    if tr.is_main:  # the log may hold epochs finished after the checkpoint: redone
        trim_log(tr.out, tr.epoch)
