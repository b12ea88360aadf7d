"""The run machinery every otcl pipeline shares: one training loop, one run directory format.

A *run* is one output directory::

    run/config.yaml      the resolved configuration (everything needed to rebuild the run)
    run/checkpoint.pt    model, optimizer, scheduler, AMP scaler, loss state, RNG states,
                         epoch/step (written atomically every ``train.checkpoint_every``
                         epochs, at the end, and on Ctrl-C or SIGTERM)
    run/metrics.jsonl    one JSON record per epoch (loss, lr, seconds, throughput, metrics)
    run/summary.json     written when training completes

:class:`EpochTrainer` owns all of it -- run directory, resolved config, atomic checkpoints,
exact resume, the metrics log, progress, seeds, device and autocast, signals, locking,
divergence, and training under ``torchrun`` -- and a pipeline only says what one step computes.

Subclass contract
-----------------
Override (required):

* :meth:`EpochTrainer.build` -- load the data and set ``self.model`` (the ``nn.Module`` whose
  ``state_dict`` is checkpointed; several encoders go into one ``nn.ModuleDict``),
  ``self.loss_fn`` (usually ``self.build_loss()``) and ``self.steps_per_epoch``. It runs after
  the device is picked and the global RNGs are seeded; ``self.batch_size`` holds
  ``cfg.train.batch_size`` and may be changed here.
* :meth:`EpochTrainer.compute_loss` ``(epoch, step) -> loss`` -- the scalar loss (with its
  graph) of step ``step`` of epoch ``epoch``. Draw the batch and any randomness from
  ``(seed, epoch, step)`` with :meth:`batch_indices` and :meth:`step_generator` (never from a
  generator carried across steps): that is what makes a resumed run identical. Call the model
  through ``self.forward_model`` (``self.forward_model(x)``, or any method of the model's own,
  ``self.forward_model.encode(x)``): under torchrun that is DistributedDataParallel.
  Or override :meth:`EpochTrainer.train_step` ``(epoch, step) -> detached loss`` for full
  control of the update (then call :meth:`optimize` yourself).

Override (optional): :meth:`resolve_config` (presets), :meth:`check_config` (call ``super()``),
:meth:`default_out`, :meth:`build_optimizer`, :meth:`start_epoch` (default: the loss's
``set_epoch`` hook), :meth:`evaluate` ``(final) -> {name: value}`` (end-of-epoch metrics; with
``final=True`` once after the last epoch, into the last metrics record and the summary),
:meth:`extra_state` / :meth:`load_extra_state` (the pipeline's own state to checkpoint),
:meth:`summarize` (fields added to ``summary.json``), ``throughput_unit`` and
:meth:`items_per_step` (the ``<unit>_per_s`` column), :attr:`tag` (the log-line prefix).

Under ``torchrun`` (:mod:`otcl.pipelines.distributed`) the base does the distributed work:
``cfg.train.batch_size`` stays the **global** batch; :meth:`batch_indices` returns this rank's
``local_batch_size`` rows (``self.local_rows`` of the global batch); the model is wrapped in
DistributedDataParallel (SyncBatchNorm on CUDA); :meth:`build_loss` adds
``gather_distributed=True``, and the loss is multiplied by the world size before backward when
it couples the global batch (:meth:`loss_is_global`); rank 0 alone writes files, logs and
evaluates. All a pipeline adds is how its batch is sharded: randomness drawn per sample must be
drawn for the global batch and sliced with ``self.local_rows`` (e.g. the image augmentations),
so that every sample gets the draw it gets in one process. Data loads go through
:func:`otcl.pipelines.distributed.local_main_first` (a node's first process downloads first).

The config is any dataclass with the shared sections ``train`` (:class:`~otcl.pipelines.config.
TrainConfig`), ``optim`` (:class:`~otcl.pipelines.config.OptimConfig`) and ``loss``
(:class:`~otcl.pipelines.config.LossConfig`), e.g. :class:`~otcl.pipelines.config.RunConfig`.

The base guarantees (docs/reliability.md lists the test of each):

* the run directory is created and probed before ``build()`` loads any data, and locked
  (:class:`RunLock`): one writer at a time; a new run never overwrites a checkpoint;
* ``config.yaml`` is written before the first step; checkpoints are written atomically (temp
  file, fsync, rename) in a format read with ``torch.load(weights_only=True)`` and a SHA-256
  check (:func:`save_checkpoint`, :func:`load_checkpoint`), never with NaN/inf weights;
* resuming from any checkpoint -- an epoch end, the end, or a signal mid-epoch -- continues
  exactly as the uninterrupted run (bit-identical weights on CPU with ``train.deterministic``);
  the metrics log is cut back to the checkpoint; a resume may not change what the run is
  (:attr:`EpochTrainer.resume_may_change`; ``train.epochs`` grows only with ``extend``);
* SIGINT and SIGTERM during :meth:`EpochTrainer.fit` are deferred to the end of the current
  step, then the run saves and raises :class:`TrainingInterrupted` (a second signal aborts);
* the loss is read back to the host only every ``train.log_every`` steps; a non-finite loss,
  embedding or weight stops the run with :class:`TrainingDiverged`;
* under ``torchrun``: the same training as one process on the same global batch (up to float
  rounding, without BatchNorm on CPU); one checkpoint, written by rank 0, that every rank
  resumes from (per-rank RNG states included); a signal to any rank stops every rank at the same
  step boundary; a setting that fails on any rank fails on every rank, printed once.

Example:
    >>> import torch
    >>> from otcl.pipelines.config import RunConfig
    >>> class Toy(EpochTrainer):
    ...     def build(self):
    ...         g = torch.Generator().manual_seed(0)
    ...         self.x = torch.randn(64, 8, generator=g)
    ...         self.model = torch.nn.Linear(8, 4)
    ...         self.loss_fn = self.build_loss()
    ...         self.steps_per_epoch = 64 // self.batch_size
    ...     def compute_loss(self, epoch, step):
    ...         x = self.x[self.batch_indices(64, epoch, step)]
    ...         noise = torch.randn(x.shape, generator=self.step_generator("noise"))
    ...         z = self.forward_model(torch.cat([x, x + 0.1 * noise]))
    ...         return self.loss_fn(z[: len(x)], z[len(x) :])
    >>> cfg = RunConfig()
    >>> cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr, cfg.train.progress = 2, 16, 0.1, False
    >>> import tempfile
    >>> summary = Toy(cfg, tempfile.mkdtemp() + "/run").fit()
    >>> summary["epochs"]
    2
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import pickle
import random
import signal
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch
from torch import nn

from .. import __version__
from ._files import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    read_jsonl,
    write_jsonl,
)
from ._signals import DeferredSignals
from .config import given, save_config
from .distributed import (
    DistributedModel,
    agreed,
    any_signal,
    broadcast,
    gather_objects,
    has_batchnorm,
    init_from_env,
    main_log,
    mark_agreed,
    mean_over_ranks,
    wrap_model,
)

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "CHECKPOINT_FORMAT",
    "EpochTrainer",
    "TrainingInterrupted",
    "TrainingDiverged",
    "Progress",
    "RunLock",
    "prepare_run_dir",
    "check_writable",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "append_jsonl",
    "read_jsonl",
    "write_jsonl",
    "load_checkpoint",
    "check_finite_weights",
    "load_model_weights",
    "open_run",
    "restore_model",
    "save_checkpoint",
    "pick_device",
    "amp_dtype",
    "derive_seed",
    "seed_everything",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT_FORMAT = 2


# -- devices -------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available on this machine")
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None = no autocast)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if amp not in table:
        raise ValueError(f"train.amp: expected auto, bf16, fp16 or none, got {amp!r}")
    return table[amp]


# -- seeds and RNG states ------------------------------------------------------------------
def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed from ``seed`` and tags, stable across processes and platforms."""
    h = hashlib.sha256(repr((int(seed),) + tags).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state (Python, NumPy, torch CPU and CUDA) as tensors, lists and numbers
    (what a ``weights_only`` load accepts)."""
    version, key, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), list(key), gauss],
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.asarray(mt, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states returned by :func:`rng_state` (or stored by checkpoint format 1:
    Python's tuple and NumPy's own tuple)."""
    version, key, gauss = state["python"]
    random.setstate((int(version), tuple(int(k) for k in key), gauss))
    npst = state["numpy"]
    if isinstance(npst, dict):
        key = npst["key"].cpu().numpy().astype(np.uint32)
        npst = (npst["kind"], key, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    np.random.set_state(npst)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- checkpoints ---------------------------------------------------------------------------
#: checkpoint formats this version reads: 1 (otcl 0.1 before the pipelines moved) and 2
READABLE_FORMATS = (1, 2)
_REQUIRED_KEYS = {"format", "config", "model", "epoch", "step_in_epoch", "global_step", "rng"}


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
            f"run: the checkpoint in {str(where)!r} does not fit its model: {_first_line(e)}"
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
    on ``device`` (``"auto"``: :func:`pick_device`), in eval mode."""
    load_model_weights(model, st["model"], run_dir)
    dev = pick_device(device) if isinstance(device, str) else device
    return model.to(dev).eval()


def _format1_globals() -> list[tuple[Any, str]]:
    """The only globals a format-1 checkpoint needs beyond tensors: NumPy's RNG-state array
    (under the module names NumPy 1 and 2 pickle it with)."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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
        raise ValueError(f"run: cannot read checkpoint {where!r}: {_first_line(e)}") from None
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
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"run: cannot read checkpoint {where!r}: {_first_line(e)}") from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run's checkpoint (``path``: the file or its run directory) onto the CPU.

    Safe on untrusted files: only tensors, numbers, strings and containers are unpickled
    (``weights_only=True``), and format 2 verifies the payload's SHA-256 first. Format-1 files
    (otcl 0.1) may also hold NumPy's RNG-state array, which is allowed for them alone.

    Returns:
        the state dict written by :meth:`EpochTrainer.state` (``"format"``: 1 or 2).

    Raises:
        ValueError: no checkpoint there, a damaged file, a newer format, or a file that is not
            an otcl checkpoint (any pickle that would run code is refused unloaded).
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
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
    if fmt not in READABLE_FORMATS or not _REQUIRED_KEYS <= set(st):
        raise ValueError(f"run: {str(p)!r} is not an otcl checkpoint")
    return st


# -- run directories ----------------------------------------------------------------------
LOCK = ".otcl.lock"


def prepare_run_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) and check that files can be written in it.

    Raises:
        ValueError: one line naming the directory and the cause (an existing file, no such
            place, permissions, a read-only file system, a full disk).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"out: {str(p)!r} exists and is not a directory; choose another --out")
    try:
        p.mkdir(parents=True, exist_ok=True)
        check_writable(p)
    except OSError as e:
        raise ValueError(f"out: cannot write in {str(p)!r}: {e.strerror or e}") from None
    return p


class RunLock:
    """An exclusive lock on a run directory, held by the one process that writes it.

    ``fcntl.flock`` on ``<dir>/.otcl.lock`` (released by the kernel if the process dies, so a
    stale lock file never blocks anyone); the file records the holder's pid and host for the
    error message. Where ``fcntl`` does not exist (Windows) no lock is taken.

    Raises:
        ValueError: another process (or another trainer in this one) holds the lock.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"out: cannot write in {str(run_dir)!r}: {e.strerror}") from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise ValueError(
                f"out: {str(run_dir)!r} is being written by another otcl process ({holder}); "
                "wait for it to finish, or choose another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# -- progress ------------------------------------------------------------------------------
class Progress:
    """A tqdm bar on a terminal, about ten plain lines per run otherwise, nothing if disabled.

    Args:
        enabled: ``train.progress``.
        total: steps of the whole run; ``done``: steps already done (resume).
        epochs: epochs of the run (sets the plain-line spacing).
        desc: the bar's label; ``log``: where plain lines go.
    """

    def __init__(
        self, *, enabled: bool, total: int, done: int, epochs: int, desc: str, log
    ) -> None:
        self.bar = None
        self.line_every = 0
        self.log = log
        if enabled and not sys.stderr.isatty():
            self.line_every = max(1, epochs // 10)  # CI, pipes, nohup: plain lines
        elif enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total,
                    initial=min(done, total),
                    desc=desc,
                    unit="step",
                    leave=False,
                    dynamic_ncols=True,
                )
            except ImportError:
                pass

    def update(self, n: int = 1, **postfix: str) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(refresh=False, **postfix)
            self.bar.update(n)

    def epoch_line(self, epoch: int, epochs: int, text: str) -> None:
        """Log ``text`` for about one epoch in ten (and the last) when there is no bar."""
        if self.line_every and (epoch % self.line_every == 0 or epoch == epochs):
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- errors --------------------------------------------------------------------------------
class TrainingInterrupted(Exception):
    """Raised after SIGINT (Ctrl-C) or SIGTERM once the checkpoint is safely written.

    Attributes:
        path: the checkpoint; ``run_dir``: its directory.
        epoch, step: epochs completed and steps of the current epoch completed.
        signum: the signal (``exit_status`` = 128 + signum: 130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, path: Path, epoch: int, step: int, signum: int = signal.SIGINT) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} at epoch {epoch}, step {step}; checkpoint saved to {path}"
        )
        self.path, self.epoch, self.step, self.signum = path, epoch, step, int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def run_dir(self) -> Path:
        return self.path.parent


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


_BASE_KEYS = ("epoch", "loss", "lr", "seconds")


class _StopRequested(Exception):
    """A deferred SIGINT/SIGTERM reached a step boundary."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


# -- the training loop ---------------------------------------------------------------------
class EpochTrainer:
    """Trains ``cfg`` into ``out`` (or resumes it); :meth:`fit` returns the summary dict.

    See the module docstring for what a subclass provides and what this class guarantees.

    Args:
        cfg: the configuration (``resolve_config`` is applied to a copy).
        out: run directory (default ``cfg.train.out``, else :meth:`default_out`).
        resume: continue from ``out/checkpoint.pt``; without it an existing checkpoint in
            ``out`` is an error (nothing is overwritten silently).
        extend: with ``resume``, allow a larger ``train.epochs`` than the run's.
        data: an already loaded dataset, kept as :attr:`given_data` for :meth:`build` to use
            instead of loading it (``compare`` loads it once for all its runs).
        log: where progress lines go (standard error by default).
    """

    #: the throughput column of metrics.jsonl and summary.json: ``<unit>_per_s``
    throughput_unit: str = "samples"

    model: nn.Module
    loss_fn: nn.Module
    steps_per_epoch: int
    #: the loss is multiplied by this before backward (see :meth:`loss_is_global`)
    loss_scale: int = 1
    _loss_global: bool = False
    _dm: DistributedModel | None = None

    def __init__(
        self,
        cfg: Any,
        out: str | Path | None = None,
        *,
        resume: bool = False,
        extend: bool = False,
        data: Any = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.given_data = data
        self.session = init_from_env()  # torchrun's process group (None: one process)
        self.world = 1 if self.session is None else self.session.world
        self.rank = 0 if self.session is None else self.session.rank
        self.is_main = self.rank == 0
        self.log = main_log(log or _stderr)
        self._lock: RunLock | None = None
        try:
            with agreed():
                self.cfg = self.resolve_config(cfg)
                self.check_config()
                t = self.cfg.train
                if out is None:
                    out = t.out if t.out is not None else self.default_out()
                self.out = Path(out)
                t.out = str(self.out)
                if extend and not resume:
                    raise ValueError("--extend: only with --resume (it lengthens an existing run)")
                if self.is_main:  # a bad --out fails here, before any data is loaded
                    prepare_run_dir(self.out)
                    self._lock = RunLock(self.out)
            self._setup(resume, extend)
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: bool, extend: bool) -> None:
        t = self.cfg.train
        ckpt = self.out / CHECKPOINT
        st = None
        with agreed():  # rank 0 alone sees the run directory (it may be on its node only)
            if self.is_main:
                if ckpt.exists() and not resume:
                    raise ValueError(
                        f"out: {str(self.out)!r} already holds a checkpoint; pass --resume to "
                        "continue it, or choose another --out"
                    )
                if resume and not ckpt.exists():
                    raise ValueError(f"resume: no {CHECKPOINT} in {str(self.out)!r} to resume from")
                st = load_checkpoint(ckpt) if resume else None
                if st is not None:
                    self._check_resume(st, extend)  # before the data loads
        st = broadcast(st)  # every rank restores rank 0's checkpoint
        with agreed():
            if t.threads:
                torch.set_num_threads(int(t.threads))
            self.device = pick_device(t.device)
            if self.session is not None:
                self.device = self.session.device(self.device)  # cuda -> cuda:LOCAL_RANK
            self.amp_dtype = amp_dtype(t.amp, self.device)
            if t.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.benchmark = False
            elif self.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            self.batch_size = int(t.batch_size)
            seed_everything(t.seed)
            self.build()
            for attr in ("model", "loss_fn", "steps_per_epoch"):
                if not hasattr(self, attr):
                    raise TypeError(f"{type(self).__name__}.build() must set self.{attr}")
            steps = int(self.steps_per_epoch)
            if t.max_steps_per_epoch:
                steps = min(steps, int(t.max_steps_per_epoch))
            if steps < 1:
                raise ValueError(f"train.batch_size: {self.batch_size} leaves no step in an epoch")
            self.steps_per_epoch = steps
            self.total_steps = steps * int(t.epochs)
            self._shard_batch()
            self._loss_global = self.world > 1 and self.loss_is_global()
            self.loss_scale = self.world if self._loss_global else 1
            if self.session is not None:
                self._prepare_distributed_model()
        self.forward_model: Any = self.model
        self._dm = None
        if self.session is not None:  # right after the agreement: every rank is here
            self._dm = wrap_model(self.model, self.device, compile=bool(t.compile))
            self.forward_model = self._dm
            self.log(
                f"{self.tag}: torchrun, {self.world} process(es), backend "
                f"{torch.distributed.get_backend()}, {self.device.type}; global batch "
                f"{self.batch_size} = {self.world} x {self.local_batch_size}"
            )
        elif t.compile:
            self.forward_model = torch.compile(self.model)
        self.optimizer = self.build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        scaler_cls = getattr(torch.amp, "GradScaler", None)
        fp16 = self.amp_dtype == torch.float16
        if scaler_cls is None:  # torch < 2.3
            self.scaler = torch.cuda.amp.GradScaler(enabled=fp16)
        else:
            self.scaler = scaler_cls(self.device.type, enabled=fp16)
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps of the current epoch completed
        self.global_step = 0
        self.epoch_loss = [0.0, 0]  # running sum, count of the current epoch
        self.epoch_seconds = 0.0  # time spent in the current epoch before a resume
        self._running = torch.zeros((), device=self.device)
        self._running_count = 0
        self.resumed = st is not None
        if st is not None:
            with agreed():
                self.restore(st)

    def _shard_batch(self) -> None:
        """Split the global batch ``self.batch_size`` over the ranks (``local_batch_size`` rows
        each, this rank's ``local_rows`` of it)."""
        b, w = self.batch_size, self.world
        if b % w:
            lower = b - b % w
            raise ValueError(
                f"train.batch_size: {b} is the global batch, split evenly over the {w} "
                f"processes of torchrun; use a multiple of {w} (e.g. {lower if lower else w})"
            )
        #: rows per rank; ``local_rows``: this rank's rows of each global batch
        self.local_batch_size = b // w
        self.local_rows = slice(self.rank * (b // w), (self.rank + 1) * (b // w))

    def _prepare_distributed_model(self) -> None:
        """SyncBatchNorm on CUDA (BatchNorm statistics over the global batch); a warning on CPU,
        where BatchNorm stays per process (SyncBatchNorm needs CUDA)."""
        if self.world == 1 or not has_batchnorm(self.model):
            return
        if self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.log(f"{self.tag}: BatchNorm -> SyncBatchNorm (statistics of the global batch)")
        else:
            self.log(
                f"{self.tag}: warning: BatchNorm statistics are each process's own on "
                f"{self.device.type} (SyncBatchNorm needs CUDA): the run differs from one "
                "process; a model without BatchNorm trains identically"
            )

    def close(self) -> None:
        """Release the run directory's lock (:meth:`fit` does it when it returns)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    #: settings a resumed run may change: where and how it runs, not what it computes
    resume_may_change: tuple[str, ...] = (
        "train.out",
        "train.progress",
        "train.device",
        "train.threads",
        "train.log_every",
        "train.checkpoint_every",
        "train.compile",
        "train.deterministic",
    )

    def _check_resume(self, st: dict[str, Any], extend: bool) -> None:
        """Refuse settings that would change what the saved run is (``train.epochs`` only
        grows, and only with ``extend``)."""
        saved = _flat(self.resolve_config(type(self.cfg).from_dict(st["config"])).to_dict())
        now = _flat(self.cfg.to_dict())
        allowed = self.resume_may_change
        changed = sorted(
            k
            for k in saved.keys() | now.keys()
            if saved.get(k) != now.get(k)
            and not any(k == a or k.startswith(a + ".") for a in allowed)
        )
        old, new = saved.get("train.epochs"), now.get("train.epochs")
        if extend and not (isinstance(old, int) and isinstance(new, int) and new > old):
            raise ValueError(
                f"--extend: expected --epochs larger than the run's {old} epochs, got {new}"
            )
        if "train.epochs" in changed and extend:
            changed.remove("train.epochs")
            self.log(
                f"{self.out}: extending the run from {old} to {new} epochs; the learning-rate "
                "schedule is recomputed for the new length (recorded in config.yaml)"
            )
        if changed == ["train.epochs"]:
            raise ValueError(
                f"train.epochs: the run in {str(self.out)!r} is set up for {old} epochs, got "
                f"{new}; to train it longer pass --extend with --epochs N (N > {old})"
            )
        if changed:
            diffs = "; ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise ValueError(
                f"resume: these settings differ from the run in {str(self.out)!r} and would "
                f"change what it is: {diffs}; drop them, or start a new run with another --out"
            )

    # -- hooks a pipeline overrides --------------------------------------------------------
    def resolve_config(self, cfg: Any) -> Any:
        """The config this run uses (e.g. presets filled in); must return a new object."""
        return copy.deepcopy(cfg)

    def check_config(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting (subclasses call ``super()``)."""
        t, o = self.cfg.train, self.cfg.optim
        if t.epochs is None or t.epochs < 1:
            raise ValueError(f"train.epochs: expected an integer >= 1, got {t.epochs!r}")
        if t.batch_size is None or t.batch_size < 2:
            raise ValueError(f"train.batch_size: expected an integer >= 2, got {t.batch_size!r}")
        if o.lr is None or not o.lr > 0:
            raise ValueError(f"optim.lr: expected a learning rate > 0, got {o.lr!r}")
        if o.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optim.optimizer: expected sgd, adam or adamw, got {o.optimizer!r}")
        if o.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule: expected cosine or constant, got {o.schedule!r}")
        if not 0.0 <= o.momentum < 1.0:
            raise ValueError(f"optim.momentum: expected a number in [0, 1), got {o.momentum!r}")
        if o.optimizer != "sgd" and ({"momentum", "nesterov"} & given(o) or o.nesterov):
            raise ValueError(
                f"optim.momentum / optim.nesterov: apply only to optim.optimizer=sgd, got "
                f"{o.optimizer!r} (Adam's moments are fixed)"
            )
        if o.nesterov and o.momentum == 0:
            raise ValueError("optim.nesterov: needs optim.momentum > 0, got 0")
        if o.weight_decay is not None and not o.weight_decay >= 0:
            raise ValueError(f"optim.weight_decay: expected a number >= 0, got {o.weight_decay!r}")
        if not o.warmup_epochs >= 0:
            raise ValueError(
                f"optim.warmup_epochs: expected a number >= 0, got {o.warmup_epochs!r}"
            )
        for name in ("checkpoint_every", "log_every"):
            if getattr(t, name) < 1:
                raise ValueError(
                    f"train.{name}: expected an integer >= 1, got {getattr(t, name)!r}"
                )
        for name in ("max_steps_per_epoch", "threads"):
            if getattr(t, name) is not None and getattr(t, name) < 1:
                raise ValueError(
                    f"train.{name}: expected an integer >= 1 or none, got {getattr(t, name)!r}"
                )
        loss = getattr(self.cfg, "loss", None)
        if loss is not None and loss.dmm_mix not in ("input", "embedding"):
            raise ValueError(f"loss.dmm_mix: expected input or embedding, got {loss.dmm_mix!r}")

    def default_out(self) -> str:
        """The run directory when neither ``out`` nor ``train.out`` is given."""
        loss = getattr(self.cfg, "loss", None)
        name = loss.name if loss is not None else type(self).__name__.lower()
        return f"runs/{name}-s{self.cfg.train.seed}"

    def build(self) -> None:
        """Set ``self.model``, ``self.loss_fn`` and ``self.steps_per_epoch`` (see the module)."""
        raise NotImplementedError

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        """The scalar loss (with its graph) of step ``step`` (0-based) of epoch ``epoch``."""
        raise NotImplementedError

    def train_step(self, epoch: int, step: int) -> torch.Tensor:
        """One optimisation step; returns the detached loss (no host sync)."""
        loss = self.compute_loss(epoch, step)
        self.optimize(loss)
        return loss.detach()

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of every epoch (also a resumed one)."""
        set_epoch = getattr(self.loss_fn, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def evaluate(self, final: bool) -> dict[str, float]:
        """Metrics at the end of an epoch (``final``: once after the last one); {} for none."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """The pipeline's own state to checkpoint (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def summarize(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Fields of ``summary.json`` (``summary`` holds the generic ones)."""
        return summary

    def items_per_step(self) -> int:
        """Items per step for the throughput column (default: the batch size)."""
        return self.batch_size

    @property
    def tag(self) -> str:
        """Prefix of log lines and the progress bar."""
        loss = getattr(self.cfg, "loss", None)
        return f"{loss.name} s{self.cfg.train.seed}" if loss is not None else "train"

    def loss_is_global(self) -> bool:
        """Whether the loss couples the global batch (``gather_distributed``): every rank then
        returns the global value and back-propagates its share, so the trainer multiplies it by
        the world size before backward (DDP averages gradients). A loss that is a mean over this
        rank's rows (e.g. a per-sample triplet loss) is not: DDP's average is already the
        gradient of the global mean."""
        modules = getattr(self.loss_fn, "modules", None)
        return modules is not None and any(
            getattr(m, "gather_distributed", False) for m in modules()
        )

    # -- helpers for subclasses ------------------------------------------------------------
    def loss_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters of an otcl loss for this run: under torchrun ``gather_distributed=True``
        is added (negatives and couplings from the global batch) unless ``params`` sets it."""
        if self.session is None or "gather_distributed" in params:
            return dict(params)
        return {**params, "gather_distributed": True}

    def build_loss(self) -> nn.Module:
        """``otcl.losses.build(cfg.loss.name, **cfg.loss.params)`` on the run's device (with
        :meth:`loss_params`: the global batch under torchrun)."""
        from ..losses import build

        return build(self.cfg.loss.name, **self.loss_params(self.cfg.loss.params)).to(self.device)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """``optim`` over ``self.model``: lr x batch/128, weight decay on weights (ndim > 1),
        torch's fused implementation with ``optim.fused`` where this torch and device have one."""
        o = self.cfg.optim
        lr = float(o.lr) * self.batch_size / 128.0
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": float(o.weight_decay or 0.0)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        kwargs: dict[str, Any] = {"lr": lr}
        if o.optimizer == "sgd":
            cls: type[torch.optim.Optimizer] = torch.optim.SGD
            kwargs.update(momentum=o.momentum, nesterov=o.nesterov)
        else:
            cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
        if o.fused:
            try:
                return cls(groups, fused=True, **kwargs)
            except (RuntimeError, TypeError, ValueError) as e:  # no fused kernel here
                self.log(
                    f"optim.fused: torch {torch.__version__} has no fused {o.optimizer} for "
                    f"{self.device.type} ({_first_line(e)}); using the default implementation"
                )
        return cls(groups, **kwargs)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate at global step ``step`` (warm-up, cosine)."""
        o = self.cfg.optim
        warm = int(round(o.warmup_epochs * self.steps_per_epoch))
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))

    def batch_indices(self, n: int, epoch: int, step: int) -> torch.Tensor:
        """Indices (CPU, int64) of this rank's rows of batch ``step`` in a permutation of
        ``range(n)`` that depends only on ``(seed, epoch)``: every sample once per epoch, the
        same order on resume and whatever the number of processes (rank r takes rows
        ``local_rows`` of the global batch; one process takes it whole)."""
        return self.global_batch_indices(n, epoch, step)[self.local_rows]

    def global_batch_indices(self, n: int, epoch: int, step: int) -> torch.Tensor:
        """The whole global batch ``step`` (every rank gets the same): for a pipeline that draws
        per-sample randomness for the global batch and keeps ``local_rows`` of it."""
        order = self._order_cache
        if order is None or order[0] != (n, epoch):
            g = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, "order", epoch))
            order = ((n, epoch), torch.randperm(n, generator=g))
            self._order_cache = order
        return order[1][step * self.batch_size : (step + 1) * self.batch_size]

    _order_cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def step_generator(self, tag: str, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded by ``(seed, tag, global step)`` on ``device`` (default: the run's)."""
        g = torch.Generator(device=device if device is not None else self.device)
        g.manual_seed(derive_seed(self.cfg.train.seed, tag, self.global_step))
        return g

    def autocast(self) -> AbstractContextManager:
        """Autocast to ``train.amp``'s dtype (a no-op without one)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def optimize(self, loss: torch.Tensor) -> None:
        """Backward (scaled under fp16, times :attr:`loss_scale` under torchrun), optimizer
        step, scheduler step."""
        if self._dm is not None and self._dm.forwards == 0:
            raise mark_agreed(
                RuntimeError(
                    f"{type(self).__name__}: the step never called self.forward_model; under "
                    "torchrun the model must be called through it (DistributedDataParallel "
                    "all-reduces the gradients only then)"
                )
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.loss_scale != 1:
            loss = loss * self.loss_scale
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    # -- checkpoints -----------------------------------------------------------------------
    def _fold_running_loss(self) -> None:
        """Add the on-device running loss of the last steps to the epoch's sum (host sync)."""
        if self._running_count:
            if self.world > 1 and not self._loss_global:  # each rank's own loss: their mean
                mean_over_ranks(self._running)
            self.epoch_loss[0] += float(self._running)
            self.epoch_loss[1] += self._running_count
            self._running.zero_()
            self._running_count = 0

    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as written to ``checkpoint.pt``."""
        self._fold_running_loss()
        st = {
            "otcl_version": __version__,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_loss": list(self.epoch_loss),
            "epoch_seconds": self.epoch_seconds,
            "rng": rng_state(),
            "done": self.epoch >= int(self.cfg.train.epochs),
        }
        extra = self.extra_state()
        if extra:
            st["pipeline"] = extra
        return st

    def _finite_state(self) -> bool:
        """Whether every parameter and buffer of the model is finite (one host sync)."""
        tensors = [v for v in self.model.state_dict().values() if v.is_floating_point()]
        return all(bool(torch.isfinite(v).all()) for v in tensors)

    def save(self) -> Path:
        """Write the checkpoint atomically; returns its path.

        Raises:
            TrainingDiverged: the weights are no longer finite (the last good checkpoint stays).
        """
        if not self._finite_state():
            epoch = self.epoch + (1 if self.step_in_epoch else 0)
            raise TrainingDiverged(
                f"the weights became NaN/inf by step {self.global_step} (epoch {epoch}); the "
                "last finite checkpoint is kept; lower optim.lr or raise the loss temperature"
            )
        path = self.out / CHECKPOINT
        st = self.state()
        if self.world > 1:  # every rank's RNG states, restored rank by rank
            st["rng_ranks"] = gather_objects(st["rng"])
            st["world_size"] = self.world
        with agreed():  # the others wait until rank 0 has written it
            if self.is_main:
                save_checkpoint(st, path)
        return path

    def restore(self, st: dict[str, Any]) -> None:
        """Load a checkpoint's state (see :meth:`state`) into this trainer."""
        load_model_weights(self.model, st["model"], self.out)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        self.loss_fn.load_state_dict(st["loss"])
        self.epoch = int(st["epoch"])
        self.step_in_epoch = int(st["step_in_epoch"])
        self.global_step = int(st["global_step"])
        self.epoch_loss = [float(st["epoch_loss"][0]), int(st["epoch_loss"][1])]
        self.epoch_seconds = float(st.get("epoch_seconds", 0.0))
        self.load_extra_state(st.get("pipeline", {}))
        ranks = st.get("rng_ranks")
        same_world = isinstance(ranks, list) and len(ranks) == self.world
        set_rng_state(ranks[self.rank] if same_world else st["rng"])
        if self.is_main:  # the log may hold epochs finished after the checkpoint: redone
            log = self.out / METRICS
            write_jsonl(log, [r for r in read_jsonl(log) if r.get("epoch", 0) <= self.epoch])

    # -- training --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to ``summary.json``)."""
        t = self.cfg.train
        epochs = int(t.epochs)
        if self._lock is None and self.is_main:
            self._lock = RunLock(self.out)
        try:
            return self._fit(epochs)
        finally:
            self.close()

    #: files a run writes besides its checkpoint and config (removed when a run starts afresh)
    outputs: tuple[str, ...] = (METRICS, SUMMARY)

    def _fit(self, epochs: int) -> dict[str, Any]:
        t = self.cfg.train
        with agreed():
            if self.is_main:
                self._start_files()
        progress = Progress(
            enabled=t.progress and self.is_main,
            total=self.total_steps,
            done=self.global_step,
            epochs=epochs,
            desc=f"train {self.tag}",
            log=self.log,
        )
        self.model.train()
        with DeferredSignals() as signals:
            self._signals = signals
            try:
                while self.epoch < epochs:
                    self._run_epoch(progress)
            except _StopRequested:
                progress.close()
                path = self.save()
                raise mark_agreed(
                    TrainingInterrupted(
                        path, self.epoch, self.step_in_epoch, self._stop_signal or signal.SIGINT
                    )
                ) from None
            except Exception as e:  # the other ranks may be inside a step: no exchange
                mark_agreed(e)
                raise
            finally:
                progress.close()
                self._signals = None
        return self._finish()

    def _start_files(self) -> None:
        """Rank 0, before the first step: clear a run that saved no checkpoint, write the config."""
        if not self.resumed and self.global_step == 0:
            stale = [f for f in self.outputs if (self.out / f).exists()]
            if stale:  # left by a run killed before its first checkpoint
                self.log(
                    f"{self.out}: removing {', '.join(stale)} of an earlier run that saved no "
                    "checkpoint; starting afresh"
                )
                for f in stale:
                    (self.out / f).unlink()
        save_config(self.cfg, self.out / CONFIG)

    _signals: DeferredSignals | None = None
    _stop_signal: int | None = None

    def _check_stop(self) -> None:
        """At a step boundary: stop if a SIGINT/SIGTERM arrived during the last step -- on any
        rank under torchrun (one all-reduce of the signal number), so that all stop here."""
        received = self._signals.received if self._signals is not None else None
        if self.world > 1:
            received = any_signal(received) or None
        if received is not None:
            self._stop_signal = received
            raise _StopRequested

    def _run_epoch(self, progress: Progress) -> None:
        t = self.cfg.train
        epochs = int(t.epochs)
        self.start_epoch(self.epoch)
        start = time.perf_counter()
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            self._check_stop()
            if self._dm is not None:
                self._dm.forwards = 0
            try:
                loss = self.train_step(self.epoch, step)
            except ValueError as e:  # a loss's input check on embeddings gone NaN/inf
                if self.global_step > 0 and ("finite" in str(e) or not self._finite_state()):
                    raise TrainingDiverged(
                        f"non-finite values at epoch {self.epoch + 1}, step {step + 1} "
                        f"({_first_line(e)}); lower optim.lr or raise the loss temperature"
                    ) from None
                raise
            self._running += loss
            self._running_count += 1
            self.global_step += 1
            self.step_in_epoch = step + 1
            postfix = {}
            if (step + 1) % t.log_every == 0 or step + 1 == self.steps_per_epoch:
                self._fold_running_loss()  # the only host sync of the loop
                if not math.isfinite(self.epoch_loss[0]):
                    raise TrainingDiverged(
                        f"the loss became {self.epoch_loss[0]} by epoch {self.epoch + 1}, step "
                        f"{step + 1}; lower optim.lr or raise the loss temperature"
                    )
                postfix = {
                    "epoch": f"{self.epoch + 1}/{epochs}",
                    "loss": f"{self.epoch_loss[0] / max(1, self.epoch_loss[1]):.4f}",
                }
            progress.update(1, **postfix)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = self.epoch_seconds + time.perf_counter() - start
        self.epoch += 1
        unit = self.throughput_unit
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": seconds,
            f"{unit}_per_s": self.items_per_step() * self.steps_per_epoch / max(seconds, 1e-9),
        }
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]
        self.epoch_seconds = 0.0
        with agreed():  # evaluation and files: rank 0 (the others wait here)
            if self.is_main:
                if self.epoch < epochs:  # the last epoch's metrics: the final evaluation
                    record.update(self.evaluate(final=False))
                append_jsonl(self.out / METRICS, record)
                extras = "".join(
                    f", {k} {v:.4f}"
                    for k, v in record.items()
                    if k not in _BASE_KEYS and not k.endswith("_per_s")
                )
                progress.epoch_line(
                    self.epoch,
                    epochs,
                    f"{self.tag} epoch {self.epoch}/{epochs}: loss {record['loss']:.4f}, "
                    f"{seconds:.2f} s, {record[f'{unit}_per_s']:.0f} {unit}/s{extras}",
                )
        if self.epoch % t.checkpoint_every == 0 or self.epoch >= epochs:
            self.save()

    def _finish(self) -> dict[str, Any]:
        """The final evaluation and ``summary.json`` on rank 0; the summary on every rank."""
        summary = None
        with agreed():
            if self.is_main:
                summary = self._summary()
        return broadcast(summary)  # type: ignore[return-value]

    def _summary(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        final = self.evaluate(final=True)
        eval_seconds = time.perf_counter() - t0
        records = read_jsonl(self.out / METRICS)
        if records and final:
            records[-1].update(final)
            write_jsonl(self.out / METRICS, records)
        secs = [r["seconds"] for r in records]
        steady = secs[1:] if len(secs) > 1 else secs  # the first epoch includes warm-up
        key = f"{self.throughput_unit}_per_s"
        rates = [r[key] for r in records if key in r]
        summary: dict[str, Any] = {
            "seed": self.cfg.train.seed,
            "epochs": self.epoch,
            "final_loss": records[-1]["loss"] if records else None,
            **final,
            "seconds_per_epoch": statistics.median(steady) if steady else None,
            key: statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None,
            "train_seconds": sum(secs),
            "eval_seconds": eval_seconds,
            "device": str(self.device),
            "torch": torch.__version__,
            "otcl": __version__,
        }
        if self.session is not None:
            summary["world_size"] = self.world
        summary = self.summarize(summary)
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=2))
        return summary
