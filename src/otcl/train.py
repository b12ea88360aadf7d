"""Self-supervised training of an encoder with any otcl loss (the engine of ``otcl train``).

One run = one output directory::

    runs/x/config.yaml      the resolved configuration (everything needed to rebuild the run)
    runs/x/checkpoint.pt    model, optimizer, scheduler, loss state, RNG states, epoch/step
                            (written atomically every ``checkpoint_every`` epochs, at the end,
                            and on Ctrl-C)
    runs/x/metrics.jsonl    one JSON record per epoch (loss, lr, seconds, views/s, kNN)
    runs/x/summary.json     written when training completes
    runs/x/eval.json        written by ``otcl eval`` (kNN + linear probe)

Speed on a GPU: the decoded uint8 dataset is resident on the device, both views of a batch are
augmented there in one batched call (:class:`otcl.data.Augment`), the encoder runs in
channels_last under bf16 autocast (optionally ``torch.compile``-d), the loss is computed in
float32, and the host reads the loss back only every ``log_every`` steps.

Reproducibility: the batch order of epoch ``e`` and the augmentations of global step ``s`` are
drawn from generators seeded by ``(seed, e)`` and ``(seed, s)``, and every other RNG state is in
the checkpoint, so a run resumed from any checkpoint (including a Ctrl-C one taken mid-epoch)
continues exactly as the uninterrupted run would have (bit-for-bit on CPU with
``train.deterministic``).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .config import Config, resolve, save_config
from .data import Augment, ImageData, load_dataset
from .evaluate import knn_accuracy, split_features
from .losses import build as build_loss
from .models import Encoder, build_encoder
from .utils import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_text,
    pick_device,
    read_jsonl,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = [
    "Trainer",
    "TrainingInterrupted",
    "TrainingDiverged",
    "load_checkpoint",
    "load_run",
    "CHECKPOINT",
    "derive_seed",
]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once the checkpoint is safely written."""

    def __init__(self, path: Path, epoch: int, step: int) -> None:
        super().__init__(f"interrupted at epoch {epoch}, step {step}; checkpoint saved to {path}")
        self.path, self.epoch, self.step = path, epoch, step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed from ``seed`` and tags, stable across processes and platforms."""
    h = hashlib.sha256(repr((int(seed),) + tags).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
    if amp not in table:
        raise ValueError(f"train.amp: expected auto, bf16, fp16 or none, got {amp!r}")
    return table[amp]


def make_augment(cfg: Config, data: ImageData) -> Augment:
    d = cfg.data
    return Augment(
        d.image_size,
        crop_scale=d.crop_scale,  # type: ignore[arg-type]
        flip_p=d.flip_p,  # type: ignore[arg-type]
        jitter=d.jitter,  # type: ignore[arg-type]
        jitter_p=d.jitter_p,  # type: ignore[arg-type]
        gray_p=d.gray_p,  # type: ignore[arg-type]
        rotate=d.rotate,  # type: ignore[arg-type]
        mean=data.mean,
        std=data.std,
    )


def make_model(cfg: Config, data: ImageData) -> Encoder:
    m = cfg.model
    return build_encoder(
        m.arch,  # type: ignore[arg-type]
        data.image_shape[0],
        width=m.width or 32,
        head_hidden=m.head_hidden,  # type: ignore[arg-type]
        head_out=m.head_out,  # type: ignore[arg-type]
        head_bn=m.head_bn,
    )


def load_data(cfg: Config, progress: bool = True) -> ImageData:
    d = cfg.data
    return load_dataset(
        d.dataset,
        d.data_dir,
        download=d.download,
        skip_corrupt=d.skip_corrupt,
        image_size=d.image_size,
        cache_dir=d.cache_dir,
        unlabeled=d.unlabeled,
        progress=progress,
    )


def _check(cfg: Config) -> None:
    t, o, e = cfg.train, cfg.optim, cfg.eval
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
    if e.knn_k is None or e.knn_k < 1 or not e.knn_t > 0:
        raise ValueError(f"eval: expected knn_k >= 1 and knn_t > 0, got {e.knn_k}, {e.knn_t}")
    if cfg.loss.dmm_mix not in ("input", "embedding"):
        raise ValueError(f"loss.dmm_mix: expected input or embedding, got {cfg.loss.dmm_mix!r}")


class Trainer:
    """Trains ``cfg`` into ``out`` (or resumes it); :meth:`fit` returns the summary dict.

    Args:
        cfg: the configuration (dataset presets are applied here).
        out: run directory (default ``cfg.train.out``).
        data: an already loaded dataset (``otcl compare`` loads it once for all runs).
        resume: continue from ``out/checkpoint.pt``; without it an existing checkpoint in
            ``out`` is an error (nothing is overwritten silently).
        log: where progress lines go (``print`` by default).
    """

    def __init__(
        self,
        cfg: Config,
        out: str | Path | None = None,
        *,
        data: ImageData | None = None,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = resolve(cfg)
        _check(self.cfg)
        out = out if out is not None else self.cfg.train.out
        if out is None:
            out = f"runs/{self.cfg.loss.name}-{self.cfg.data.dataset}-s{self.cfg.train.seed}"
        self.out = Path(out)
        self.cfg.train.out = str(self.out)
        self.log = log or (lambda s: print(s, file=sys.stderr))
        ckpt = self.out / CHECKPOINT
        if ckpt.exists() and not resume:
            raise ValueError(
                f"out: {str(self.out)!r} already holds a checkpoint; pass --resume to continue "
                "it, or choose another --out"
            )
        if resume and not ckpt.exists():
            raise ValueError(f"resume: no {CHECKPOINT} in {str(self.out)!r} to resume from")
        t = self.cfg.train
        if t.threads:
            torch.set_num_threads(int(t.threads))
        self.device = pick_device(t.device)
        self.amp_dtype = _amp_dtype(t.amp, self.device)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.data = data if data is not None else load_data(self.cfg, progress=t.progress)
        seed_everything(t.seed)
        self.images = self.data.ssl_images().to(self.device)
        self.augment = make_augment(self.cfg, self.data).to(self.device)
        self.model = make_model(self.cfg, self.data).to(self.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(self.cfg.loss.name, **self.cfg.loss.params).to(self.device)
        self.forward_model: nn.Module = self.model
        if t.compile:
            self.forward_model = torch.compile(self.model)  # type: ignore[assignment]

        n = self.images.shape[0]
        self.batch_size = min(int(t.batch_size), n)  # type: ignore[arg-type]
        if self.batch_size < 2:
            raise ValueError(f"train.batch_size: the dataset holds only {n} image(s)")
        steps = n // self.batch_size
        if t.max_steps_per_epoch:
            steps = min(steps, int(t.max_steps_per_epoch))
        self.steps_per_epoch = steps
        self.total_steps = steps * int(t.epochs)  # type: ignore[arg-type]
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        scaler_cls = getattr(torch.amp, "GradScaler", None)
        if scaler_cls is None:  # torch < 2.3
            scaler_cls = torch.cuda.amp.GradScaler
            self.scaler = scaler_cls(enabled=self.amp_dtype == torch.float16)
        else:
            self.scaler = scaler_cls(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps of the current epoch completed
        self.global_step = 0
        self.epoch_loss = [0.0, 0]  # running sum, count of the current epoch
        self.epoch_seconds = 0.0  # time spent in the current epoch before a resume
        self._line_every = 0
        self._running = torch.zeros((), device=self.device)
        self._running_count = 0
        if resume:
            self._restore(load_checkpoint(ckpt, map_location=self.device))

    # -- construction ----------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        lr = float(o.lr) * self.batch_size / 128.0  # type: ignore[arg-type]
        decay, no_decay = [], []
        for p in self.model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": float(o.weight_decay or 0.0)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if o.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
        cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr)

    def _lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        warm = int(round(o.warmup_epochs * self.steps_per_epoch))
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))

    # -- checkpoints -----------------------------------------------------------------------
    def _fold_running_loss(self) -> None:
        """Add the on-device running loss of the last steps to the epoch's sum (host sync)."""
        if self._running_count:
            self.epoch_loss[0] += float(self._running)
            self.epoch_loss[1] += self._running_count
            self._running.zero_()
            self._running_count = 0

    def state(self) -> dict[str, Any]:
        self._fold_running_loss()
        return {
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
            "done": self.epoch >= int(self.cfg.train.epochs),  # type: ignore[arg-type]
        }

    def save(self) -> Path:
        path = self.out / CHECKPOINT
        atomic_torch_save(self.state(), path)
        return path

    def _restore(self, st: dict[str, Any]) -> None:
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
        set_rng_state(st["rng"])
        # the metrics log may hold epochs finished after this checkpoint: they will be redone
        log = self.out / "metrics.jsonl"
        kept = [r for r in read_jsonl(log) if r.get("epoch", 0) <= self.epoch]
        atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in kept))

    # -- training --------------------------------------------------------------------------
    def _batch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, "order", epoch))
        return torch.randperm(self.images.shape[0], generator=g)

    def _aug_generator(self, step: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(derive_seed(self.cfg.train.seed, "augment", step))
        return g

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimisation step on the images ``idx``; returns the (detached) loss."""
        t = self.cfg.train
        x = self.images[idx.to(self.device, non_blocking=True)]
        gen = self._aug_generator(self.global_step)
        views = torch.cat([self.augment(x, gen), self.augment(x, gen)])
        if t.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        b = x.shape[0]
        extra: dict[str, Any] = {}
        with self._autocast():
            z = self.forward_model(views)
            if self.cfg.loss.dmm_mix == "input":  # the loss's hook: {} for every loss but DMM
                extra = self.loss_fn.prepare_inputs(self.forward_model, views[:b], views[b:])
        z = z.float()
        loss = self.loss_fn(z[:b], z[b:], **extra)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def knn(self) -> float:
        """kNN accuracy (k, t from the config) of the current backbone on the test split."""
        ftr, fte = split_features(
            self.model,
            self.data,
            self.augment.plain,
            batch_size=self.cfg.eval.batch_size,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.cfg.train.channels_last,
        )
        e = self.cfg.eval
        return knn_accuracy(
            ftr, self.data.train_y, fte, self.data.test_y, self.data.num_classes, e.knn_k, e.knn_t
        )

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to ``summary.json``)."""
        t = self.cfg.train
        epochs = int(t.epochs)  # type: ignore[arg-type]
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / "config.yaml")
        bar = None
        self._line_every = 0
        if t.progress and not sys.stderr.isatty():
            # no terminal (CI, pipes, nohup): about ten plain lines per run instead of a bar
            self._line_every = max(1, epochs // 10)
        elif t.progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=self.total_steps,
                    initial=min(self.global_step, self.total_steps),
                    desc=f"train {self.cfg.loss.name} s{t.seed}",
                    unit="step",
                    leave=False,
                    dynamic_ncols=True,
                )
            except ImportError:
                bar = None
        self.model.train()
        try:
            while self.epoch < epochs:
                self._run_epoch(bar)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            path = self.save()
            raise TrainingInterrupted(path, self.epoch, self.step_in_epoch) from None
        finally:
            if bar is not None:
                bar.close()
        return self._finish()

    def _run_epoch(self, bar) -> None:
        t = self.cfg.train
        self.loss_fn.set_epoch(self.epoch)
        order = self._batch_order(self.epoch)
        start = time.perf_counter()
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            loss = self.train_step(idx)
            self._running += loss
            self._running_count += 1
            self.global_step += 1
            self.step_in_epoch = step + 1
            if (step + 1) % t.log_every == 0 or step + 1 == self.steps_per_epoch:
                self._fold_running_loss()  # the only host sync of the loop
                if not math.isfinite(self.epoch_loss[0]):
                    raise TrainingDiverged(
                        f"loss became {self.epoch_loss[0]} at epoch {self.epoch + 1}, step "
                        f"{step + 1}; lower optim.lr or raise the loss temperature"
                    )
                if bar is not None:
                    bar.set_postfix(
                        epoch=f"{self.epoch + 1}/{t.epochs}",
                        loss=f"{self.epoch_loss[0] / max(1, self.epoch_loss[1]):.4f}",
                        refresh=False,
                    )
            if bar is not None:
                bar.update(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = self.epoch_seconds + time.perf_counter() - start
        self.epoch += 1
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": seconds,
            "views_per_s": 2 * self.batch_size * self.steps_per_epoch / max(seconds, 1e-9),
        }
        e = self.cfg.eval
        if e.knn_every and self.epoch % e.knn_every == 0 and self.epoch < int(t.epochs):  # type: ignore[arg-type]
            record["knn"] = self.knn()
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]
        self.epoch_seconds = 0.0
        append_jsonl(self.out / "metrics.jsonl", record)
        if self._line_every and (
            self.epoch % self._line_every == 0 or self.epoch == int(t.epochs)  # type: ignore[arg-type]
        ):
            knn = f", kNN {record['knn']:.4f}" if "knn" in record else ""
            self.log(
                f"{self.cfg.loss.name} s{t.seed} epoch {self.epoch}/{t.epochs}: loss "
                f"{record['loss']:.4f}, {record['seconds']:.2f} s, "
                f"{record['views_per_s']:.0f} views/s{knn}"
            )
        if self.epoch % t.checkpoint_every == 0 or self.epoch >= int(t.epochs):  # type: ignore[arg-type]
            self.save()

    def _finish(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        knn = self.knn()
        records = read_jsonl(self.out / "metrics.jsonl")
        if records:
            records[-1]["knn"] = knn
            atomic_write_text(
                self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records)
            )
        secs = [r["seconds"] for r in records]
        steady = secs[1:] if len(secs) > 1 else secs  # the first epoch includes warm-up
        summary = {
            "loss_name": self.cfg.loss.name,
            "dataset": self.cfg.data.dataset,
            "seed": self.cfg.train.seed,
            "epochs": self.epoch,
            "final_loss": records[-1]["loss"] if records else None,
            "knn": knn,
            "seconds_per_epoch": statistics.median(steady) if steady else None,
            "views_per_s": statistics.median([r["views_per_s"] for r in records[1:]] or [0.0])
            if len(records) > 1
            else (records[0]["views_per_s"] if records else None),
            "train_seconds": sum(secs),
            "knn_seconds": time.perf_counter() - t0,
            "device": str(self.device),
            "torch": torch.__version__,
            "otcl": __version__,
        }
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary


# -- loading finished runs -----------------------------------------------------------------
def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint, with a clear error for a missing or foreign file."""
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


def load_run(
    run_dir: str | Path, device: str = "auto", data: ImageData | None = None
) -> tuple[Config, Encoder, ImageData, Augment, dict[str, Any]]:
    """Rebuild a run's config, trained encoder (eval mode), dataset and preprocessing."""
    st = load_checkpoint(run_dir, map_location="cpu")
    cfg = resolve(Config.from_dict(st["config"]))
    if data is None:
        data = load_data(cfg, progress=cfg.train.progress)
    model = make_model(cfg, data)
    model.load_state_dict(st["model"])
    dev = pick_device(device)
    model = model.to(dev).eval()
    aug = make_augment(cfg, data).to(dev)
    return cfg, model, data, aug, st
