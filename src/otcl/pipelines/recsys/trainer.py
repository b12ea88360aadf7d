"""``otcl recsys train``: one recommendation model, on the shared run machinery.

:class:`RecsysTrainer` subclasses :class:`otcl.pipelines.engine.trainer.EpochTrainer` (run directory,
``config.yaml``, atomic checkpoints, exact resume, ``metrics.jsonl``, progress, seeds, Ctrl-C)
and only says what a step is -- a batch of positive training pairs in a ``(seed, epoch)``
permutation, negatives drawn from a generator seeded by ``(seed, step)``, the model's
:class:`~otcl.pipelines.recsys.objective.Objective` -- and how a model is evaluated:

* ``warm``: every user ranks every warm item without a training rating (Recall, nDCG,
  HitRatio, MAP at ``eval.ks``);
* ``no-title``, ``no-genres``, ``no-text-genres``: the same with those item features removed
  (models with item features);
* ``cold``: users rank the held-out cold items, scored from their features alone;
* ``tail``: the warm ranking, with only the test pairs of long-tail items relevant (items
  outside the 20 % with the most training positives; :func:`~otcl.pipelines.recsys.data.tail_items`),
  averaged over the users with such a pair.

The model is selected on the validation pairs of the split (:meth:`Split.validation`): ranked
every ``eval.every`` epochs (``val/<metric>@<k>`` in ``metrics.jsonl``), the weights of the best
``eval.select`` (nDCG@10) are kept, training stops after ``eval.patience`` validations without
improvement, and the test set is ranked once, at the end, with the best weights
(:mod:`otcl.pipelines.engine.selection`). The test metrics land in ``summary.json`` as
``<variant>/<metric>@<k>`` (``warm/ndcg@10``), next to ``best_epoch``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..engine.checkpoint import open_run, restore_model
from ..engine.distributed import local_main_first
from ..engine.runtime import derive_seed
from ..engine.selection import SelectionRule
from ..engine.trainer import EpochTrainer
from ..sources.movielens import load_ratings
from ..sources.ratings import Ratings
from ..sources.text import encode_sentences
from .config import DROP_VARIANTS, RecsysConfig, check, parse_features, resolve
from .data import NegativeSampler, Split, split, tail_items
from .metrics import rank_metrics
from .models import RecModel, build_model, popularity_prior
from .objective import Objective, ObjectiveSpec, make_loss

__all__ = [
    "RecsysTrainer",
    "load_data",
    "evaluate_model",
    "load_run",
    "dmm_params",
    "objective_spec",
    "validate",
]


def load_data(cfg: RecsysConfig) -> tuple[Ratings, Split]:
    """The ratings and the split of ``cfg.data``."""
    d = cfg.data
    data = load_ratings(d.dataset, d.data_dir, download=d.download, cache_dir=d.cache_dir)
    s = split(
        data,
        d.split,
        seed=d.split_seed,
        test_frac=d.test_frac,
        threshold=d.threshold,
        cold_items=d.cold_items,
        val_frac=d.val_frac,
    )
    return data, s


def dmm_params(cfg: RecsysConfig) -> dict[str, Any]:
    """DMM's parameters for this run (see :class:`~otcl.pipelines.recsys.config.RecsysDMMConfig`)."""
    dm = cfg.dmm
    epochs = cast(int, cfg.train.epochs)  # set by resolve (the model kind's preset)
    warmup = dm.warmup if dm.warmup is not None else 0.15 * int(epochs)
    out: dict[str, Any] = {
        "lam_range": tuple(dm.lam_range),
        "warmup": warmup,
        "weight": dm.weight,
        "partner": dm.partner,
        "legacy_cumulative_margin": dm.legacy_cumulative_margin,
        "seed": derive_seed(cfg.train.seed, "dmm"),
    }
    if dm.margin is not None:
        out["margin"] = dm.margin
    return out


def objective_spec(cfg: RecsysConfig) -> ObjectiveSpec:
    """What a resolved ``cfg`` trains its model with."""
    c = cfg
    return ObjectiveSpec(
        loss=c.loss.name,
        loss_params=dict(c.loss.params),
        dmm=c.dmm.enabled,
        dmm_params=dmm_params(c) if c.dmm.enabled else {},
        negatives=int(cast(int, c.model.negatives)),  # set by resolve (the preset)
        margin=c.model.margin,
        pop_marginal=float(c.model.pop_marginal or 0.0),
    )


def check_ks(cfg: RecsysConfig, s: Split) -> None:
    """Every k of ``eval.ks`` must fit the warm candidate items (checked before training)."""
    n_warm = int(s.warm_items.sum())
    k = max(max(int(k) for k in cfg.eval.ks), int(cfg.eval.select.partition("@")[2]))
    if k > n_warm:
        raise ValueError(
            f"k: {k} is larger than the number of candidate items ({n_warm}); lower eval.ks"
        )


def validate(cfg: RecsysConfig) -> RecsysConfig:
    """Resolve and check ``cfg`` without loading data (settings, loss and its parameters)."""
    c = resolve(cfg)
    check(c)
    make_loss(c.model.kind, objective_spec(c))
    return c


def evaluate_model(
    model: RecModel,
    s: Split,
    cfg: RecsysConfig,
    *,
    device: torch.device | str = "cpu",
    robustness: bool = True,
    prior: torch.Tensor | None = None,
    tail: bool = False,
) -> dict[str, float]:
    """Ranking metrics of ``model`` on ``s`` (see the module docstring for the variants;
    ``tail``: also the long-tail ranking).

    ``prior`` (n_items,): added to the scores (the two-tower's popularity correction).
    """
    e = cfg.eval
    ks = tuple(int(k) for k in e.ks)
    common = {"ks": ks, "users": e.users, "block": e.block, "device": device}
    warm = s.warm_items
    out: dict[str, float] = {}

    def put(prefix: str, res: dict[str, float]) -> None:
        out.update({f"{prefix}/{k}": v for k, v in res.items()})

    exclude = (s.seen_user, s.seen_item)
    variants: list[tuple[str, tuple[str, ...]]] = [("warm", ())]
    if robustness:
        variants += [(n, f) for n, f in DROP_VARIANTS.items() if set(f) <= set(model.item.names)]
    for name, drop in variants:
        put(
            name,
            rank_metrics(
                model.scorer(drop, prior=prior),
                (s.test_user, s.test_item),
                exclude,
                s.n_users,
                s.n_items,
                eval_users=s.test_users,
                candidates=warm,
                **common,
            ),
        )
    if tail:
        is_tail = tail_items(s)[s.test_item]
        if is_tail.any():
            put(
                "tail",
                rank_metrics(
                    model.scorer(prior=prior),
                    (s.test_user[is_tail], s.test_item[is_tail]),
                    exclude,
                    s.n_users,
                    s.n_items,
                    candidates=warm,
                    **{**common, "users": "positive"},
                ),
            )
    if robustness and len(s.cold_items) and model.item.names and len(s.cold_user):
        put(
            "cold",
            rank_metrics(
                model.scorer(item_drop_mask=torch.from_numpy(~warm), prior=prior),
                (s.cold_user, s.cold_item),
                exclude,
                s.n_users,
                s.n_items,
                eval_users=s.cold_users,
                candidates=~warm,
                **{**common, "ks": tuple(k for k in ks if k <= len(s.cold_items)) or (1,)},
            ),
        )
    return out


class RecsysTrainer(EpochTrainer):
    """Trains one recommendation model (``cfg.model.kind``) into a run directory.

    Args:
        cfg: :class:`~otcl.pipelines.recsys.config.RecsysConfig` (presets applied here).
        out: run directory (default ``runs/recsys/<method>-<dataset>-s<seed>``).
        resume: continue ``out`` from its checkpoint (``extend``: to more epochs).
        data: already loaded ``(ratings, split)`` (``otcl recsys compare`` loads them once).
        log: where progress lines go.
    """

    pipeline: str | None = "recsys"

    throughput_unit: str = "pairs"
    cfg: RecsysConfig
    model: nn.Module
    loss_fn: nn.Module
    batch_size: int
    steps_per_epoch: int
    data: Ratings
    split: Split
    #: the validation split of ``split``
    val_split: Split
    #: the two-tower's popularity correction added to every user's scores (None: none)
    prior: torch.Tensor | None
    #: the positive training pairs (users, items) on the device
    pairs_user: torch.Tensor
    pairs_item: torch.Tensor

    # -- hooks -----------------------------------------------------------------------------
    def resolve_config(self, cfg: RecsysConfig) -> RecsysConfig:
        return resolve(cfg)

    def check_config(self) -> None:
        super().check_config()
        check(self.cfg)

    def default_out(self) -> str:
        from .compare import method_name

        c = self.cfg
        return f"runs/recsys/{method_name(c)}-{c.data.dataset}-s{c.train.seed}"

    @property
    def tag(self) -> str:
        c = self.cfg
        return f"{c.model.kind}/{c.loss.name}{'+dmm' if c.dmm.enabled else ''} s{c.train.seed}"

    def build(self) -> None:
        c = self.cfg
        given = self.given_data
        self.data, self.split = (
            given if given is not None else local_main_first(lambda: load_data(c))
        )
        check_ks(c, self.split)
        self.val_split = self.split.validation()
        self.model = build_recsys_model(c, self.data).to(self.device)
        sampler = NegativeSampler(
            self.split.train_user, self.split.train_item, self.data.n_items, self.split.warm_items
        )
        spec = objective_spec(c)
        if self.session is not None:  # the global batch (torchrun)
            spec = replace(spec, gather_distributed=True)
            if c.model.kind == "two-tower" and spec.negatives % self.world:
                raise ValueError(
                    f"model.negatives: the {spec.negatives} extra negatives of a step are split "
                    f"over the {self.world} processes of torchrun; use a multiple of {self.world}"
                )
        counts = torch.bincount(
            torch.from_numpy(self.split.train_item), minlength=self.data.n_items
        )
        self.loss_fn = Objective(self.model, spec, sampler, counts).to(self.device)
        self.prior = ranking_prior(c, self.split, self.loss_fn.temperature)
        self.pairs_user = torch.from_numpy(self.split.train_user).to(self.device)
        self.pairs_item = torch.from_numpy(self.split.train_item).to(self.device)
        n = len(self.pairs_user)
        self.fit_batch(n, "positive training pairs")

    def config_to_save(self) -> RecsysConfig:
        """``config.yaml`` gives DMM's margin and ramp offset as the values the loss runs with
        (``dmm.margin`` / ``dmm.warmup`` None are rules: the model's margin, 0.15 x epochs)."""
        from ...losses import DMM

        cfg = self.cfg
        dmm = next((m for m in self.loss_fn.modules() if isinstance(m, DMM)), None)
        if cfg.dmm.enabled and dmm is not None:
            cfg = copy.deepcopy(cfg)
            cfg.dmm.margin, cfg.dmm.warmup = float(dmm.margin), float(dmm.warmup)
        return cfg

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        # the global batch on every rank (its negatives drawn as in one process); the
        # objective keeps this rank's rows of it
        idx = self.global_batch_indices(len(self.pairs_user), epoch, step).to(self.device)
        gen = self.step_generator("negatives", device="cpu")
        part = None if self.world == 1 else (self.rank, self.world)
        users, items = self.pairs_user[idx], self.pairs_item[idx]
        return self.loss_fn(self.forward_model, users, items, gen, part)

    def selection_rule(self) -> SelectionRule:
        e = self.cfg.eval
        epochs = cast(int, self.cfg.train.epochs)  # set by resolve (the model kind's preset)
        every = int(e.every) if e.every else int(epochs)
        return SelectionRule(metric=e.select, every=every, patience=e.patience)

    def validate(self) -> dict[str, float]:
        """Ranking metrics of the validation pairs (warm items, no robustness variants; at
        ``eval.ks`` and the k of ``eval.select``)."""
        e = self.cfg.eval
        ks = tuple(sorted({*(int(k) for k in e.ks), int(e.select.partition("@")[2])}))
        res = evaluate_model(
            cast(RecModel, self.model),  # build() made it (build_recsys_model)
            self.val_split,
            replace(self.cfg, eval=replace(e, ks=ks)),
            device=self.device,
            robustness=False,
            prior=self.prior,
        )
        self.model.train()
        return {k[len("warm/") :]: v for k, v in res.items()}

    def evaluate(self, final: bool) -> dict[str, float]:
        """The test set, ranked once after training (``final``; {} before)."""
        e = self.cfg.eval
        if not final:
            return {}
        res = evaluate_model(
            cast(RecModel, self.model),  # build() made it (build_recsys_model)
            self.split,
            self.cfg,
            device=self.device,
            robustness=final and e.robustness,
            prior=self.prior,
            tail=True,
        )
        self.model.train()
        return res

    def summarize(self, summary: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        return {
            "model": c.model.kind,
            "loss": c.loss.name,
            "dmm": c.dmm.enabled,
            "dataset": self.data.name,
            "split": repr(self.split),
            **summary,
        }


def ranking_prior(cfg: RecsysConfig, s: Split, temperature: float | None) -> torch.Tensor | None:
    """The two-tower's popularity correction of ``cfg`` (None when off or not a two-tower)."""
    strength = float(cfg.model.pop_correction or 0.0)
    if cfg.model.kind != "two-tower" or strength == 0.0 or temperature is None:
        return None
    return popularity_prior(s.train_item, s.n_items, strength, temperature)


def build_recsys_model(cfg: RecsysConfig, data: Ratings) -> RecModel:
    """The model of ``cfg.model`` for ``data`` (sentence-encoder titles if ``text=minilm``)."""
    m = cfg.model
    # set by resolve (the model kind's preset)
    dim, id_dropout = cast(int, m.dim), cast(float, m.id_dropout)
    feats = parse_features(
        m.features, data.user_features is not None, data.item_features is not None
    )
    text = None
    if "title" in feats and m.text == "minilm":
        if data.item_features is None:
            raise ValueError(f"model.features: {data.name} has no item titles")
        text = encode_sentences(data.item_features.titles, setting="model.text")
    return build_model(
        m.kind,
        data,
        dim=int(dim),
        features=feats,
        title_buckets=m.title_buckets,
        text_embeddings=text,
        id_dropout=float(id_dropout) if feats else 0.0,
    )


def load_run(
    run_dir: str | Path, device: str = "cpu"
) -> tuple[RecsysConfig, RecModel, Ratings, Split, torch.Tensor | None]:
    """Rebuild a run's config, model (eval mode; the validation-selected weights), ratings,
    split and ranking prior."""
    cfg: RecsysConfig
    cfg, st = open_run(run_dir, RecsysConfig, resolve)
    best = (st.get("selection") or {}).get("weights")
    if best is not None:  # the validation-selected weights, those the test numbers are of
        st = {**st, "model": best}
    data, s = load_data(cfg)
    # restore_model returns the model it was given
    model = cast(RecModel, restore_model(build_recsys_model(cfg, data), st, run_dir, device))
    loss = make_loss(cfg.model.kind, objective_spec(cfg))
    temperature = getattr(getattr(loss, "base", loss), "temperature", None)
    return cfg, model, data, s, ranking_prior(cfg, s, temperature)
