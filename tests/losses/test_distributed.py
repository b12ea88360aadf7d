"""``gather_distributed=True`` with 2 gloo processes equals one process on the concatenated batch.

Every registered loss, both layouts, identity / labels / custom targets, extra negatives, every
solver path (exp and log domains, fused and autograd backward, implicit, detach) and DMM (also
its public pieces: sample, mix_with, dmm_term, total): the
loss value on every rank equals the single-process loss of the global batch, and the gradient of
every rank's embeddings equals the single-process gradient of its rows (float64, 1e-8).
The two processes are started once for the whole module (a few seconds).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

import otcl
from otcl.losses import build
from otcl.losses.mixing import Mixed
from tests.losses._gloo import spawn_ranks

WORLD = 2
N_LOCAL = 4  # pairs per rank
D = 3
K_LOCAL = 2  # extra negatives per rank


def _data():
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_LOCAL
    z1 = torch.randn(n, D, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(n, D, generator=g, dtype=torch.float64)
    neg = torch.randn(WORLD * K_LOCAL, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    return z1, z2, neg, labels


def _target(layout: str, n: int) -> torch.Tensor:
    """A global custom target (domain blocks) of the layout."""
    domains = torch.arange(n) % 3
    return otcl.losses.domain_target(domains, alpha=0.3, beta=0.1, layout=layout).double()


def _cases():
    """(id, loss name, parameters, target kind, with extra negatives)."""
    out = []
    for name in otcl.losses.available():
        hard = name in ("dcl", "hcl", "ot-hard")
        for layout in ("simclr", "cross"):
            p = {"layout": layout}
            if name == "dmm":
                p = {"layout": layout, "warmup": 0.0, "seed": 3, "partner": "random"}
            if name == "ot-hard":
                p["tol"] = 0.0  # fixed iterations: the same arithmetic in both runs
            targets = ["identity", "labels"] + ([] if hard or name == "dmm" else ["target"])
            for kind in targets:
                q = dict(p)
                if kind == "labels" and name in ("dcl", "hcl"):
                    q["tau_plus"] = 0.0  # labels and debiasing exclude each other
                out.append((f"{name}-{layout}-{kind}", name, q, kind, False))
            out.append((f"{name}-{layout}-negatives", name, dict(p), "identity", True))
    solver = [
        ("gca-ince", {"domain": "log"}),
        ("gca-ince", {"backward": "autograd"}),
        ("gca-ince", {"grad": "implicit", "iters": 200}),
        ("gca-uot", {"grad": "implicit", "iters": 200}),
        ("gca-rince", {"grad": "detach"}),
        ("gca-uot", {"domain": "log", "backward": "autograd"}),
        ("iot-uni", {"domain": "log"}),
        ("iot-uni", {"layout": "cross", "domain": "log"}),
        ("iot", {"relax": "both"}),
        ("ot", {"constraint": "cols", "divergence": "rince"}),
        ("gca-ince", {"tol": 1e-6, "iters": 500}),
        ("ot-hard", {"coupling_grad": "unrolled", "layout": "cross", "tol": 0.0}),
        ("ot-hard", {"coupling_grad": "implicit", "tol": 1e-12, "iters": 300}),
        ("rince", {"temperature": 2e-3}),  # the RINCE terms beyond the float range
        ("dmm", {"warmup": 0.0, "seed": 1, "pair_loss": "triplet", "base": "gca-uot"}),
        ("dmm", {"warmup": 0.0, "seed": 2, "both_views": True, "repel_close_positives": True}),
    ]
    for i, (name, p) in enumerate(solver):
        out.append((f"{name}-solver{i}", name, p, "identity", False))
    # DMM's public pieces as a pipeline calls them: sample, mix_with, dmm_term, total
    out.append(
        ("dmm-mix_with", "dmm", {"warmup": 0.0, "seed": 4, "partner": "random"}, "mix", False)
    )
    return out


CASES = _cases()


def _run(name, params, kind, with_neg, z1, z2, neg, labels, distributed):
    loss_fn = build(name, gather_distributed=distributed, **params)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    extra = {}
    if kind == "labels":
        extra["labels"] = labels
    elif kind == "target":
        layout = params.get("layout", "simclr")
        extra["target"] = _target(layout, WORLD * N_LOCAL)
    if with_neg:
        extra["negatives"] = neg.clone().requires_grad_()
    if kind == "mix":
        lam, perm = loss_fn.sample(a.shape[0])
        mixed = Mixed(loss_fn.mix_with(a, lam, perm, name="a"), lam, perm)
        val = loss_fn.total(loss_fn.dmm_term(mixed, b))
    else:
        val = loss_fn(a, b, **extra)
    val.backward()
    grads = [a.grad, b.grad] + ([extra["negatives"].grad] if with_neg else [])
    return val.detach(), grads


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    z1, z2, neg, labels = _data()
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    nrows = slice(rank * K_LOCAL, (rank + 1) * K_LOCAL)
    results = {}
    for cid, name, params, kind, with_neg in CASES:
        try:
            results[cid] = _run(
                name, params, kind, with_neg, z1[rows], z2[rows], neg[nrows], labels[rows], True
            )
        except Exception as e:  # reported by the test, not a hang
            results[cid] = repr(e)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results():
    return spawn_ranks(_worker, WORLD)


@pytest.mark.parametrize("cid,name,params,kind,with_neg", CASES, ids=[c[0] for c in CASES])
def test_global_batch_equals_one_process(distributed_results, cid, name, params, kind, with_neg):
    z1, z2, neg, labels = _data()
    ref_val, ref_grads = _run(name, params, kind, with_neg, z1, z2, neg, labels, False)
    for rank, res in enumerate(distributed_results):
        got = res[cid]
        assert not isinstance(got, str), f"rank {rank}: {got}"
        val, grads = got
        torch.testing.assert_close(val, ref_val, rtol=1e-8, atol=1e-10)
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        nrows = slice(rank * K_LOCAL, (rank + 1) * K_LOCAL)
        for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
            part = r[nrows] if i == 2 else r[rows]
            torch.testing.assert_close(g, part, rtol=1e-8, atol=1e-10, msg=f"rank {rank} grad {i}")


def test_single_process_ignores_gather_distributed(make_pairs):
    """Without torch.distributed (or with one rank) the flag changes nothing."""
    z1, z2 = make_pairs(n=6, d=4)
    for name in ("gca-uot", "hcl", "dmm"):
        torch.testing.assert_close(
            build(name, gather_distributed=True)(z1, z2), build(name)(z1, z2), rtol=0, atol=0
        )
