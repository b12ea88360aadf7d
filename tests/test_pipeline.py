"""Training pipeline: config, encoders, evaluation, train -> checkpoint -> resume -> eval, CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch

from otcl import cli
from otcl.config import Config, apply_overrides, load_config, resolve, save_config
from otcl.evaluate import evaluate_run, knn_predict, linear_probe
from otcl.models import build_encoder
from otcl.train import CHECKPOINT, Trainer, TrainingInterrupted, load_checkpoint
from otcl.utils import atomic_torch_save

pytest.importorskip("sklearn")
pytest.importorskip("yaml")


def tiny_config(**train) -> Config:
    """Digits, a 4-channel CNN, 3 epochs of 3 steps: about a second on a CPU."""
    cfg = Config()
    cfg.model.width = 4
    cfg.model.head_hidden = 16
    cfg.model.head_out = 8
    cfg.train.epochs = 3
    cfg.train.batch_size = 32
    cfg.train.max_steps_per_epoch = 3
    cfg.train.progress = False
    cfg.train.deterministic = True
    cfg.train.checkpoint_every = 1
    cfg.eval.linear_epochs = 5
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- config --------------------------------------------------------------------------------
def test_config_yaml_toml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("loss:\n  name: gca-uot\n  params: {rho: 0.5}\ntrain:\n  epochs: 7\n")
    t = tmp_path / "c.toml"
    t.write_text('[loss]\nname = "gca-uot"\n[loss.params]\nrho = 0.5\n[train]\nepochs = 7\n')
    a, b = load_config(y), load_config(t)
    assert a.to_dict() == b.to_dict()
    assert a.loss.name == "gca-uot" and a.loss.params == {"rho": 0.5} and a.train.epochs == 7
    c = apply_overrides(a, ["train.epochs=9", "loss.params.iters=20", "data.crop_scale=0.2,1"])
    assert c.train.epochs == 9 and c.loss.params["iters"] == 20
    assert c.data.crop_scale == (0.2, 1.0)
    assert a.train.epochs == 7  # overrides copy
    save_config(c, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").to_dict() == c.to_dict()


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.epoch=3", "unknown setting 'train.epoch'"),
        ("train.epochs=abc", "train.epochs: expected an integer"),
        ("train.compile=maybe", "train.compile: expected true or false"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("train=3", "'train' is a section"),
        ("nonsense", "expected section.key=value"),
    ],
)
def test_config_bad_overrides(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Config(), [override])


def test_config_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="cannot parse"):
        load_config(bad)
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        load_config(tmp_path / "c.json")


def test_presets_fill_only_unset_fields():
    cfg = Config()
    cfg.data.dataset = "cifar10"
    cfg.train.epochs = 5
    r = resolve(cfg)
    assert r.train.epochs == 5 and r.train.batch_size == 512 and r.model.arch == "resnet18"
    assert r.eval.knn_k == 200 and r.data.jitter == (0.4, 0.4, 0.4, 0.1)
    assert resolve(Config()).eval.knn_k == 20  # digits
    cfg.data.dataset = "mnist"
    with pytest.raises(ValueError, match="data.dataset"):
        resolve(cfg)


# -- models --------------------------------------------------------------------------------
def test_encoders_shapes():
    enc = build_encoder("resnet18", 3, head_hidden=64, head_out=16)
    x = torch.randn(2, 3, 32, 32)
    assert enc.features(x).shape == (2, 512) and enc(x).shape == (2, 16)
    n_params = sum(p.numel() for p in enc.backbone.parameters())
    assert n_params == 11_168_832  # torchvision resnet18 trunk with the 3x3 CIFAR stem
    small = build_encoder("small-cnn", 1, width=8, head_hidden=0, head_out=4)
    assert small(torch.randn(3, 1, 8, 8)).shape == (3, 4)
    with pytest.raises(ValueError, match="model.arch"):
        build_encoder("vgg", 3)


# -- evaluation ----------------------------------------------------------------------------
def test_knn_matches_bruteforce_reference():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 6, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    test = torch.randn(7, 6, generator=g)
    pred = knn_predict(test, train, labels, 3, k=5, t=0.2, chunk=3)
    for i in range(7):
        s = torch.nn.functional.cosine_similarity(test[i : i + 1], train)
        top = s.topk(5)
        votes = torch.zeros(3)
        for w, j in zip(top.values, top.indices, strict=True):
            votes[labels[j]] += torch.exp(w / 0.2)
        assert pred[i] == votes.argmax()
    with pytest.raises(ValueError, match="k: expected"):
        knn_predict(test, train, labels, 3, k=0)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(test, train, labels[:10], 3)


def test_linear_probe_separable_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 5
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 16, generator=g)
    res = linear_probe(x[:150], y[:150], x[150:], y[150:], 4, epochs=20, batch_size=32)
    assert res.test_accuracy == 1.0 and res.train_accuracy == 1.0
    assert res.history[-1]["epoch"] == 20


# -- training, checkpoints, resume ---------------------------------------------------------
def test_train_writes_run_and_eval(tmp_path):
    out = tmp_path / "run"
    summary = Trainer(tiny_config(), out).fit()
    for f in ("config.yaml", CHECKPOINT, "metrics.jsonl", "summary.json"):
        assert (out / f).exists(), f
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["views_per_s"] > 0 for r in recs)
    assert 0 <= summary["knn"] <= 1 and "knn" in recs[-1]
    st = load_checkpoint(out)
    assert st["epoch"] == 3 and st["done"] and st["global_step"] == 9
    res = evaluate_run(str(out), progress=False)
    assert (
        res["epoch"] == 3 and 0 < res["linear"] <= 1 and res["knn"] == pytest.approx(summary["knn"])
    )
    assert json.loads((out / "eval.json").read_text())["linear"] == res["linear"]
    # the learning rate followed the cosine schedule to ~0
    assert recs[-1]["lr"] < 1e-6


def test_existing_run_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(epochs=1), out).fit()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny_config(), out)
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        Trainer(tiny_config(), tmp_path / "other", resume=True)


@pytest.mark.parametrize("loss", ["infonce", "gca-uot"])
def test_ctrl_c_mid_epoch_then_resume_gives_identical_weights(tmp_path, loss, monkeypatch):
    cfg = tiny_config()
    cfg.loss.name = loss
    ref = Trainer(cfg, tmp_path / "ref")
    ref.fit()
    target = weights(ref.model)

    run = Trainer(cfg, tmp_path / "run")
    orig = Trainer.train_step

    def interrupt_at_step_5(self, idx):
        if self.global_step == 5:  # epoch 2, step 2 of 3
            raise KeyboardInterrupt
        return orig(self, idx)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_step_5)
    with pytest.raises(TrainingInterrupted) as info:
        run.fit()
    assert info.value.epoch == 1 and info.value.step == 2
    st = load_checkpoint(tmp_path / "run")
    assert st["global_step"] == 5 and not st["done"]
    monkeypatch.setattr(Trainer, "train_step", orig)
    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    resumed.fit()
    assert_same_weights(weights(resumed.model), target)
    recs = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ref_recs = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in recs] == pytest.approx(
        [json.loads(r)["loss"] for r in ref_recs], rel=1e-6
    )


def test_hard_kill_resumes_from_last_epoch_checkpoint(tmp_path, monkeypatch):
    """A crash (no Ctrl-C handler) loses only the work since the last checkpoint."""
    cfg = tiny_config()
    cfg.loss.name = "dmm"
    cfg.loss.params = {"warmup": 0, "partner": "random"}  # DMM active, global-RNG partners
    ref = Trainer(cfg, tmp_path / "ref")
    ref.fit()
    run = Trainer(cfg, tmp_path / "run")
    orig = Trainer.train_step

    def crash(self, idx):
        if self.global_step == 7:  # epoch 3
            raise RuntimeError("power cut")
        return orig(self, idx)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        run.fit()
    assert load_checkpoint(tmp_path / "run")["epoch"] == 2
    monkeypatch.setattr(Trainer, "train_step", orig)
    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    resumed.fit()
    assert_same_weights(weights(resumed.model), weights(ref.model))
    epochs = [json.loads(r)["epoch"] for r in open(tmp_path / "run" / "metrics.jsonl")]
    assert epochs == [1, 2, 3]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_torch_save({"v": 1}, path)
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"v": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind


def test_diverging_run_stops_with_a_clear_error(tmp_path, monkeypatch):
    from otcl.train import TrainingDiverged

    cfg = tiny_config(log_every=1)
    tr = Trainer(cfg, tmp_path / "run")
    monkeypatch.setattr(Trainer, "train_step", lambda self, idx: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match="optim.lr"):
        tr.fit()


@pytest.mark.parametrize(
    "setting, match",
    [
        ("train.epochs=0", "train.epochs"),
        ("train.batch_size=1", "train.batch_size"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.optimizer=lamb", "optim.optimizer"),
        ("train.device=tpu", "device"),
        ("train.amp=fp8", "train.amp"),
        ("loss.name=nope", "unknown loss 'nope'"),
        ("loss.dmm_mix=latent", "loss.dmm_mix"),
    ],
)
def test_trainer_bad_settings(tmp_path, setting, match):
    with pytest.raises(ValueError, match=match):
        Trainer(apply_overrides(tiny_config(), [setting]), tmp_path / "run")


# -- command line --------------------------------------------------------------------------
TINY = [
    "--no-progress",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--set",
    "train.max_steps_per_epoch=2",
    "--set",
    "model.width=4",
    "--set",
    "eval.linear_epochs=3",
]


def test_cli_train_resume_eval(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert (
        cli.main(["train", "--loss", "gca-uot", "--loss-param", "rho=0.5", "--out", out, *TINY])
        == 0
    )
    assert "gca-uot: 2 epochs" in capsys.readouterr().out
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert cfg.loss.params == {"rho": 0.5} and cfg.train.epochs == 2
    # extend the finished run by one epoch
    assert cli.main(["train", "--resume", out, "--epochs", "3", "--no-progress"]) == 0
    assert load_checkpoint(out)["epoch"] == 3
    assert cli.main(["eval", out, "--no-progress", "--linear-epochs", "2"]) == 0
    assert "linear probe" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["linear_epochs"] == 2


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--loss", "nope"], "unknown loss 'nope'; expected one of"),
        (["train", "--loss-param", "rhoo=1", "--loss", "gca-uot"], "unknown parameter"),
        (["train", "--loss-param", "rho"], "--loss-param: expected KEY=VALUE"),
        (["train", "--set", "train.epochz=1"], "unknown setting 'train.epochz'"),
        (["train", "--dataset", "mnist"], "data.dataset"),
        (["train", "--resume", "/nonexistent/run"], "run: expected a run directory"),
        (["eval", "/nonexistent/run"], "run: expected a run directory"),
        (["compare", "--losses", "infonce,nope"], "unknown loss"),
        (["compare", "--loss-param", "gca-uot:rhoo=1", "--losses", "gca-uot"], "rhoo"),
        (["train", "--config", "/nonexistent.yaml"], "config"),
    ],
)
def test_cli_user_errors_are_one_line(argv, match, capsys, tmp_path):
    if argv[0] != "eval" and "--resume" not in argv:
        argv = [*argv, "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("otcl: error: ") and match in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and "otcl 0." in capsys.readouterr().out
    for cmd in ("train", "eval", "compare"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        assert "usage: otcl " + cmd in capsys.readouterr().out
    assert cli.main(["losses"]) == 0
    assert "gca-uot" in capsys.readouterr().out


def test_cli_compare_writes_table_plots_and_reuses_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    argv = ["compare", "--losses", "infonce,gca-ince", "--seeds", "2", "--out", str(out), *TINY]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| infonce | 2 |" in table and "| gca-ince | 2 |" in table
    res = json.loads((out / "results.json").read_text())
    assert [r["loss"] for r in res["rows"]] == ["infonce", "gca-ince"]
    for r in res["rows"]:
        assert 0 < r["knn_mean"] <= 1 and 0 < r["linear_mean"] <= 1 and r["knn_std"] >= 0
        assert len(r["runs"]) == 2
    for png in ("accuracy.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mtime = (out / "infonce" / "seed0" / CHECKPOINT).stat().st_mtime_ns
    assert cli.main(argv) == 0  # finished runs are reused, not retrained
    assert (out / "infonce" / "seed0" / CHECKPOINT).stat().st_mtime_ns == mtime
    assert "reusing" in capsys.readouterr().err
    # the same directory with other settings is refused instead of mixing results
    assert cli.main([*argv, "--epochs", "3"]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_cli_ctrl_c_saves_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    orig = Trainer.train_step

    def interrupt(self, idx):
        if self.global_step == 1:
            raise KeyboardInterrupt
        return orig(self, idx)

    monkeypatch.setattr(Trainer, "train_step", interrupt)
    out = str(tmp_path / "run")
    assert cli.main(["train", "--out", out, *TINY]) == 130
    err = capsys.readouterr().err
    assert f"otcl train --resume {out}" in err
    assert load_checkpoint(out)["global_step"] == 1
    monkeypatch.setattr(Trainer, "train_step", orig)
    assert cli.main(["train", "--resume", out, "--no-progress"]) == 0
    assert load_checkpoint(out)["done"]


def test_shipped_configs_load_and_resolve():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs").glob("*.*"))
    assert len(files) >= 3
    for f in files:
        cfg = resolve(load_config(f))
        assert cfg.train.epochs and cfg.train.batch_size and cfg.model.arch, f
    digits = resolve(load_config(Path(__file__).parent.parent / "configs" / "digits.toml"))
    assert digits.to_dict() == resolve(Config()).to_dict()  # the file documents the default


def test_bf16_autocast_and_embedding_space_dmm_train(tmp_path):
    """The GPU settings (bf16 autocast, channels_last) run on CPU too; DMM without re-encoding."""
    cfg = tiny_config(amp="bf16", epochs=2)
    cfg.loss.name = "dmm"
    cfg.loss.params = {"base": "gca-uot", "warmup": 0}
    cfg.loss.dmm_mix = "embedding"
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["final_loss"] > 0 and 0 <= summary["knn"] <= 1
