"""RecsysTrainer on the shared run machinery: a run's files, exact resume, early bad input."""

from __future__ import annotations

import json

import pytest
import torch

from otcl.pipelines.recsys.config import RecsysConfig
from otcl.pipelines.recsys.trainer import RecsysTrainer, load_run


@pytest.fixture
def tiny(ml_dir):
    def make(kind="cml", **sets) -> RecsysConfig:
        cfg = RecsysConfig()
        cfg.data.data_dir = str(ml_dir)
        cfg.data.cold_items = 0.2
        cfg.model.kind = kind
        cfg.model.dim = 8
        cfg.train.epochs = 2
        cfg.train.batch_size = 32
        cfg.train.progress = False
        cfg.train.deterministic = True
        cfg.train.checkpoint_every = 1
        cfg.eval.ks = (1, 5)
        for key, value in sets.items():
            section, name = key.split("__")
            setattr(getattr(cfg, section), name, value)
        return cfg

    return make


def test_run_directory_and_metrics(tiny, tmp_path):
    cfg = tiny("two-tower", dmm__enabled=True, eval__every=1)
    summary = RecsysTrainer(cfg, tmp_path / "run").fit()
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json"} <= files
    for key in ("warm/ndcg@5", "warm/recall@5", "no-title/ndcg@5", "cold/ndcg@1"):
        assert 0.0 <= summary[key] <= 1.0, key
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(records) == 2 and "val/ndcg@10" in records[0] and "val/ndcg@5" in records[1]
    assert "warm/ndcg@5" not in records[0] and "warm/ndcg@5" in records[1]
    assert summary["best_epoch"] in (1, 2) and summary["select_metric"] == "val/ndcg@10"
    assert summary["model"] == "two-tower" and summary["dmm"] is True
    cfg2, model, _, _, prior = load_run(tmp_path / "run")
    assert prior is not None and cfg2.loss.params["temperature"] == 0.3
    assert model.item.names == ("genres", "year", "title")


@pytest.mark.parametrize(
    "kind, sets",
    [
        ("cml", {"dmm__enabled": True, "dmm__warmup": 0.5}),
        ("two-tower", {"dmm__enabled": True, "model__negatives": 4}),
        ("mf", {}),
    ],
)
def test_resume_is_exact(tiny, tmp_path, kind, sets):
    full = RecsysTrainer(tiny(kind, **sets), tmp_path / "full")
    full.fit()
    half = RecsysTrainer(tiny(kind, train__epochs=1, **sets), tmp_path / "half")
    half.fit()
    resumed = RecsysTrainer(tiny(kind, **sets), tmp_path / "half", resume=True, extend=True)
    resumed.fit()
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "half"))
    for key in ("best_epoch", "best_val", "warm/ndcg@5", "warm/recall@1"):
        assert a[key] == b[key], key


def test_test_set_is_ranked_once_with_the_best_weights(tiny, tmp_path, monkeypatch):
    import otcl.pipelines.recsys.trainer as rt

    calls = []
    orig = rt.evaluate_model

    def spy(model, s, cfg, **kw):
        calls.append(
            (
                "test" if len(s.val_user) else "val",
                {k: v.clone() for k, v in model.state_dict().items()},
            )
        )
        return orig(model, s, cfg, **kw)

    monkeypatch.setattr(rt, "evaluate_model", spy)
    cfg = tiny("two-tower", train__epochs=5, eval__patience=None, optim__lr=0.02)
    tr = RecsysTrainer(cfg, tmp_path / "run")
    summary = tr.fit()
    kinds = [k for k, _ in calls]
    assert kinds == ["val"] * 5 + ["test"]
    best = summary["best_epoch"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    vals = [r["val/ndcg@10"] for r in records]
    assert best == 1 + vals.index(max(vals))
    for k, v in calls[-1][1].items():  # the test ranking saw the best epoch's weights
        assert torch.equal(v, calls[best - 1][1][k]), k
    _, model, _, _, _ = load_run(tmp_path / "run")
    for k, v in model.state_dict().items():
        assert torch.equal(v, calls[best - 1][1][k]), k


def test_two_tower_with_the_popularity_marginal(tiny, tmp_path):
    cfg = tiny("two-tower", model__pop_marginal=1.0, model__pop_correction=0.0)
    summary = RecsysTrainer(cfg, tmp_path / "run").fit()
    for key in ("warm/ndcg@5", "tail/recall@5", "cold/ndcg@1"):
        assert 0.0 <= summary[key] <= 1.0, key
    _, _, _, _, prior = load_run(tmp_path / "run")
    assert prior is None  # no ranking-time term


def test_patience_stops_early(tiny, tmp_path):
    cfg = tiny("cml", train__epochs=30, eval__patience=1, optim__lr=0.05)
    summary = RecsysTrainer(cfg, tmp_path / "run").fit()
    assert summary["stopped_early"] and summary["epochs"] == summary["best_epoch"] + 1 < 30


@pytest.mark.parametrize(
    "sets, match",
    [
        ({"eval__ks": (1, 100)}, "k: 100 is larger than the number of candidate items"),
        ({"data__threshold": 9.0}, "no positive training pairs"),
        ({"model__features": "colour"}, "features: unknown colour"),
        ({"loss__name": "gca-uot"}, "loss: the cml model trains with its min-triplet loss"),
        ({"model__pop_correction": 1.0}, "model.pop_correction: applies only to the two-tower"),
        ({"data__val_frac": 0.0}, r"data.val_frac: expected a fraction in \(0, 1\)"),
        ({"data__val_frac": 1.0}, r"data.val_frac: expected a fraction in \(0, 1\)"),
        ({"eval__select": "auc@10"}, "eval.select: expected"),
        ({"eval__patience": 0}, "eval.patience: expected an integer >= 1 or none"),
        ({"model__pop_marginal": 1.0}, "model.pop_marginal: applies only to the two-tower"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tiny, tmp_path, sets, match):
    with pytest.raises(ValueError, match=match):
        RecsysTrainer(tiny(**sets), tmp_path / "run").fit()
    out = tmp_path / "run"  # at most the probed, empty run directory and its lock
    assert not out.exists() or {p.name for p in out.iterdir()} <= {".otcl.lock"}


@pytest.mark.parametrize("kind", ["cml", "two-tower"])
def test_config_yaml_says_the_dmm_margin_warmup_and_lr_that_run(tiny, tmp_path, kind):
    import yaml

    cfg = tiny(kind, dmm__enabled=True)
    tr = RecsysTrainer(cfg, tmp_path / "run")
    tr.fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    from otcl.losses import DMM

    dmm = next(m for m in tr.loss_fn.modules() if isinstance(m, DMM))
    assert saved["derived"]["dmm"]["margin"] == dmm.margin
    assert saved["dmm"]["margin"] == dmm.margin == (1.5 if kind == "cml" else 0.2)
    assert saved["dmm"]["warmup"] == dmm.warmup == pytest.approx(0.15 * 2)
    # docs/recsys.md: optim.lr 1e-3 per 128 samples; Adam at 2e-3 (CML) and 4e-3 (two-tower)
    runs_at = tr.optimizer.param_groups[0]["initial_lr"]
    assert saved["optim"]["lr"] == 1e-3
    assert saved["derived"]["effective_lr"] == pytest.approx(runs_at)
    assert saved["derived"]["batch_size"] == tr.batch_size
    from otcl.pipelines.engine.optim import effective_lr
    from otcl.pipelines.recsys.config import resolve

    preset = resolve(tiny(kind, train__batch_size=None))  # the presets' batch: 256 or 512
    want = 2e-3 if kind == "cml" else 4e-3
    assert effective_lr(preset.optim, preset.train.batch_size) == pytest.approx(want)
