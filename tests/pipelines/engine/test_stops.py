"""A caller stops the loop cleanly: request_stop (from a hook or another thread) or a deadline
stops at the next step boundary, checkpointed, and the run resumes bit-identically."""

from __future__ import annotations

import threading
import time

import pytest

from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.stops import TrainingInterrupted, TrainingStopped

from ..test_run import Toy


def test_request_stop_checkpoints_at_the_step_boundary_and_resumes_exactly(
    tmp_path, toy_config, weights, assert_same_weights, monkeypatch
):
    ref = Toy(toy_config(), tmp_path / "ref")
    ref.fit()
    orig = Toy.train_step

    def train_step(self, epoch, step):
        loss = orig(self, epoch, step)
        if self.global_step == 7:  # epoch 2, step 2 of 6: this step still completes
            self.request_stop("enough for now")
        return loss

    monkeypatch.setattr(Toy, "train_step", train_step)
    with pytest.raises(TrainingStopped) as info:
        Toy(toy_config(), tmp_path / "run").fit()
    e = info.value
    assert isinstance(e, TrainingInterrupted)  # callers that catch a signal's stop get it too
    assert (e.epoch, e.step, e.signum, e.exit_status) == (1, 2, 0, 75)
    assert e.reason == "enough for now" and "stopped (enough for now)" in str(e)
    assert e.run_dir == tmp_path / "run"
    assert load_checkpoint(tmp_path / "run")["global_step"] == 8
    monkeypatch.undo()
    resumed = Toy(toy_config(), tmp_path / "run", resume=True)
    resumed.fit()
    assert_same_weights(weights(resumed.model), weights(ref.model))


def test_a_deadline_stops_at_the_next_boundary(tmp_path, toy_config, monkeypatch):
    tr = Toy(toy_config(), tmp_path / "run")
    with pytest.raises(TrainingStopped, match="the deadline passed") as info:
        tr.fit(deadline=time.time() - 1)  # already past: not one step runs
    assert (info.value.epoch, info.value.step) == (0, 0)
    assert load_checkpoint(tmp_path / "run")["global_step"] == 0
    assert (
        Toy(toy_config(), tmp_path / "run", resume=True).fit(deadline=time.time() + 600)["epochs"]
        == 3
    )  # a deadline far enough away changes nothing


def test_request_stop_from_another_thread(tmp_path, toy_config, monkeypatch):
    tr = Toy(toy_config(), tmp_path / "run")
    started = threading.Event()
    orig = Toy.train_step

    def train_step(self, epoch, step):
        started.set()
        time.sleep(0.01)
        return orig(self, epoch, step)

    monkeypatch.setattr(Toy, "train_step", train_step)
    threading.Thread(target=lambda: started.wait(10) and tr.request_stop()).start()
    with pytest.raises(TrainingStopped, match="stop requested") as info:
        tr.fit()
    assert 1 <= load_checkpoint(tmp_path / "run")["global_step"] < tr.total_steps
    assert info.value.step >= 1 or info.value.epoch >= 1
