"""The shared run machinery (otcl.pipelines.engine) through a toy pipeline with no images.

``Toy`` is the smallest complete :class:`EpochTrainer` subclass: a BatchNorm + dropout MLP on
random vectors, two noisy views per sample, InfoNCE. Everything here holds for every pipeline.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.progress import Progress
from otcl.pipelines.engine.rundir import CHECKPOINT
from otcl.pipelines.engine.runtime import (
    amp_dtype,
    derive_seed,
    pick_device,
    rng_state,
    set_rng_state,
)
from otcl.pipelines.engine.stops import TrainingDiverged
from otcl.pipelines.engine.trainer import EpochTrainer
from otcl.pipelines.files import append_jsonl, atomic_torch_save, read_jsonl


class Toy(EpochTrainer):
    n = 96

    def build(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(self.n, 6, generator=g)
        self.model = nn.Sequential(
            nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.1), nn.Linear(12, 4)
        )
        self.loss_fn = self.build_loss()
        self.steps_per_epoch = self.n // self.batch_size
        self.evaluated: list[tuple[int, bool]] = []

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        x = self.x[self.batch_indices(self.n, epoch, step)]
        noise = torch.randn(2, *x.shape, generator=self.step_generator("noise"))
        z = self.model(torch.cat([x + 0.1 * noise[0], x + 0.1 * noise[1]]))
        return self.loss_fn(z[: x.shape[0]], z[x.shape[0] :])

    def evaluate(self, final: bool) -> dict[str, float]:
        self.evaluated.append((self.epoch, final))
        if not (final or self.epoch == 2):
            return {}
        self.model.eval()
        with torch.no_grad():
            spread = float(self.model(self.x).std())
        self.model.train()
        return {"spread": spread}


def test_fit_writes_config_checkpoint_metrics_and_summary(tmp_path, toy_config):
    out = tmp_path / "run"
    tr = Toy(toy_config(), out)
    assert tr.steps_per_epoch == 6 and tr.total_steps == 18
    summary = tr.fit()
    for f in ("config.yaml", CHECKPOINT, "metrics.jsonl", "summary.json"):
        assert (out / f).is_file(), f
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["samples_per_s"] > 0 for r in recs)
    # end-of-epoch hook: epochs 1 and 2 (no metric at 1), then once with final=True
    assert tr.evaluated == [(1, False), (2, False), (3, True)]
    assert "spread" not in recs[0] and "spread" in recs[1] and "spread" in recs[2]
    assert summary["spread"] == recs[2]["spread"] and summary["epochs"] == 3
    assert json.loads((out / "summary.json").read_text()) == summary
    st = load_checkpoint(out)
    assert st["epoch"] == 3 and st["global_step"] == 18 and st["done"]
    assert recs[-1]["lr"] < 1e-6  # cosine to ~0 at the last step


def test_lr_schedule_warmup_then_cosine(tmp_path, toy_config):
    cfg = toy_config(epochs=4)
    cfg.optim.warmup_epochs = 1.0
    tr = Toy(cfg, tmp_path / "run")  # 6 steps per epoch, 24 in all, 6 of warm-up
    f = [tr.lr_factor(s) for s in range(24)]
    assert f[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert f[6] == pytest.approx(1.0) and f[15] == pytest.approx(0.5 * (1 + np.cos(np.pi / 2)))
    assert all(a >= b for a, b in zip(f[6:], f[7:], strict=False))
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 16 / 128 / 6)


def test_crash_resumes_from_last_checkpoint_and_trims_the_log(
    tmp_path, toy_config, weights, assert_same_weights, monkeypatch
):
    """A crash (no handler) loses only the work since the last checkpoint; epochs logged after
    it are redone, not duplicated."""
    cfg = toy_config(checkpoint_every=2, epochs=4)
    ref = Toy(cfg, tmp_path / "ref")
    ref.fit()
    orig = Toy.compute_loss

    def crash(self, epoch, step):
        if self.global_step == 20:  # epoch 4; last checkpoint after epoch 2, epoch 3 logged
            raise RuntimeError("power cut")
        return orig(self, epoch, step)

    monkeypatch.setattr(Toy, "compute_loss", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        Toy(cfg, tmp_path / "run").fit()
    assert load_checkpoint(tmp_path / "run")["epoch"] == 2
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    monkeypatch.setattr(Toy, "compute_loss", orig)
    resumed = Toy(cfg, tmp_path / "run", resume=True)
    resumed.fit()
    assert_same_weights(weights(resumed.model), weights(ref.model))
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_existing_run_is_never_overwritten(tmp_path, toy_config):
    Toy(toy_config(epochs=1), tmp_path / "run").fit()
    with pytest.raises(ValueError, match="--resume"):
        Toy(toy_config(), tmp_path / "run")
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        Toy(toy_config(), tmp_path / "other", resume=True)


def test_diverging_run_stops_with_a_clear_error(tmp_path, toy_config, monkeypatch):
    tr = Toy(toy_config(log_every=1), tmp_path / "run")
    monkeypatch.setattr(Toy, "train_step", lambda self, e, s: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match="optim.lr"):
        tr.fit()


def test_build_must_set_the_model_loss_and_steps(tmp_path, toy_config):
    class Incomplete(EpochTrainer):
        def build(self):
            self.model = nn.Linear(2, 2)

    with pytest.raises(TypeError, match="self.loss_fn"):
        Incomplete(toy_config(), tmp_path / "run")


def test_extra_state_is_checkpointed(tmp_path, toy_config, monkeypatch):
    monkeypatch.setattr(Toy, "extra_state", lambda self: {"memory": torch.arange(3)})
    got = {}
    monkeypatch.setattr(Toy, "load_extra_state", lambda self, st: got.update(st))
    Toy(toy_config(epochs=1), tmp_path / "run").fit()
    Toy(toy_config(epochs=2), tmp_path / "run", resume=True, extend=True).close()
    assert torch.equal(got["memory"], torch.arange(3))


def test_plain_progress_lines_without_a_terminal(tmp_path, toy_config):
    lines: list[str] = []
    cfg = toy_config(epochs=20, progress=True, max_steps_per_epoch=1)
    Toy(cfg, tmp_path / "run", log=lines.append).fit()
    assert len(lines) == 10  # about ten lines per run, not one per epoch
    assert lines[-1].startswith("infonce s0 epoch 20/20: loss ") and "samples/s" in lines[-1]
    assert lines[0].startswith("infonce s0 epoch 2/20") and ", spread " in lines[0]
    p = Progress(enabled=False, total=5, done=0, epochs=5, desc="x", log=lines.append)
    p.epoch_line(5, 5, "never")
    assert "never" not in lines


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


def test_derive_seed_is_a_fixed_function():
    """Batch orders and augmentations of saved runs depend on these values: never change them."""
    assert derive_seed(0, "order", 1) == 251157608447473956
    assert derive_seed(7, "augment", 123) == 7189642625134838860
    assert derive_seed(0, "order", 1) != derive_seed(0, "order", 2) != derive_seed(1, "order", 1)


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(()).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == a


def test_jsonl_ignores_a_truncated_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    append_jsonl(p, {"epoch": 1})
    with open(p, "a") as fh:
        fh.write('{"epoch": 2, "lo')
    assert read_jsonl(p) == [{"epoch": 1}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_device_and_amp_errors_name_the_setting():
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu")
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="train.amp"):
        amp_dtype("fp8", torch.device("cpu"))


@pytest.mark.parametrize(
    "section, key, value, match",
    [
        ("train", "epochs", 0, "train.epochs"),
        ("train", "batch_size", 1, "train.batch_size"),
        ("optim", "lr", -1.0, "optim.lr"),
        ("optim", "optimizer", "lamb", "optim.optimizer"),
        ("optim", "schedule", "step", "optim.schedule"),
        ("train", "checkpoint_every", 0, "train.checkpoint_every"),
        ("loss", "dmm_mix", "latent", "loss.dmm_mix"),
        ("train", "device", "tpu", "device"),
        ("train", "amp", "fp8", "train.amp"),
        ("optim", "momentum", 2.0, r"optim.momentum: expected a number in \[0, 1\)"),
        ("optim", "momentum", -1.0, r"optim.momentum: expected a number in \[0, 1\)"),
        ("optim", "weight_decay", -1.0, "optim.weight_decay: expected a number >= 0"),
        ("optim", "warmup_epochs", -1.0, "optim.warmup_epochs"),
    ],
)
def test_bad_shared_settings_name_the_setting(tmp_path, toy_config, section, key, value, match):
    cfg = toy_config()
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ValueError, match=match):
        Toy(cfg, tmp_path / "run")


def test_exploding_weights_are_a_divergence_not_a_usage_error(tmp_path, toy_config):
    """lr 1e30: the loss's finiteness check on the embeddings fails at step 2; that is the run
    diverging (TrainingDiverged, exit 1 in the CLI), not a ValueError (exit 2)."""
    cfg = toy_config()
    cfg.optim.lr = 1e30
    with pytest.raises(TrainingDiverged, match=r"non-finite values at epoch 1, step 2 .*optim.lr"):
        Toy(cfg, tmp_path / "run").fit()
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_non_finite_weights_are_never_checkpointed(tmp_path, toy_config, monkeypatch):
    tr = Toy(toy_config(epochs=2), tmp_path / "run")
    orig = Toy.train_step

    def poison(self, epoch, step):
        loss = orig(self, epoch, step)
        if epoch == 1 and step == self.steps_per_epoch - 1:  # NaN weights after a finite loss
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(Toy, "train_step", poison)
    with pytest.raises(TrainingDiverged, match=r"weights became NaN/inf by step 12 \(epoch 2\)"):
        tr.fit()
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1  # the last finite one


def test_sgd_only_settings_with_adam_and_nesterov_without_momentum(tmp_path, toy_config):
    cfg = toy_config()
    cfg.optim.optimizer, cfg.optim.nesterov = "adam", True
    with pytest.raises(ValueError, match="apply only to optim.optimizer=sgd"):
        Toy(cfg, tmp_path / "run")
    cfg = toy_config()
    cfg.optim.momentum, cfg.optim.nesterov = 0.0, True
    with pytest.raises(ValueError, match="optim.nesterov: needs optim.momentum > 0"):
        Toy(cfg, tmp_path / "run")


def test_the_subclass_contract_examples_run(monkeypatch, tmp_path):
    """The docstring examples other pipelines copy from (run.py, config.py) work as written."""
    import doctest
    import tempfile

    import otcl.pipelines.config
    import otcl.pipelines.engine.trainer

    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: str(tmp_path))
    for mod in (otcl.pipelines.engine.trainer, otcl.pipelines.config):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, mod.__name__


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_fused_optimizer_is_the_same_update(tmp_path, toy_config, optimizer):
    """``optim.fused``: torch's fused implementation (one kernel per step) makes the same
    updates as the default one up to rounding, with the shared builder's lr scaling and weight
    decay groups; every pipeline gets it from there."""
    models = {}
    for fused in (False, True):
        cfg = toy_config(epochs=1)
        cfg.optim.optimizer, cfg.optim.fused, cfg.optim.weight_decay = optimizer, fused, 0.1
        t = Toy(cfg, tmp_path / f"{optimizer}-{fused}")
        assert t.optimizer.defaults.get("fused") is (True if fused else None)
        g = torch.Generator().manual_seed(0)
        for _ in range(5):  # the same gradients into both
            for p in t.model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            t.optimizer.step()
        models[fused] = t.model.state_dict()
        t.close()
    for k, v in models[False].items():
        torch.testing.assert_close(models[True][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_fused_optimizer_falls_back_with_a_line(tmp_path, toy_config, monkeypatch):
    """A torch or device without the fused kernel: the default implementation, said once."""
    real = torch.optim.Adam

    class NoFused(real):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be on cuda")
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", NoFused)
    cfg = toy_config(epochs=1)
    cfg.optim.optimizer, cfg.optim.fused, cfg.optim.lr = "adam", True, 0.01
    lines: list[str] = []
    t = Toy(cfg, tmp_path / "r", log=lines.append)
    assert not t.optimizer.defaults.get("fused")
    assert [x for x in lines if x.startswith("optim.fused: torch")] == [
        f"optim.fused: torch {torch.__version__} has no fused adam for cpu (`fused=True` "
        "requires all the params to be on cuda); using the default implementation"
    ]
