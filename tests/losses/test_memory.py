"""MemoryBank: a FIFO queue of past embeddings as negatives, saved in state_dict, DDP-aware."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from otcl.losses import MemoryBank, build
from tests.losses._gloo import spawn_ranks

WORLD, N_LOCAL, D, SIZE, STEPS = 2, 3, 4, 10, 4


def _batches(steps=STEPS, n=WORLD * N_LOCAL):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        z1 = torch.randn(n, D, generator=g, dtype=torch.float64)
        out.append((z1, z1 + 0.5 * torch.randn(n, D, generator=g, dtype=torch.float64)))
    return out


def test_fifo_order_wraps_and_keeps_the_newest():
    bank = MemoryBank(size=5, dim=1)
    assert bank() is None and len(bank) == 0
    rows = [torch.arange(i, i + 2, dtype=torch.float32).unsqueeze(-1) for i in (0, 2, 4)]
    bank.update(rows[0])
    assert bank().flatten().tolist() == [0, 1]
    bank.update(rows[1])
    bank.update(rows[2])  # 6 rows into 5: the oldest (0) is dropped
    assert bank().flatten().tolist() == [1, 2, 3, 4, 5] and len(bank) == 5
    bank.update(torch.arange(10.0, 17.0).unsqueeze(-1))  # a batch larger than the queue
    assert bank().flatten().tolist() == [12, 13, 14, 15, 16]
    bank.reset()
    assert bank() is None


def test_update_is_detached_and_the_negatives_are_a_copy():
    bank = MemoryBank(size=4, dim=2)
    z = torch.randn(3, 2, requires_grad=True)
    bank.update(z * 2)
    neg = bank()
    assert not neg.requires_grad
    bank.update(torch.zeros(3, 2))  # the returned tensor does not change under it
    torch.testing.assert_close(neg, (z * 2).detach())


def test_state_dict_round_trip_resumes_the_same_queue():
    a = MemoryBank(size=7, dim=D)
    for z1, _ in _batches(3):
        a.update(z1)
    assert set(a.state_dict()) == {"queue", "ptr", "filled"}
    b = MemoryBank(size=7, dim=D)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(), a(), rtol=0, atol=0)
    nxt = torch.randn(2, D)
    a.update(nxt)
    b.update(nxt)
    torch.testing.assert_close(b(), a(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["infonce", "gca-uot", "hcl"])
def test_bank_equals_the_same_negatives_by_hand(name):
    loss_fn = build(name)
    bank, seen = MemoryBank(size=SIZE, dim=D, dtype=torch.float64), []
    for z1, z2 in _batches():
        by_hand = torch.cat(seen)[-SIZE:] if seen else None
        got, want = loss_fn(z1, z2, negatives=bank()), loss_fn(z1, z2, negatives=by_hand)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        bank.update(z2)
        seen.append(z2)


def test_bad_input():
    with pytest.raises(ValueError, match="size: expected an integer >= 1, got 0"):
        MemoryBank(size=0, dim=3)
    with pytest.raises(ValueError, match="gather_distributed: expected a bool"):
        MemoryBank(size=2, dim=3, gather_distributed="no")
    with pytest.raises(ValueError, match=r"z: expected a tensor of shape \(B, 3\), got \(2, 4\)"):
        MemoryBank(size=2, dim=3).update(torch.randn(2, 4))


# -- 2 gloo processes = 1 process with the global batch ---------------------------------------
def _steps(rank, world):
    """Per step: the loss value, the gradient of this rank's z1 rows, and the queue after."""
    loss_fn = build("infonce", gather_distributed=world > 1)
    bank = MemoryBank(size=SIZE, dim=D, dtype=torch.float64)
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL) if world > 1 else slice(None)
    out = []
    for z1, z2 in _batches():
        a = z1[rows].clone().requires_grad_()
        val = loss_fn(a, z2[rows], negatives=bank(share=True))
        val.backward()
        bank.update(z2[rows])
        out.append((val.detach(), a.grad, bank().clone()))
    return out


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.save(_steps(rank, WORLD), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process_with_the_global_batch():
    ranks = spawn_ranks(_worker, WORLD)
    one = _steps(0, 1)
    for step, (val, grad, queue) in enumerate(one):
        for r, res in enumerate(ranks):
            r_val, r_grad, r_queue = res[step]
            torch.testing.assert_close(r_queue, queue, rtol=0, atol=0)  # the same queue
            torch.testing.assert_close(r_val, val, rtol=1e-10, atol=1e-12)
            rows = slice(r * N_LOCAL, (r + 1) * N_LOCAL)
            torch.testing.assert_close(r_grad, grad[rows], rtol=1e-8, atol=1e-10)
    assert one[-1][2].shape == (SIZE, D)  # the queue wrapped
