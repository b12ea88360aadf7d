"""Training of a multimodal model with any otcl loss (+- DMM): the engine of ``otcl multimodal``.

:class:`MultimodalTrainer` is an :class:`otcl.pipelines.engine.trainer.EpochTrainer` (run directory,
``config.yaml``, atomic checkpoints, exact resume, ``metrics.jsonl``, progress, seeds, Ctrl-C --
see there) whose step is

    a batch of aligned samples, every modality -> per-modality encoders -> shared space
    -> the objective's alignment terms (+ DMM's mixed-anchor term) -> optimizer step.

The batch order of epoch ``e`` depends only on ``(seed, e)``; DMM's lambda and partners come from
torch's global generator, whose state is in the checkpoint. After the last epoch the run is
evaluated (:func:`evaluate_run`): the probe on the joint representation for every subset of
present modalities, the cross-modal retrieval of every pair, and noise; the full report goes to
``robustness.json`` in the run directory, the headline numbers into ``summary.json``.
"""

from __future__ import annotations

import json
import statistics
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..engine.checkpoint import open_run, restore_model
from ..engine.distributed import local_main_first
from ..engine.trainer import EpochTrainer
from ..files import atomic_write_text
from ..loss_methods import loss_method_name
from ..sources.probes import fit_linear_probe, knn_predict
from .config import MultimodalConfig, check, check_applies, modality_names, resolve
from .data import MultimodalData, load_multimodal
from .models import MultimodalModel, build_model
from .objectives import MultimodalObjective
from .robustness import ProbeFactory, evaluate_robustness, predictor_probe, ridge_probe

__all__ = [
    "MultimodalTrainer",
    "load_data",
    "make_model",
    "make_probe",
    "evaluate_run",
    "load_run",
    "headline",
    "variant_name",
    "ROBUSTNESS",
]

ROBUSTNESS = "robustness.json"


def load_data(cfg: MultimodalConfig) -> MultimodalData:
    """The dataset named by ``cfg.data`` (options of other datasets are not passed)."""
    d = cfg.data
    opts: dict[str, Any]
    if d.dataset == "movielens":
        opts = dict(
            text=d.text,
            text_dim=d.text_dim,
            text_model=d.text_model,
            test_fraction=d.test_fraction,
            seed=d.split_seed,
        )
    elif d.dataset in ("mosi", "mosei"):
        opts = {}
    elif d.dataset == "npz":
        opts = dict(
            modalities=modality_names(d.modalities),
            labels=d.labels,
            test_fraction=d.test_fraction,
            seed=d.split_seed,
        )
    else:
        opts = dict(patches=d.patches, download=d.download, max_train=d.max_train)
    return load_multimodal(d.dataset, d.data_dir, **opts)


#: ``"gca-uot"``, or ``"gca-uot+dmm"`` for DMM wrapping gca-uot: the method of a run's config
variant_name = loss_method_name


def make_model(cfg: MultimodalConfig, data: MultimodalData) -> MultimodalModel:
    """The run's model for ``data``'s modalities."""
    m = cfg.model
    kinds = set(data.kinds.values())
    applies = {"seq_arch": "sequence" in kinds, "image_arch": "image" in kinds,
               "width": "image" in kinds and m.image_arch == "cnn"}  # fmt: skip
    check_applies("model", m, applies, f"to the modalities of {data.name!r}")
    return build_model(
        {k: data.shape(k) for k in data.modalities},
        data.kinds,
        hidden=m.hidden,  # type: ignore[arg-type]
        latent=m.latent,  # type: ignore[arg-type]
        fusion=m.fusion,
        seq_arch=m.seq_arch,
        image_arch=m.image_arch,  # type: ignore[arg-type]
        width=m.width,
    )


def make_probe(cfg: MultimodalConfig, data: MultimodalData, seed: int = 0) -> ProbeFactory | None:
    """The probe of ``cfg.eval`` (default: kNN for classes, ridge for real targets)."""
    if data.task is None:
        return None
    e = cfg.eval
    kind = e.probe or ("knn" if data.task == "classification" else "ridge")
    if (kind == "ridge") != (data.task == "regression"):
        want = "ridge" if data.task == "regression" else "knn or linear"
        raise ValueError(f"eval.probe: {kind!r} does not fit {data.task} labels; use {want}")
    fields = {"knn_k": "knn", "knn_t": "knn", "linear_epochs": "linear", "linear_lr": "linear",
              "ridge_alpha": "ridge"}  # fmt: skip
    check_applies("eval", e, {k: p == kind for k, p in fields.items()},
                  f"to the {kind} probe")  # fmt: skip
    if kind == "ridge":
        return predictor_probe(partial(ridge_probe, alpha=e.ridge_alpha), "regression")
    c = data.num_classes
    if kind == "knn":
        return predictor_probe(
            lambda f, y: partial(
                knn_predict, train_features=f, train_labels=y, num_classes=c, k=e.knn_k, t=e.knn_t
            ),
            "classification",
        )

    def linear(ftr: torch.Tensor, ytr: torch.Tensor, yte: torch.Tensor):
        clf = fit_linear_probe(ftr, ytr, c, epochs=e.linear_epochs, lr=e.linear_lr, seed=seed)
        return lambda fte: {"accuracy": clf.accuracy(fte, yte)}  # one probe for every subset

    return linear


def headline(report: dict[str, Any]) -> dict[str, float]:
    """Scalars of a robustness report: the full-modality probe metrics (``full_<metric>``),
    their mean over the subsets with a modality missing (``missing_<metric>``), and the mean
    pairwise retrieval (``R@1``, ``R@10``, ``medR`` averaged over every ordered pair)."""
    out: dict[str, float] = {}
    rows = report["subsets"]
    full, partial_rows = rows[-1], rows[:-1]
    for k, v in full["metrics"].items():
        out[f"full_{k}"] = v
        vals = [r["metrics"][k] for r in partial_rows]
        out[f"missing_{k}"] = statistics.fmean(vals) if vals else float("nan")
    pairs = list(report["retrieval"].values())
    for k in ("R@1", "R@10", "medR"):
        out[k] = statistics.fmean(p[k] for p in pairs)
    return out


class MultimodalTrainer(EpochTrainer):
    """Trains a :class:`MultimodalModel` on aligned modalities; :meth:`fit` -> summary.

    Args:
        cfg: the configuration (dataset presets and loss defaults are applied here).
        out: run directory (default ``cfg.train.out``, else
            ``runs/multimodal/<method>-<dataset>-s<seed>``).
        data: an already loaded dataset (``compare`` loads it once for all runs).
        resume: continue from ``out/checkpoint.pt``.
        log: where progress lines go (standard error by default).
    """

    pipeline: str | None = "multimodal"

    cfg: MultimodalConfig
    model: MultimodalModel
    supports_memory_bank: bool = True  # loss.memory_bank: the joint representations are queued
    loss_fn: nn.Module
    batch_size: int
    steps_per_epoch: int
    data: MultimodalData
    #: the training inputs on the device, by modality
    train_x: dict[str, torch.Tensor]
    objective: MultimodalObjective

    # -- hooks -----------------------------------------------------------------------------
    def resolve_config(self, cfg: MultimodalConfig) -> MultimodalConfig:
        return resolve(cfg)

    def check_config(self) -> None:
        super().check_config()
        check(self.cfg)

    def default_out(self) -> str:
        c = self.cfg
        return f"runs/multimodal/{variant_name(c)}-{c.data.dataset}-s{c.train.seed}"

    @property
    def tag(self) -> str:
        return f"{variant_name(self.cfg)} s{self.cfg.train.seed}"

    def build(self) -> None:
        self.data = self.given_data
        if self.data is None:  # under torchrun: each node's first process downloads first
            self.data = local_main_first(lambda: load_data(self.cfg))
        make_probe(self.cfg, self.data)  # a probe setting that does not fit fails before training
        self.train_x = {m: v.to(self.device) for m, v in self.data.train.items()}
        self.model = make_model(self.cfg, self.data).to(self.device)  # pyright: ignore[reportIncompatibleVariableOverride]
        self.loss_fn = self.build_loss()
        self.objective = MultimodalObjective(
            self.loss_fn, self.cfg.objective.kind, self.cfg.loss.dmm_mix, autocast=self.autocast
        )
        n = self.data.num_train
        self.fit_batch(n, "training samples")

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        idx = self.batch_indices(self.data.num_train, epoch, step).to(self.device)
        x = {m: v[idx] for m, v in self.train_x.items()}
        return self.objective(
            self.forward_model,  # type: ignore[arg-type]
            x,
            negatives=self.bank_negatives(),
            enqueue=self.enqueue if self.memory_bank is not None else None,
        )

    def embedding_dim(self) -> int:
        """The width of the shared space (``model.latent``)."""
        return int(self.model.latent_dim)

    def evaluate(self, final: bool) -> dict[str, float]:
        every = self.cfg.eval.every
        if final:
            report = evaluate_run_model(self.cfg, self.model, self.data)
            atomic_write_text(self.out / ROBUSTNESS, json.dumps(report, indent=2))
            return headline(report)
        if every and self.epoch % every == 0 and self.data.task is not None:
            report = evaluate_run_model(self.cfg, self.model, self.data, subsets=False)
            return {f"full_{k}": v for k, v in report["subsets"][-1]["metrics"].items()}
        return {}

    def summarize(self, summary: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        head = {"loss_name": c.loss.name, "dataset": c.data.dataset, "objective": c.objective.kind}
        return {**head, **summary}


def evaluate_run_model(
    cfg: MultimodalConfig, model: MultimodalModel, data: MultimodalData, *, subsets: bool = True
) -> dict[str, Any]:
    """The robustness report of ``model`` under ``cfg.eval`` (see :mod:`.robustness`)."""
    e = cfg.eval
    return evaluate_robustness(
        model,
        data,
        make_probe(cfg, data, cfg.train.seed),
        missing=e.missing,
        snr_db=e.snr_db if subsets else (),
        noise_seed=cfg.train.seed,
        batch_size=e.batch_size,
        full_only=not subsets,
    )


def load_run(
    run_dir: str | Path, device: str = "auto", data: MultimodalData | None = None
) -> tuple[MultimodalConfig, MultimodalModel, MultimodalData, dict[str, Any]]:
    """Rebuild a run's config, trained model (eval mode) and dataset."""
    cfg, st = open_run(run_dir, MultimodalConfig, resolve)
    if data is None:
        data = load_data(cfg)
    model = cast(MultimodalModel, restore_model(make_model(cfg, data), st, run_dir, device))
    return cfg, model, data, st


def evaluate_run(
    run_dir: str | Path,
    *,
    device: str = "auto",
    data: MultimodalData | None = None,
    overrides: dict[str, Any] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint again (e.g. with ``missing="zero"`` or other SNRs).

    Args:
        overrides: ``eval`` settings replacing the run's (``{"missing": "zero"}``).
        write: save the report as ``<run_dir>/robustness.json`` (``robustness-<missing>.json``
            when ``missing`` differs from the run's).
    """
    cfg, model, data, _ = load_run(run_dir, device, data)
    name = ROBUSTNESS
    for k, v in (overrides or {}).items():
        if not hasattr(cfg.eval, k):
            raise ValueError(f"eval: unknown setting {k!r}")
        if k == "missing" and v != cfg.eval.missing:
            name = f"robustness-{v}.json"
        setattr(cfg.eval, k, v)
    check(cfg)
    report = evaluate_run_model(cfg, model, data)
    if write:
        atomic_write_text(Path(run_dir) / name, json.dumps(report, indent=2))
    return report
