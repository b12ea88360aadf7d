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
DROP_VARIANTS = {
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
    evaluation (0 = none).
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
    convention: every test user, 0 for those without one). ``every``: evaluate every N epochs
    (0 = at the end only). ``robustness``: at the end also evaluate with item features removed
    and on the cold items (when the model has features / there are cold items).
    """

    ks: tuple[int, ...] = (1, 5, 10, 20)
    users: str = "positive"
    every: int = 0
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
#: batch 256; the two-tower's batch 512 runs at 4e-3) and 6 epochs instead of 200, so that `otcl recsys compare` fits 10 minutes of a 2-core CPU; the
#: two-tower and MF settings were picked on ML-100K. One thread per run: the steps are small
#: and a second thread on a shared 2-core machine slowed them down 2-4x.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cml": {
        "model": {
            "dim": 256,
            "features": "",
            "id_dropout": 0.0,
            "negatives": 10,
            "pop_correction": 0.0,
        },
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 6, "batch_size": 256, "threads": 1},
    },
    "two-tower": {
        "model": {
            "dim": 64,
            "features": "all",
            "id_dropout": 0.1,
            "negatives": 0,
            "pop_correction": 1.0,
        },
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 6, "batch_size": 512, "threads": 1},
    },
    "mf": {
        "model": {
            "dim": 64,
            "features": "",
            "id_dropout": 0.0,
            "negatives": 1,
            "pop_correction": 0.0,
        },
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"epochs": 6, "batch_size": 256, "threads": 1},
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
    if dm.enabled and m.kind == "mf":
        raise ValueError("dmm.enabled: not available for the mf baseline (BPR)")
    if m.kind != "two-tower" and "pop_correction" in given(m):  # given: refused, any value
        raise ValueError("model.pop_correction: applies only to the two-tower (in-batch negatives)")
