"""The run machinery every otcl pipeline shares: one training loop, one run directory format.

A *run* is one output directory::

    run/config.yaml      the resolved configuration (everything needed to rebuild the run)
    run/checkpoint.pt    model, optimizer, scheduler, AMP scaler, loss state, RNG states,
                         epoch/step (written atomically every ``train.checkpoint_every``
                         epochs, at the end, and on Ctrl-C)
    run/metrics.jsonl    one JSON record per epoch (loss, lr, seconds, throughput, metrics)
    run/summary.json     written when training completes

:class:`EpochTrainer` owns all of it -- run directory, resolved config, atomic checkpoints,
exact resume, the metrics log, progress, seeds, device and autocast, Ctrl-C, divergence -- and a
pipeline only says what one step computes.

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
  generator carried across steps): that is what makes a resumed run identical.
  Or override :meth:`EpochTrainer.train_step` ``(epoch, step) -> detached loss`` for full
  control of the update (then call :meth:`optimize` yourself).

Override (optional): :meth:`resolve_config` (presets), :meth:`check_config` (call ``super()``),
:meth:`default_out`, :meth:`build_optimizer`, :meth:`start_epoch` (default: the loss's
``set_epoch`` hook), :meth:`evaluate` ``(final) -> {name: value}`` (end-of-epoch metrics; with
``final=True`` once after the last epoch, into the last metrics record and the summary),
:meth:`extra_state` / :meth:`load_extra_state` (the pipeline's own state to checkpoint),
:meth:`summarize` (fields added to ``summary.json``), ``throughput_unit`` and
:meth:`items_per_step` (the ``<unit>_per_s`` column), :attr:`tag` (the log-line prefix).

The config is any dataclass with the shared sections ``train`` (:class:`~otcl.pipelines.config.
TrainConfig`), ``optim`` (:class:`~otcl.pipelines.config.OptimConfig`) and ``loss``
(:class:`~otcl.pipelines.config.LossConfig`), e.g. :class:`~otcl.pipelines.config.RunConfig`.

The base guarantees: a new run never overwrites an existing one (``resume=True`` continues it);
``config.yaml`` is written before the first step; checkpoints are written atomically (temp file,
fsync, rename); resuming from any checkpoint -- an epoch end, the end, or a Ctrl-C mid-epoch --
continues exactly as the uninterrupted run (bit-identical weights on CPU with
``train.deterministic``), and the metrics log is cut back to the checkpoint; the loss is read back
to the host only every ``train.log_every`` steps; a non-finite loss stops the run with
:class:`TrainingDiverged`; Ctrl-C saves and raises :class:`TrainingInterrupted`.

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
    ...         return self.loss_fn(self.model(x), self.model(x + 0.1 * noise))
    >>> cfg = RunConfig()
    >>> cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr, cfg.train.progress = 2, 16, 0.1, False
    >>>     >>> summary = Toy(cfg, tempfile.mkdtemp() + "/run").fit()
    >>> summary["epochs"]
    2
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ._files import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
    write_jsonl,
)
from .config import save_config

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
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "append_jsonl",
    "read_jsonl",
    "write_jsonl",
    "load_checkpoint",
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
CHECKPOINT_FORMAT = 1


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
    """Every global RNG state (Python, NumPy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states returned by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- checkpoints ---------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a run's checkpoint (``path`` is the file or its run directory).

    Raises:
        ValueError: no checkpoint there, or a file that is not an otcl checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.exists():
        raise ValueError(f"run: expected a run directory holding {CHECKPOINT}, got {str(path)!r}")
    try:
        st = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"run: cannot read checkpoint {str(p)!r}: {e}") from None
    if not isinstance(st, dict) or st.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"run: {str(p)!r} is not an otcl checkpoint (format {CHECKPOINT_FORMAT})")
    return st


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
    """Raised after Ctrl-C once the checkpoint is safely written."""

    def __init__(self, path: Path, epoch: int, step: int) -> None:
        super().__init__(f"interrupted at epoch {epoch}, step {step}; checkpoint saved to {path}")
        self.path, self.epoch, self.step = path, epoch, step

    @property
    def run_dir(self) -> Path:
        return self.path.parent


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


_BASE_KEYS = ("epoch", "loss", "lr", "seconds")


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
        log: where progress lines go (standard error by default).
    """

    #: the throughput column of metrics.jsonl and summary.json: ``<unit>_per_s``
    throughput_unit: str = "samples"

    model: nn.Module
    loss_fn: nn.Module
    steps_per_epoch: int

    def __init__(
        self,
        cfg: Any,
        out: str | Path | None = None,
        *,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = self.resolve_config(cfg)
        self.check_config()
        t = self.cfg.train
        if out is None:
            out = t.out if t.out is not None else self.default_out()
        self.out = Path(out)
        t.out = str(self.out)
        self.log = log or _stderr
        ckpt = self.out / CHECKPOINT
        if ckpt.exists() and not resume:
            raise ValueError(
                f"out: {str(self.out)!r} already holds a checkpoint; pass --resume to continue "
                "it, or choose another --out"
            )
        if resume and not ckpt.exists():
            raise ValueError(f"resume: no {CHECKPOINT} in {str(self.out)!r} to resume from")
        if t.threads:
            torch.set_num_threads(int(t.threads))
        self.device = pick_device(t.device)
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
        self.forward_model: nn.Module = self.model
        if t.compile:
            self.forward_model = torch.compile(self.model)  # type: ignore[assignment]
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
        if resume:
            self.restore(load_checkpoint(ckpt, map_location=self.device))

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
        if t.checkpoint_every < 1:
            raise ValueError(
                f"train.checkpoint_every: expected an integer >= 1, got {t.checkpoint_every!r}"
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

    # -- helpers for subclasses ------------------------------------------------------------
    def build_loss(self) -> nn.Module:
        """``otcl.losses.build(cfg.loss.name, **cfg.loss.params)`` on the run's device."""
        from ..losses import build

        return build(self.cfg.loss.name, **self.cfg.loss.params).to(self.device)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """``optim`` over ``self.model``: lr x batch/128, weight decay on weights (ndim > 1)."""
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
        if o.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
        cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr)

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
        """Indices (CPU, int64) of batch ``step`` in a permutation of ``range(n)`` that depends
        only on ``(seed, epoch)``: every sample once per epoch, the same order on resume."""
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
        """Backward (scaled under fp16), optimizer step, scheduler step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    # -- checkpoints -----------------------------------------------------------------------
    def _fold_running_loss(self) -> None:
        """Add the on-device running loss of the last steps to the epoch's sum (host sync)."""
        if self._running_count:
            self.epoch_loss[0] += float(self._running)
            self.epoch_loss[1] += self._running_count
            self._running.zero_()
            self._running_count = 0

    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as written to ``checkpoint.pt``."""
        self._fold_running_loss()
        st = {
            "format": CHECKPOINT_FORMAT,
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

    def save(self) -> Path:
        """Write the checkpoint atomically; returns its path."""
        path = self.out / CHECKPOINT
        atomic_torch_save(self.state(), path)
        return path

    def restore(self, st: dict[str, Any]) -> None:
        """Load a checkpoint's state (see :meth:`state`) into this trainer."""
        self.model.load_state_dict(st["model"])
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
        set_rng_state(st["rng"])
        # the metrics log may hold epochs finished after this checkpoint: they will be redone
        log = self.out / METRICS
        write_jsonl(log, [r for r in read_jsonl(log) if r.get("epoch", 0) <= self.epoch])

    # -- training --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to ``summary.json``)."""
        t = self.cfg.train
        epochs = int(t.epochs)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / CONFIG)
        progress = Progress(
            enabled=t.progress,
            total=self.total_steps,
            done=self.global_step,
            epochs=epochs,
            desc=f"train {self.tag}",
            log=self.log,
        )
        self.model.train()
        try:
            while self.epoch < epochs:
                self._run_epoch(progress)
        except KeyboardInterrupt:
            progress.close()
            path = self.save()
            raise TrainingInterrupted(path, self.epoch, self.step_in_epoch) from None
        finally:
            progress.close()
        return self._finish()

    def _run_epoch(self, progress: Progress) -> None:
        t = self.cfg.train
        epochs = int(t.epochs)
        self.start_epoch(self.epoch)
        start = time.perf_counter()
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            loss = self.train_step(self.epoch, step)
            self._running += loss
            self._running_count += 1
            self.global_step += 1
            self.step_in_epoch = step + 1
            postfix = {}
            if (step + 1) % t.log_every == 0 or step + 1 == self.steps_per_epoch:
                self._fold_running_loss()  # the only host sync of the loop
                if not math.isfinite(self.epoch_loss[0]):
                    raise TrainingDiverged(
                        f"loss became {self.epoch_loss[0]} at epoch {self.epoch + 1}, step "
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
        if self.epoch < epochs:  # the last epoch's metrics come from the final evaluation
            record.update(self.evaluate(final=False))
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]
        self.epoch_seconds = 0.0
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
        summary = self.summarize(summary)
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=2))
        return summary
