"""``loss.memory_bank``: the trainer's queue of negatives -- the same as passing them by hand,
FIFO across a resume, in the checkpoint, and refused where it cannot apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otcl.pipelines.config import apply_overrides
from otcl.pipelines.engine.checkpoint import load_checkpoint
from otcl.pipelines.engine.memory import build_bank
from otcl.pipelines.engine.stops import TrainingStopped
from otcl.pipelines.ssl.trainer import SSLTrainer

K = 48  # 1.5 batches of 32: the queue wraps around within the first epoch


def _bank_config(tiny_config, loss="infonce", size=K):
    cfg = apply_overrides(tiny_config(), [f"loss.memory_bank={size}", f"loss.name={loss}"])
    cfg.optim.lr = 0.3
    return cfg


class ByHand(SSLTrainer):
    """No bank: the step passes the last K second-view projections of earlier steps by hand."""

    def build(self):
        super().build()
        history: list[torch.Tensor] = []
        loss = self.loss_fn

        def call(z1, z2, **kw):
            if history:
                kw["negatives"] = torch.cat(history)[-K:]
            out = loss(z1, z2, **kw)
            history.append(z2.detach().clone())
            return out

        self.loss_call = call


@pytest.mark.parametrize("loss", ["infonce", "gca-uot"])
def test_bank_equals_negatives_passed_by_hand(tmp_path, tiny_config, weights, loss):
    cfg = _bank_config(tiny_config, loss)
    bank = SSLTrainer(cfg, tmp_path / "bank")
    bank.fit()
    plain = tiny_config()
    plain.loss.name, plain.optim.lr = loss, 0.3
    by_hand = ByHand(plain, tmp_path / "hand")
    by_hand.fit()
    without = SSLTrainer(plain, tmp_path / "none")
    without.fit()
    a, b, c = weights(bank.model), weights(by_hand.model), weights(without.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the negatives changed the training
    assert len(bank.memory_bank) == K and bank.memory_bank.queue.shape == (K, 8)


def test_interrupted_and_resumed_equals_uninterrupted_bit_exact(
    tmp_path, tiny_config, weights, assert_same_weights
):
    cfg = _bank_config(tiny_config)
    ref = SSLTrainer(cfg, tmp_path / "ref")
    ref.fit()

    class StopMidEpoch(SSLTrainer):
        def train_step(self, epoch, step):
            if self.global_step == 4:  # epoch 2, step 2: the queue has wrapped around
                self.request_stop("test")
            return super().train_step(epoch, step)

    with pytest.raises(TrainingStopped):
        StopMidEpoch(cfg, tmp_path / "run").fit()
    st = load_checkpoint(tmp_path / "run")
    assert st["global_step"] == 5
    assert int(st["memory_bank"]["filled"]) == K and int(st["memory_bank"]["ptr"]) == 5 * 32 % K
    resumed = SSLTrainer(cfg, tmp_path / "run", resume=True)
    assert torch.equal(resumed.memory_bank.queue, st["memory_bank"]["queue"])
    resumed.fit()
    assert_same_weights(weights(resumed.model), weights(ref.model))
    assert torch.equal(resumed.memory_bank(), ref.memory_bank())  # same FIFO order


class NoNegatives(nn.Module):
    def forward(self, z1, z2):
        return (z1 - z2).pow(2).mean()


class AnyKeywords(nn.Module):
    def forward(self, z1, z2, **kw):
        return (z1 - z2).pow(2).mean()


def test_a_loss_without_negatives_is_one_clear_error():
    with pytest.raises(
        ValueError, match=r"loss.memory_bank: the loss 'mine' .* takes no negatives="
    ):
        build_bank(NoNegatives(), "mine", 16, 4, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="divisible by the 3 processes"):
        build_bank(AnyKeywords(), "x", 16, 4, 3, torch.device("cpu"))


@pytest.mark.parametrize("value", [-1, "4096x"])
def test_bad_sizes_are_refused(tmp_path, tiny_config, value):
    cfg = tiny_config()
    if isinstance(value, str):
        with pytest.raises(ValueError, match="memory_bank"):
            apply_overrides(cfg, [f"loss.memory_bank={value}"])
        return
    cfg.loss.memory_bank = value
    with pytest.raises(ValueError, match=r"loss.memory_bank: expected an integer >= 0"):
        SSLTrainer(cfg, tmp_path / "run")


def test_recsys_refuses_the_bank(tmp_path, ml_dir):
    from otcl.pipelines.recsys.config import RecsysConfig
    from otcl.pipelines.recsys.trainer import RecsysTrainer

    cfg = RecsysConfig()
    cfg.data.data_dir = str(ml_dir)
    cfg.loss.memory_bank = 64
    with pytest.raises(ValueError, match="loss.memory_bank: not supported by RecsysTrainer"):
        RecsysTrainer(cfg, tmp_path / "run")
