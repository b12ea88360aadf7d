r"""Self-supervised training on images with domains, with a domain-block target plan.

:class:`DomainTrainer` is an :class:`otcl.pipelines.engine.trainer.EpochTrainer` (run directory,
checkpoints, exact resume, metrics log) whose step is

    two augmented views of a batch -> encoder -> loss(z1, z2, target=P_tgt) -> SGD step,

with :math:`P_{tgt}` = ``otcl.losses.domain_target(d, alpha, beta, scale=...)`` of the batch's
domains ``d`` (GCA's blocks: ``alpha`` for same-domain pairs, ``beta`` across domains; with
``alpha = beta = 0`` the plain identity target, no ``target=`` passed). The domains are read
only through the target: the encoder never sees them.

The batch order of epoch ``e`` and the augmentations of step ``s`` are drawn from generators
seeded by ``(seed, e)`` and ``(seed, s)``, so a resumed run equals an uninterrupted one. The
pipeline runs in one process (``torchrun`` is refused: the target spans the whole batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..engine.rundir import METRICS, SUMMARY
from ..imaging.trainer import (
    TwoViewTrainer,
    build_augment,
    build_model,
    check_augment,
    check_model,
    load_image_run,
)
from ..sources.backbones import Encoder
from ..sources.images import Augment, DomainData, load_dataset, load_image_folder
from ..sources.images.domains import load_domain_folder
from ..sources.images.styles import style_domains
from .config import Config, check, resolve

__all__ = ["DomainTrainer", "load_data", "make_augment", "make_model", "load_run", "EVAL_FILE"]

#: the evaluation a finished run holds (:func:`otcl.pipelines.domains.evaluate.evaluate_run`)
EVAL_FILE = "eval.json"


def load_data(cfg: Config) -> DomainData:
    """The images with domains named by ``cfg.data`` (see :mod:`.config`; presets applied)."""
    d = resolve(cfg).data
    if d.dataset == "folder":
        return load_domain_folder(
            d.data_dir,  # type: ignore[arg-type]
            image_size=d.image_size,
            test_fraction=d.test_fraction,
            seed=d.split_seed,
            skip_corrupt=d.skip_corrupt,
        )
    if d.data_dir is None:
        src, name = load_dataset("digits"), "styles-digits"
    else:
        src = load_image_folder(d.data_dir, skip_corrupt=d.skip_corrupt, cache_dir=d.cache_dir)
        name = f"styles-{Path(d.data_dir).name.split('.')[0]}"
    return style_domains(
        torch.cat([src.train_x, src.test_x]),
        torch.cat([src.train_y, src.test_y]),
        src.classes,
        name=name,
        size=d.image_size,
        per_domain=d.per_domain,
        test_fraction=d.test_fraction,
        seed=d.split_seed,
    )


def make_augment(cfg: Config, data: Any) -> Augment:
    """The run's augmentation (``.plain``: its evaluation preprocessing)."""
    return build_augment(cfg.data, data.image_shape[-1], data)


def make_model(cfg: Config, data: Any) -> Encoder:
    """The run's encoder (backbone + projection head)."""
    return build_model(cfg.model, data.image_shape[0])


def check_config(cfg: Config) -> None:
    """:func:`.config.check`, then the model and augmentation settings (``ValueError`` naming
    the first that cannot run)."""
    check(cfg)
    check_model(cfg.model)
    check_augment(cfg, make_augment)


class DomainTrainer(TwoViewTrainer):
    """Trains an encoder on two views per image with the domain-block target; ``fit()`` ->
    summary (see the module docstring). Arguments as :class:`EpochTrainer`'s."""

    pipeline: str | None = "domains"

    outputs: tuple[str, ...] = (METRICS, SUMMARY, EVAL_FILE)
    cfg: Config
    data: DomainData
    #: the (N,) domains of the training images, on the device
    domains: torch.Tensor

    def resolve_config(self, cfg: Config) -> Config:
        return resolve(cfg)

    def check_config(self) -> None:
        super().check_config()
        check_config(self.cfg)

    def default_out(self) -> str:
        c = self.cfg
        return f"runs/domains/{c.loss.name}-a{c.target.alpha:g}-b{c.target.beta:g}-s{c.train.seed}"

    def build(self) -> None:
        if self.world > 1:
            raise ValueError(
                "torchrun: the domain pipeline trains in one process (its target plan spans "
                "the whole batch); run it without torchrun"
            )
        self.data = self.given_data if self.given_data is not None else load_data(self.cfg)
        self.images: torch.Tensor = self.data.ssl_images().to(self.device)
        self.domains = self.data.train_d.to(self.device)
        self.augment: Augment = make_augment(self.cfg, self.data).to(self.device)
        self.model: torch.nn.Module = make_model(self.cfg, self.data).to(self.device)
        self.loss_fn: torch.nn.Module = self.build_loss()
        self.set_steps_per_epoch(self.data.name)

    def target(self, domains: torch.Tensor) -> torch.Tensor | None:
        """The batch's target plan (None: the identity, ``alpha = beta = 0``)."""
        from ...losses import domain_target

        t = self.cfg.target
        if not (t.alpha or t.beta):
            return None
        return domain_target(
            domains,
            t.alpha,
            t.beta,
            getattr(self.loss_fn, "layout", "simclr"),
            num_domains=self.data.num_domains,
            scale=t.scale,
        )

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        idx = self.batch_indices(self.images.shape[0], epoch, step).to(self.device)
        x = self.images[idx]
        views = self.two_views(x)
        with self.autocast():
            z = self.forward_model(views)
        z = z.float()
        b = x.shape[0]
        target = self.target(self.domains[idx])
        if target is None:
            return self.loss_fn(z[:b], z[b:])
        return self.loss_fn(z[:b], z[b:], target=target)

    def summarize(self, summary: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        head = {
            "loss_name": c.loss.name,
            "dataset": self.data.name,
            "alpha": c.target.alpha,
            "beta": c.target.beta,
        }
        return {**head, **summary}


def load_run(
    run_dir: str | Path, device: str = "auto", data: DomainData | None = None
) -> tuple[Config, Encoder, DomainData, Augment, dict[str, Any]]:
    """Rebuild a run's config, trained encoder (eval mode), data and preprocessing."""
    return load_image_run(
        run_dir,
        Config,
        resolve,
        device=device,
        data=data,
        load_data=load_data,
        make_model=make_model,
        make_augment=make_augment,
    )
