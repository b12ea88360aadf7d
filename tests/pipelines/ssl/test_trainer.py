"""The self-supervised image trainer: a run on digits, exact resume, evaluation, settings."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from otcl.pipelines.config import apply_overrides
from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.rundir import CHECKPOINT
from otcl.pipelines.engine.stops import TrainingInterrupted
from otcl.pipelines.ssl.evaluate import evaluate_run
from otcl.pipelines.ssl.trainer import SSLTrainer, load_run


def test_train_writes_run_and_eval(tmp_path, tiny_config):
    out = tmp_path / "run"
    summary = SSLTrainer(tiny_config(), out).fit()
    for f in ("config.yaml", CHECKPOINT, "metrics.jsonl", "summary.json"):
        assert (out / f).exists(), f
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["views_per_s"] > 0 for r in recs)
    assert 0 <= summary["knn"] <= 1 and "knn" in recs[-1]
    assert summary["loss_name"] == "infonce" and summary["dataset"] == "digits"
    st = load_checkpoint(out)
    assert st["epoch"] == 3 and st["done"] and st["global_step"] == 9
    res = evaluate_run(str(out), progress=False)
    assert res["epoch"] == 3 and 0 < res["linear"] <= 1
    assert res["knn"] == pytest.approx(summary["knn"])  # the same backbone, the same protocol
    assert json.loads((out / "eval.json").read_text())["linear"] == res["linear"]
    cfg, model, data, aug, _ = load_run(out)
    assert not model.training and cfg.model.width == 4 and data.num_classes == 10


def test_knn_monitor_every_n_epochs(tmp_path, tiny_config):
    cfg = tiny_config(epochs=3)
    cfg.eval.knn_every = 2
    SSLTrainer(cfg, tmp_path / "run").fit()
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert ["knn" in r for r in recs] == [False, True, True]  # epoch 2 monitor, epoch 3 final


@pytest.mark.parametrize("loss", ["infonce", "gca-uot"])
def test_ctrl_c_mid_epoch_then_resume_gives_identical_weights(
    tmp_path, loss, monkeypatch, tiny_config, weights, assert_same_weights
):
    cfg = tiny_config()
    cfg.loss.name = loss
    ref = SSLTrainer(cfg, tmp_path / "ref")
    ref.fit()
    orig = SSLTrainer.train_step

    def interrupt_at_step_5(self, epoch, step):
        if self.global_step == 5:  # a real Ctrl-C in epoch 2, step 3 of 3
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, epoch, step)

    monkeypatch.setattr(SSLTrainer, "train_step", interrupt_at_step_5)
    with pytest.raises(TrainingInterrupted) as info:
        SSLTrainer(cfg, tmp_path / "run").fit()
    # the step finished, then the run stopped at the next boundary (the start of epoch 3)
    assert (info.value.epoch, info.value.step, info.value.exit_status) == (2, 0, 130)
    assert load_checkpoint(tmp_path / "run")["global_step"] == 6
    monkeypatch.setattr(SSLTrainer, "train_step", orig)
    resumed = SSLTrainer(cfg, tmp_path / "run", resume=True)
    resumed.fit()
    assert_same_weights(weights(resumed.model), weights(ref.model))
    recs = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ref_recs = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in recs] == pytest.approx(
        [json.loads(r)["loss"] for r in ref_recs], rel=1e-6
    )


def test_hard_kill_resumes_dmm_from_last_epoch_checkpoint(
    tmp_path, monkeypatch, tiny_config, weights, assert_same_weights
):
    """DMM with random partners draws from the global RNG: its state must be in the checkpoint."""
    cfg = tiny_config()
    cfg.loss.name = "dmm"
    cfg.loss.params = {"warmup": 0, "partner": "random"}
    ref = SSLTrainer(cfg, tmp_path / "ref")
    ref.fit()
    orig = SSLTrainer.train_step

    def crash(self, epoch, step):
        if self.global_step == 7:  # epoch 3
            raise RuntimeError("power cut")
        return orig(self, epoch, step)

    monkeypatch.setattr(SSLTrainer, "train_step", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        SSLTrainer(cfg, tmp_path / "run").fit()
    assert load_checkpoint(tmp_path / "run")["epoch"] == 2
    monkeypatch.setattr(SSLTrainer, "train_step", orig)
    resumed = SSLTrainer(cfg, tmp_path / "run", resume=True)
    resumed.fit()
    assert_same_weights(weights(resumed.model), weights(ref.model))


def test_bf16_autocast_and_embedding_space_dmm_train(tmp_path, tiny_config):
    """The GPU settings (bf16 autocast, channels_last) run on CPU too; DMM without re-encoding."""
    cfg = tiny_config(amp="bf16", epochs=2)
    cfg.loss.name = "dmm"
    cfg.loss.params = {"base": "gca-uot", "warmup": 0}
    cfg.loss.dmm_mix = "embedding"
    summary = SSLTrainer(cfg, tmp_path / "run").fit()
    assert summary["final_loss"] > 0 and 0 <= summary["knn"] <= 1


def test_loss_built_without_per_call_input_check_unless_set(tmp_path, tiny_config):
    """No host sync per step from the loss's NaN/Inf check; the user's setting wins."""
    cfg = tiny_config()
    cfg.loss.name = "gca-uot"
    assert SSLTrainer(cfg, tmp_path / "a").loss_fn.check_inputs is False
    cfg.loss.params = {"check_inputs": True}
    assert SSLTrainer(cfg, tmp_path / "b").loss_fn.check_inputs is True
    assert "check_inputs" not in SSLTrainer(tiny_config(), tmp_path / "c").cfg.loss.params


def test_compiled_loss_trains_the_same_weights(
    tmp_path, monkeypatch, tiny_config, weights, assert_same_weights
):
    """train.compile_loss runs the step's loss through torch.compile (here dynamo's graph
    capture with the eager backend: the plumbing, in seconds; inductor's kernels are for GPUs)."""
    import functools

    import torch

    cfg = tiny_config(epochs=1)
    cfg.loss.name = "gca-uot"
    ref = SSLTrainer(cfg, tmp_path / "ref")
    ref.fit()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg.train.compile_loss = True
    tr = SSLTrainer(cfg, tmp_path / "run")
    assert tr.loss_call is not tr.loss_fn
    tr.fit()
    assert_same_weights(weights(tr.model), weights(ref.model))


def test_nan_loss_still_stops_the_run_without_the_input_check(tmp_path, tiny_config):
    from otcl.pipelines.engine.stops import TrainingDiverged

    cfg = tiny_config(log_every=2)
    cfg.optim.lr = 1e30  # the weights overflow after the first step
    with pytest.raises(TrainingDiverged, match="loss became"):
        SSLTrainer(cfg, tmp_path / "run").fit()


@pytest.mark.parametrize(
    "setting, match",
    [
        ("train.epochs=0", "train.epochs"),
        ("optim.lr=-1", "optim.lr"),
        ("loss.name=nope", "unknown loss 'nope'"),
        ("eval.knn_k=0", "knn_k"),
        ("data.dataset=mnist", "data.dataset"),
        ("model.arch=vgg", "model.arch"),
    ],
)
def test_trainer_bad_settings(tmp_path, setting, match, tiny_config):
    with pytest.raises(ValueError, match=match):
        SSLTrainer(apply_overrides(tiny_config(), [setting]), tmp_path / "run")


def test_nan_weights_in_a_checkpoint_are_refused_by_eval_and_resume(tmp_path, tiny_config):
    """A NaN model evaluates to chance level (10 %) without complaint: refuse it instead."""
    from otcl.pipelines.engine.checkpoint import save_checkpoint
    from otcl.pipelines.engine.rundir import CHECKPOINT

    out = tmp_path / "run"
    SSLTrainer(tiny_config(epochs=1), out).fit()
    st = load_checkpoint(out)
    st["model"]["backbone.net.0.0.weight"].fill_(float("nan"))
    save_checkpoint(st, out / CHECKPOINT)
    with pytest.raises(ValueError, match=r"NaN/inf weights \(backbone.net.0.0.weight\)"):
        evaluate_run(out, progress=False)
    with pytest.raises(ValueError, match="NaN/inf weights"):
        SSLTrainer(tiny_config(epochs=1), out, resume=True)


def test_a_checkpoint_of_another_model_is_one_error(tmp_path, tiny_config):
    from otcl.pipelines.engine.checkpoint import save_checkpoint
    from otcl.pipelines.engine.rundir import CHECKPOINT

    out = tmp_path / "run"
    SSLTrainer(tiny_config(epochs=1), out).fit()
    st = load_checkpoint(out)
    st["model"]["backbone.net.0.0.weight"] = torch.zeros(3, 3)
    save_checkpoint(st, out / CHECKPOINT)
    with pytest.raises(ValueError, match="does not fit its model"):
        SSLTrainer(tiny_config(epochs=1), out, resume=True)
