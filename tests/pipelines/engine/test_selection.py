"""Model selection in the run engine: best epoch, early stopping, test once, exact resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.selection import BEST, SelectionRule, load_best
from otcl.pipelines.engine.stops import TrainingStopped
from otcl.pipelines.engine.trainer import EpochTrainer
from otcl.pipelines.files import read_jsonl

#: validation score of each epoch: best at 3, then three validations without improvement
SCORES = {1: 0.1, 2: 0.3, 3: 0.5, 4: 0.45, 5: 0.5, 6: 0.2, 7: 0.9, 8: 1.0}


class Selecting(EpochTrainer):
    n = 64
    patience: int | None = 3
    every = 1

    def build(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(self.n, 6, generator=g)
        self.model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        self.loss_fn = self.build_loss()
        self.steps_per_epoch = self.n // self.batch_size
        self.validated: dict[int, dict[str, torch.Tensor]] = {}
        self.tested: list[dict[str, torch.Tensor]] = []
        self.stop_at: int | None = None

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        x = self.x[self.batch_indices(self.n, epoch, step)]
        noise = torch.randn(2, *x.shape, generator=self.step_generator("noise"))
        z = self.forward_model(torch.cat([x + 0.1 * noise[0], x + 0.1 * noise[1]]))
        return self.loss_fn(z[: x.shape[0]], z[x.shape[0] :])

    def selection_rule(self) -> SelectionRule:
        return SelectionRule("score", every=self.every, patience=self.patience)

    def validate(self) -> dict[str, float]:
        self.validated[self.epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}
        if self.stop_at == self.epoch:
            self.request_stop("test")
        return {"score": SCORES[self.epoch], "other": -1.0}

    def evaluate(self, final: bool) -> dict[str, float]:
        if final:  # the test set: must run once, on the best weights
            self.tested.append({k: v.clone() for k, v in self.model.state_dict().items()})
            return {"test": 1.0}
        return {}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_best_epoch_early_stop_and_one_test_on_the_best_weights(tmp_path, toy_config):
    out = tmp_path / "run"
    tr = Selecting(toy_config(epochs=8), out)
    summary = tr.fit()
    # best at 3; 4, 5 (equal is no improvement), 6 without improvement: stopped after 6
    assert sorted(tr.validated) == [1, 2, 3, 4, 5, 6]
    assert summary["best_epoch"] == 3 and summary["best_val"] == 0.5
    assert summary["stopped_early"] is True and summary["epochs"] == 6
    assert len(tr.tested) == 1 and _same(tr.tested[0], tr.validated[3])
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["val/score"] for r in recs] == [SCORES[e] for e in range(1, 7)]
    assert [r["best_epoch"] for r in recs] == [1, 2, 3, 3, 3, 3]
    assert recs[-1]["test"] == 1.0 and "test" not in recs[0]
    best = load_best(out)
    assert best["epoch"] == 3 and _same(best["model"], tr.validated[3])
    st = load_checkpoint(out)
    assert st["done"] and st["epoch"] == 6 and st["selection"]["best_epoch"] == 3


def test_without_patience_the_budget_is_the_ceiling(tmp_path, toy_config):
    class NoPatience(Selecting):
        patience = None
        every = 3

    tr = NoPatience(toy_config(epochs=8), tmp_path / "run")
    summary = tr.fit()
    assert sorted(tr.validated) == [3, 6, 8]  # every 3 epochs and after the last
    assert summary["best_epoch"] == 8 and summary["stopped_early"] is False
    assert len(tr.tested) == 1 and _same(tr.tested[0], tr.validated[8])


def test_stopped_and_resumed_equals_uninterrupted(tmp_path, toy_config):
    ref = Selecting(toy_config(epochs=8), tmp_path / "ref")
    ref_summary = ref.fit()
    tr = Selecting(toy_config(epochs=8), tmp_path / "run")
    tr.stop_at = 4  # after epoch 4's validation (best 3, one bad)
    with pytest.raises(TrainingStopped):
        tr.fit()
    assert load_checkpoint(tmp_path / "run")["selection"]["bad"] == 1
    again = Selecting(toy_config(epochs=8), tmp_path / "run", resume=True)
    summary = again.fit()
    assert sorted(again.validated) == [5, 6]
    for key in ("best_epoch", "best_val", "stopped_early", "epochs", "test"):
        assert summary[key] == ref_summary[key], key
    assert _same(again.tested[0], ref.tested[0])
    assert _same(load_best(tmp_path / "run")["model"], load_best(tmp_path / "ref")["model"])


def test_crash_after_a_new_best_resumes_to_the_same_selection(tmp_path, toy_config, monkeypatch):
    """best.pt written at epoch 3, the last checkpoint after epoch 2: the resumed run redoes
    epoch 3 and selects the same weights."""
    ref = Selecting(toy_config(epochs=8, checkpoint_every=2), tmp_path / "ref")
    ref.fit()
    orig = Selecting.compute_loss

    def crash(self, epoch, step):
        if epoch == 3 and step == 1:  # epoch 4 (0-based 3): after epoch 3's new best
            raise RuntimeError("power cut")
        return orig(self, epoch, step)

    monkeypatch.setattr(Selecting, "compute_loss", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        Selecting(toy_config(epochs=8, checkpoint_every=2), tmp_path / "run").fit()
    assert load_best(tmp_path / "run")["epoch"] == 3
    assert load_checkpoint(tmp_path / "run")["selection"]["best_epoch"] == 2
    monkeypatch.setattr(Selecting, "compute_loss", orig)
    again = Selecting(toy_config(epochs=8, checkpoint_every=2), tmp_path / "run", resume=True)
    summary = again.fit()
    assert summary["best_epoch"] == 3 and _same(again.tested[0], ref.tested[0])


def test_best_file_is_checked(tmp_path, toy_config):
    Selecting(toy_config(epochs=3), tmp_path / "run").fit()
    path = tmp_path / "run" / BEST
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged|cannot read"):
        load_best(tmp_path / "run")
    with pytest.raises(ValueError, match="no best.pt"):
        load_best(tmp_path)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"every": 0}, "selection every: expected an integer >= 1"),
        ({"patience": 0}, "selection patience: expected an integer >= 1 or none"),
        ({"mode": "up"}, "selection mode: expected max or min"),
    ],
)
def test_bad_rules(kw, match):
    with pytest.raises(ValueError, match=match):
        SelectionRule("score", **kw)


def test_missing_metric_is_named(tmp_path, toy_config):
    class Wrong(Selecting):
        def selection_rule(self):
            return SelectionRule("ndcg@10")

    with pytest.raises(KeyError, match="without the selection metric 'ndcg@10'"):
        Wrong(toy_config(epochs=2), tmp_path / "run").fit()
