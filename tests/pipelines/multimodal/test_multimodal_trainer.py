"""The multimodal trainer on the shared run machinery, compare, and the CLI (tiny data)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from otcl import cli
from otcl.pipelines.engine.rundir import CHECKPOINT
from otcl.pipelines.engine.stops import TrainingInterrupted
from otcl.pipelines.multimodal.compare import compare
from otcl.pipelines.multimodal.config import MultimodalConfig, resolve
from otcl.pipelines.multimodal.trainer import MultimodalTrainer, evaluate_run

pytest.importorskip("yaml")


def mm_config(**loss) -> MultimodalConfig:
    cfg = MultimodalConfig()
    cfg.data.dataset = "npz"
    cfg.model.hidden, cfg.model.latent, cfg.model.width = 8, 6, 2
    cfg.train.epochs, cfg.train.batch_size = 3, 16
    cfg.train.progress, cfg.train.deterministic, cfg.train.checkpoint_every = False, True, 1
    cfg.eval.snr_db = (5.0,)
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return cfg


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_evaluates_and_writes_the_run(tmp_path, make_data):
    data = make_data()
    cfg = mm_config()
    cfg.eval.every = 1  # the full-modality probe after every epoch, into metrics.jsonl
    t = MultimodalTrainer(cfg, tmp_path / "run", data=data)
    summary = t.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all("full_accuracy" in r for r in records) and len(records) == 3
    assert t.loss_fn.layout == "cross" and t.loss_fn.temperature == 0.3  # pipeline defaults
    assert isinstance(t.optimizer, torch.optim.Adam)
    assert {"full_accuracy", "missing_accuracy", "R@1", "R@10", "medR"} <= set(summary)
    report = json.loads((tmp_path / "run" / "robustness.json").read_text())
    assert len(report["subsets"]) == 7 and report["missing"] == "drop"
    assert summary["full_accuracy"] == report["subsets"][-1]["metrics"]["accuracy"]
    again = evaluate_run(tmp_path / "run", data=data, overrides={"missing": "zero"})
    assert again["missing"] == "zero" and (tmp_path / "run" / "robustness-zero.json").exists()
    assert again["subsets"][-1] == {**report["subsets"][-1]}  # all present: nothing to fill


def test_bf16_autocast_encodes_in_bf16_and_aligns_in_float32(tmp_path, make_data):
    data = make_data()
    cfg = mm_config(name="dmm", params={"base": "gca-uot", "warmup": 0.0})
    cfg.train.amp, cfg.train.epochs = "bf16", 1
    t = MultimodalTrainer(cfg, tmp_path / "run", data=data)
    seen = []
    t.model.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    terms = t.objective.terms(t.model, {m: v[:8] for m, v in data.train.items()})
    assert set(seen) == {torch.bfloat16} and len(seen) == 6  # 3 clean + 3 mixed passes
    assert all(v.dtype == torch.float32 for v in terms.values())
    assert np.isfinite(t.fit()["final_loss"])


def test_linear_probe_option_is_the_shared_linear_probe(make_data):
    from otcl.pipelines.multimodal.trainer import make_probe
    from otcl.pipelines.sources.probes import linear_probe

    data = make_data()
    cfg = mm_config()
    cfg.eval.probe, cfg.eval.linear_epochs = "linear", 5
    g = torch.Generator().manual_seed(0)
    ftr, fte = (
        torch.randn(data.num_train, 4, generator=g),
        torch.randn(data.num_test, 4, generator=g),
    )
    score = make_probe(cfg, data, seed=3)(ftr, data.train_y, data.test_y)
    ref = linear_probe(ftr, data.train_y, fte, data.test_y, 3, epochs=5, lr=0.1, seed=3)
    assert score(fte) == {"accuracy": ref.test_accuracy}
    cfg.eval.probe = "ridge"
    with pytest.raises(ValueError, match="eval.probe: 'ridge' does not fit classification"):
        make_probe(cfg, data)


def test_linear_probe_is_trained_once_for_every_subset(make_data, monkeypatch):
    """``eval.probe=linear`` trains one probe on the full training representation and scores
    every subset of present modalities and every noisy copy with it."""
    from otcl.pipelines.multimodal import trainer as T
    from otcl.pipelines.sources.probes import fit_linear_probe

    data = make_data()
    cfg = resolve(mm_config())
    cfg.eval.probe, cfg.eval.linear_epochs = "linear", 3
    model = T.make_model(cfg, data)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return fit_linear_probe(*args, **kwargs)

    monkeypatch.setattr(T, "fit_linear_probe", counted)
    report = T.evaluate_run_model(cfg, model, data)
    assert calls == [(data.num_train, cfg.model.latent)]
    assert len(report["subsets"]) == 7 and report["noise"]
    assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 for r in report["subsets"])


def test_resume_with_dmm_is_exact(tmp_path, make_data):
    """DMM's lambda draws and the batch order continue exactly after an interruption."""
    data = make_data()
    params = {"base": "infonce", "warmup": 0.0}
    full = MultimodalTrainer(mm_config(name="dmm", params=params), tmp_path / "a", data=data)
    full.fit()

    class Stop(MultimodalTrainer):  # a real Ctrl-C during a step: the run stops after it
        def train_step(self, epoch, step):
            if epoch == 1 and step == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return super().train_step(epoch, step)

    cut = Stop(mm_config(name="dmm", params=params), tmp_path / "b", data=data)
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    resumed = MultimodalTrainer(
        mm_config(name="dmm", params=params), tmp_path / "b", data=data, resume=True
    )
    resumed.fit()
    a, b = _weights(full.model), _weights(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_compare_variants_table_and_reuse(tmp_path, make_data, monkeypatch):
    import dataclasses

    from otcl.pipelines import spec

    data = make_data()
    mm = dataclasses.replace(spec.get("multimodal"), load_data=lambda cfg: data)
    monkeypatch.setitem(spec._REGISTRY, "multimodal", mm)
    cfg = mm_config()
    cfg.train.epochs = 1
    methods = ["infonce", "infonce+dmm"]
    res = compare(cfg, methods, seeds=2, out=tmp_path / "cmp", log=lambda s: None)
    assert list(res["methods"]) == methods and res["pipeline"] == "multimodal"
    acc = res["methods"]["infonce+dmm"]["metrics"]["full_accuracy"]
    accs = acc["per_seed"]
    assert len(accs) == 2 and acc["mean"] == pytest.approx(np.mean(accs))
    assert acc["std"] == pytest.approx(np.std(accs, ddof=1))
    d = res["deltas"]["infonce+dmm"]["metrics"]["full_accuracy"]
    base = res["methods"]["infonce"]["metrics"]["full_accuracy"]["per_seed"]
    assert d["per_seed"] == pytest.approx([b - a for a, b in zip(base, accs, strict=True)])
    for f in ("results.json", "table.md", "robustness.png", "retrieval.png"):
        assert (tmp_path / "cmp" / f).exists(), f
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| vec+seq+img |" in table and "infonce+dmm" in table
    logs = []
    compare(cfg, methods, seeds=2, out=tmp_path / "cmp", log=logs.append, plot=False)
    assert sum("reusing" in line for line in logs) == 4
    with pytest.raises(ValueError, match="<loss>\\+dmm"):  # DMM is a suffix, not a method
        compare(cfg, ["dmm"], out=tmp_path / "x")
    # DMM's per_modality has no effect here (every modality is mixed on its own): refused
    # before anything is written
    with pytest.raises(ValueError, match="loss.params.per_modality: does not apply"):
        compare(
            cfg, ["infonce+dmm"], out=tmp_path / "y", loss_params={"dmm": {"per_modality": True}}
        )
    assert not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match="losses not compared"):  # no +dmm method here
        compare(cfg, ["infonce"], out=tmp_path / "y", loss_params={"dmm": {"margin": 0.3}})
    cfg.train.epochs = 2
    with pytest.raises(ValueError, match="different configuration"):
        compare(cfg, ["infonce"], seeds=1, out=tmp_path / "cmp", log=lambda s: None)


def _npz(tmp_path, n=40):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    base = rng.normal(size=(n, 3)) + 2 * y[:, None]
    np.savez(
        tmp_path / "f.npz",
        video=base @ rng.normal(size=(3, 5)),
        text=(base @ rng.normal(size=(3, 8))).reshape(n, 4, 2),
        labels=y,
    )
    return tmp_path / "f.npz"


SMALL = "--epochs 2 --batch-size 8 --no-progress --set model.hidden=8 --set model.latent=4"


def _mm(verb: str, f, extra: str) -> int:
    """``otcl multimodal VERB`` on the npz file ``f`` with tiny settings and ``extra`` flags."""
    return cli.main(["multimodal", verb, "--dataset", "npz", "--data-dir", str(f),
                     *SMALL.split(), *extra.split()])  # fmt: skip


def test_cli_train_eval_compare(tmp_path, capsys):
    f = _npz(tmp_path)
    assert _mm("train", f, f"--loss gca-uot --out {tmp_path / 'run'}") == 0
    assert (tmp_path / "run" / CHECKPOINT).exists()
    assert "pairwise R@1" in capsys.readouterr().out
    rc = cli.main(["multimodal", "eval", str(tmp_path / "run"), "--snr-db", "0,10"])
    out = capsys.readouterr().out
    assert rc == 0 and "| video+text |" in out
    extra = f"--methods infonce+dmm --seeds 1 --jobs 1 --no-plot --out {tmp_path / 'cmp'}"
    assert _mm("compare", f, extra) == 0
    assert "infonce+dmm" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, match",
    [
        ("--modalities video+audio", "f.npz: array 'audio' is missing"),
        ("--loss nope", "nope"),
        ("--set model.fusion=max", "model.fusion: expected one of"),
        ("--loss-param nope=0.3", "nope"),
        ("--compile", "--compile: not supported by this pipeline"),
        ("--patches 8", "data.patches: does not apply to dataset 'npz'"),
        ("--patches 4", "data.patches: does not apply to dataset 'npz'"),  # even the default
        ("--set eval.ridge_alpha=2", "eval.ridge_alpha: does not apply to the knn probe"),
        ("--set eval.ridge_alpha=1.0", "eval.ridge_alpha: does not apply to the knn probe"),
        ("--set model.image_arch=mlp", "model.image_arch: does not apply to the modalities"),
        ("--loss dmm --loss-param per_modality=false", "per_modality: does not apply to the mul"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, extra, match):
    f = _npz(tmp_path)
    assert _mm("train", f, f"{extra} --out {tmp_path / 'r'}") == 2
    err = capsys.readouterr().err
    assert err.startswith("otcl: error:") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r" / CHECKPOINT).exists()  # refused before any training


def test_cli_bad_npz_files_are_one_line(tmp_path, capsys):
    (tmp_path / "t.npz").write_text("video,text\n1,2\n")
    _one_line(capsys, _mm("train", tmp_path / "t.npz", f"--out {tmp_path / 'r'}"), "is a text file")
    f = _npz(tmp_path)
    z = dict(np.load(f))
    np.savez(f, **{**z, "labels": np.stack([z["labels"], z["labels"]], 1)})
    _one_line(capsys, _mm("train", f, f"--out {tmp_path / 'r'}"), "has shape (40, 2), expected one")
    assert not (tmp_path / "r" / CHECKPOINT).exists()


def _one_line(capsys, rc, match):
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("otcl: error:") and match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_presets_and_loss_defaults():
    cfg = resolve(MultimodalConfig())
    assert cfg.model.image_arch == "mlp" and cfg.train.epochs == 30 and cfg.train.threads == 1
    assert cfg.optim.optimizer == "adam" and cfg.optim.lr == 1e-3
    assert cfg.loss.params == {"layout": "cross", "temperature": 0.3}
    cfg = MultimodalConfig()
    cfg.loss.name, cfg.loss.params = "dmm", {"base": "gca-uot", "temperature": 0.5}
    cfg.data.dataset = "mosei"
    cfg = resolve(cfg)
    assert cfg.loss.params["warmup"] == 12.0 and cfg.loss.params["temperature"] == 0.5
    assert cfg.model.latent == 60


def test_cli_on_a_mosei_pickle_reports_gmc_metrics(tmp_path, capsys):
    """Sequences through GRUs, sentiment labels through the ridge probe and GMC's metrics."""
    import pickle

    rng = np.random.default_rng(0)

    def split(n):
        y = rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float32)
        feats = {m: rng.normal(size=(n, 5, d)).astype(np.float32) + y for m, d in
                 (("text", 6), ("audio", 4), ("vision", 3))}  # fmt: skip
        return {**feats, "labels": y}

    raw = {"train": split(32), "valid": split(4), "test": split(16)}
    (tmp_path / "mosei_senti_data.pkl").write_bytes(pickle.dumps(raw))
    rc = cli.main(["multimodal", "train", "--dataset", "mosei", "--data-dir", str(tmp_path),
                   "--out", str(tmp_path / "run"), *SMALL.split()])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "full_mae" in out and "missing_acc2" in out
    report = json.loads((tmp_path / "run" / "robustness.json").read_text())
    names = [r["name"] for r in report["subsets"]]
    assert names == ["text", "audio", "vision", "text+audio", "text+vision", "audio+vision",
                     "text+audio+vision"]  # fmt: skip
    assert set(report["subsets"][0]["metrics"]) == {"mae", "corr", "acc2", "f1"}


def test_memory_bank_queues_joint_latents_and_resumes_exactly(tmp_path, make_data):
    """``loss.memory_bank``: the joint representations are queued as extra negatives of every
    alignment term, and the queue continues exactly after an interruption."""
    from otcl.pipelines.engine.stops import TrainingStopped as Stopped

    data = make_data()
    cfg = mm_config(name="infonce", memory_bank=24)
    full = MultimodalTrainer(cfg, tmp_path / "a", data=data)
    full.fit()
    assert len(full.memory_bank) == 24 and full.memory_bank.dim == 6

    class Stop(MultimodalTrainer):
        def train_step(self, epoch, step):
            if epoch == 1 and step == 1:
                self.request_stop("test")
            return super().train_step(epoch, step)

    with pytest.raises(Stopped):
        Stop(cfg, tmp_path / "b", data=data).fit()
    resumed = MultimodalTrainer(cfg, tmp_path / "b", data=data, resume=True)
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.memory_bank(), resumed.memory_bank())
    plain = MultimodalTrainer(mm_config(name="infonce"), tmp_path / "c", data=data)
    plain.fit()
    c = plain.model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
