"""Configuration of ``otcl recsys``: the shared sections plus data, model, dmm and eval.

Built on the shared config machinery (:mod:`otcl.pipelines.config`): YAML/TOML files,
``--set section.key=value``, the resolved config saved as ``config.yaml`` in every run. Settings
the user did not set take the preset of the model kind (:data:`PRESETS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import (
    ConfigBase,
    LossConfig,
    OptimConfig,
    Section,
    TrainConfig,
    apply_presets,
    given,
    preset_for,
)
from ..sources.movielens import MOVIELENS
from .data import SPLITS
from .metrics import USER_CONVENTIONS
from .models import ITEM_FEATURES, MODELS, USER_FEATURES

__all__ = [
    "RecsysConfig",
    "RecsysDataConfig",
    "RecsysModelConfig",
    "RecsysDMMConfig",
    "RecsysEvalConfig",
    "PRESETS",
    "resolve",
    "parse_features",
    "DROP_VARIANTS",
]

#: item features removed together in the feature-removal evaluation (name -> features)
DROP_VARIANTS: dict[str, tuple[str, ...]] = {
    "no-title": ("title",),
    "no-genres": ("genres",),
    "no-text-genres": ("title", "genres"),
}


@dataclass
class RecsysDataConfig(Section):
    """Ratings and the split.

    ``dataset``: ``ml-100k``, ``ml-1m`` (downloaded into ``cache_dir`` unless ``data_dir`` is a
    local GroupLens folder) or ``csv`` (``data_dir`` = ``user_id,item_id,rating[,timestamp]``).
    ``split``: ``dmm`` (random 75/25 over all ratings, DMM's protocol) or ``temporal``
    (leave-last-out). ``cold_items``: fraction of items held out of training for the cold-start
    evaluation (0 = none). ``val_frac``: the fraction of each user's positive training pairs held
    out for model selection under ``dmm`` (``temporal``: the second-to-last positive).
    """

    dataset: str = "ml-100k"
    data_dir: str | None = None
    download: bool = True
    cache_dir: str | None = None
    split: str = "dmm"
    split_seed: int = 1000
    test_frac: float = 0.25
    threshold: float = 4.0
    cold_items: float = 0.0
    val_frac: float = 0.1


@dataclass
class RecsysModelConfig(Section):
    """The model: ``kind`` ``cml`` | ``two-tower`` | ``mf``.

    ``features``: comma-separated side features (``age,gender,occupation`` for users,
    ``genres,year,title`` for items), ``all``, or empty for IDs only. ``text``: how ``title``
    is embedded: ``hash`` (hashed bag of words, ``title_buckets``) or ``minilm`` (the
    all-MiniLM-L6-v2 sentence encoder, optional extra). ``negatives``: K sampled negatives per
    pair for CML and MF, extra shared negatives per batch for the two-tower. ``pop_correction``:
    strength of the two-tower's popularity correction at ranking time (1 = the log-count of
    the in-batch sampler; 0 = off; see :func:`~otcl.pipelines.recsys.models.popularity_prior`).
    ``pop_marginal``: the popularity correction learned in training instead: the loss's coupling
    is told that its columns (the batch's items) were drawn with probability :math:`q_i`
    (the item's share of the positive pairs), to the power ``pop_marginal`` (1 = exactly that;
    0 = off): its column marginal becomes proportional to q_i ** -pop_marginal and, for
    InfoNCE, the loss is the logQ-corrected softmax (Yi et al., RecSys 2019). Only for losses with a column
    marginal (the OT family: infonce, gca-ince, gca-uot, iot, rince, ...).
    """

    kind: str = "cml"
    dim: int | None = None
    features: str | None = None
    text: str = "hash"
    title_buckets: int = 4096
    id_dropout: float | None = None
    negatives: int | None = None
    margin: float = 1.5
    pop_correction: float | None = None
    pop_marginal: float | None = None


@dataclass
class RecsysDMMConfig(Section):
    """Dynamic mixed margin around the model's loss (users mixed in embedding space).

    Defaults of DMM's recommender code: ``lam_range`` (0, 0.5), the reversed batch as partner,
    margin 1.5 for CML (None: the model's margin; 0.2 on the two-tower's cosines). ``warmup``
    None: 0.15 x epochs, the official ramp e/(e + 30) over its 200 epochs scaled to the run (so
    ``--extend`` rescales it). A run's ``config.yaml`` gives both as the values that ran; its
    checkpoint keeps the rules.
    """

    enabled: bool = False
    margin: float | None = None
    lam_range: tuple[float, float] = (0.0, 0.5)
    warmup: float | None = None
    weight: float = 1.0
    partner: str = "reverse"
    legacy_cumulative_margin: bool = False


@dataclass
class RecsysEvalConfig(Section):
    """Full ranking of all candidate items.

    ``users``: ``positive`` (average over users with a relevant test item) or ``all`` (DMM's
    convention: every test user, 0 for those without one). ``every``: rank the validation pairs
    every N epochs and after the last one (0 = after the last one only); the weights of the
    epoch with the best validation ``select`` metric (``ndcg@10``) are kept, and the test set is
    ranked once, with them, at the end. ``patience``: stop after that many validations in a row
    without improvement (none = train to ``train.epochs``). ``robustness``: at the end also
    evaluate with item features removed and on the cold items (when the model has features /
    there are cold items).
    """

    ks: tuple[int, ...] = (1, 5, 10, 20)
    users: str = "positive"
    every: int = 1
    patience: int | None = 3
    select: str = "ndcg@10"
    block: int = 1024
    robustness: bool = True


@dataclass
class RecsysConfig(ConfigBase):
    """Everything that defines one recommendation run (``loss.name`` empty: the model's default
    loss; ``optim``: Adam at a constant rate, as DMM's recommender code, fused: the embedding
    tables are the whole model and a CPU step is mostly the optimizer's passes over them)."""

    data: RecsysDataConfig = field(default_factory=RecsysDataConfig)
    model: RecsysModelConfig = field(default_factory=RecsysModelConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(name=""))
    dmm: RecsysDMMConfig = field(default_factory=RecsysDMMConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(optimizer="adam", schedule="constant", fused=True)
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: RecsysEvalConfig = field(default_factory=RecsysEvalConfig)


#: model kind -> settings used where the user set none: CML as DMM's recommender code
#: (dim 256, K = 10, batch 256, Adam) but at twice its rate (1e-3 per 128 samples = 2e-3 at
#: batch 256; the two-tower's batch 512 runs at 4e-3) and at most 20 epochs instead of 200 -- a
#: ceiling: every run keeps its validation-best epoch and stops after ``eval.patience`` (3)
#: validations without improvement, so that `otcl recsys compare` fits 10 minutes of a 2-core
#: CPU; the two-tower and MF settings were picked on ML-100K. One thread per run: the steps are
#: small and a second thread on a shared 2-core machine slowed them down 2-4x.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cml": {
        "model": {
            "dim": 256,
            "features": "",
            "id_dropout": 0.0,
            "negatives": 10,
            "pop_correction": 0.0,
            "pop_marginal": 0.0,
        },
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 20, "batch_size": 256, "threads": 1},
    },
    "two-tower": {
        "model": {
            "dim": 64,
            "features": "all",
            "id_dropout": 0.1,
            "negatives": 0,
            "pop_correction": 1.0,
            "pop_marginal": 0.0,
        },
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 20, "batch_size": 512, "threads": 1},
    },
    "mf": {
        "model": {
            "dim": 64,
            "features": "",
            "id_dropout": 0.0,
            "negatives": 1,
            "pop_correction": 0.0,
            "pop_marginal": 0.0,
        },
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 20, "batch_size": 256, "threads": 1},
    },
}

#: the loss each model kind trains with unless the user names one
DEFAULT_LOSS = {"cml": "triplet", "two-tower": "infonce", "mf": "bpr"}

#: two-tower loss parameters used unless set (cosine scores of sparse feedback want a sharper
#: softmax than SimCLR's 0.5)
TWO_TOWER_LOSS_PARAMS = {"temperature": 0.3}


def parse_features(text: str | None, has_users: bool, has_items: bool) -> tuple[str, ...]:
    """``"all"`` / ``""`` / ``"a,b"`` -> feature names (``all``: those the data has)."""
    if text is None or not text.strip() or text.strip() in ("none", "ids"):
        return ()
    if text.strip() == "all":
        return (USER_FEATURES if has_users else ()) + (ITEM_FEATURES if has_items else ())
    return tuple(f.strip() for f in text.split(",") if f.strip())


def resolve(cfg: RecsysConfig) -> RecsysConfig:
    """The settings the user did not set from the preset of ``model.kind`` (the kind's loss,
    and for the two-tower its loss parameters under the user's); returns a new config."""
    kind = cfg.model.kind
    preset = preset_for(PRESETS, "model.kind", kind, MODELS)
    loss: dict[str, Any] = {"name": DEFAULT_LOSS[kind]}
    if kind == "two-tower":
        loss["params"] = TWO_TOWER_LOSS_PARAMS
    return apply_presets(cfg, preset, {"loss": loss})


def check(cfg: RecsysConfig) -> None:
    """Raise ``ValueError`` naming the first invalid recsys setting."""
    d, m, e, dm = cfg.data, cfg.model, cfg.eval, cfg.dmm
    if d.dataset not in (*MOVIELENS, "csv"):
        raise ValueError(f"data.dataset: expected ml-100k, ml-1m or csv, got {d.dataset!r}")
    if d.split not in SPLITS:
        raise ValueError(f"data.split: expected one of {', '.join(SPLITS)}, got {d.split!r}")
    if not 0.0 < d.val_frac < 1.0:
        raise ValueError(f"data.val_frac: expected a fraction in (0, 1), got {d.val_frac!r}")
    if m.text not in ("hash", "minilm"):
        raise ValueError(f"model.text: expected hash or minilm, got {m.text!r}")
    if e.users not in USER_CONVENTIONS:
        raise ValueError(
            f"eval.users: expected one of {', '.join(USER_CONVENTIONS)}, got {e.users!r}"
        )
    if not e.ks or any(float(k) != int(k) or int(k) < 1 for k in e.ks):
        raise ValueError(f"eval.ks: expected integers >= 1, got {list(e.ks)!r}")
    if e.every < 0 or e.block < 1:
        raise ValueError(f"eval: expected every >= 0 and block >= 1, got {e.every}, {e.block}")
    if e.patience is not None and e.patience < 1:
        raise ValueError(f"eval.patience: expected an integer >= 1 or none, got {e.patience!r}")
    names = ("recall", "ndcg", "hr", "map")
    metric, _, k = e.select.partition("@")
    if metric not in names or not k.isdigit() or int(k) < 1:
        raise ValueError(
            f"eval.select: expected <{'|'.join(names)}>@k with k >= 1, got {e.select!r}"
        )
    if dm.enabled and m.kind == "mf":
        raise ValueError("dmm.enabled: not available for the mf baseline (BPR)")
    if m.kind != "two-tower" and "pop_correction" in given(m):  # given: refused, any value
        raise ValueError("model.pop_correction: applies only to the two-tower (in-batch negatives)")
    if m.pop_marginal and m.kind != "two-tower":
        raise ValueError("model.pop_marginal: applies only to the two-tower (in-batch negatives)")
    if m.pop_marginal is not None and m.pop_marginal < 0:
        raise ValueError(f"model.pop_marginal: expected a power >= 0, got {m.pop_marginal!r}")
    if m.kind == "mf" and "negatives" in given(m) and m.negatives != 1:
        raise ValueError(
            f"model.negatives: the mf baseline (BPR) draws one negative per pair; got {m.negatives}"
        )
    layout = (cfg.loss.params or {}).get("layout", "cross")
    if m.kind == "two-tower" and layout != "cross":
        raise ValueError(
            f"layout: the two-tower scores users against items (the cross layout); got {layout!r}"
        )
