"""The streaming geometry under ``gather_distributed=True``: 2 gloo processes = 1 process.

Every OT loss (and ot-hard), both layouts, identity / labels / custom targets, extra negatives
and the solver paths (exp and log domains, unrolled, implicit, detach; balanced and unbalanced):
each rank keeps its rows against the global columns, tile by tile; the value on every rank equals
the single-process dense loss of the global batch and every rank's embeddings get their rows of
its gradient (float64, 1e-8). The two processes are started once for the module.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

import otcl
from otcl.losses import build
from tests.losses._gloo import spawn_ranks

WORLD = 2
N_LOCAL = 4
D = 3
K_LOCAL = 2
STREAM = {"geometry": "streaming", "tile_size": 3}  # 8 local rows (simclr): 3 + 3 + 2
OT_LOSSES = ["ot", "infonce", "iot", "iot-uni", "gca-ince", "gca-rince", "gca-uot", "rince"]


def _data():
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_LOCAL
    z1 = torch.randn(n, D, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(n, D, generator=g, dtype=torch.float64)
    neg = torch.randn(WORLD * K_LOCAL, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    return z1, z2, neg, labels


def _target(layout: str, n: int) -> torch.Tensor:
    domains = torch.arange(n) % 3
    return otcl.losses.domain_target(domains, alpha=0.3, beta=0.1, layout=layout).double()


def _cases():
    out = []
    for name in OT_LOSSES + ["ot-hard"]:
        for layout in ("simclr", "cross"):
            p = {"layout": layout} | ({"tol": 0.0, "iters": 20} if name == "ot-hard" else {})
            kinds = ["identity", "labels"] + ([] if name == "ot-hard" else ["target"])
            for kind in kinds:
                out.append((f"{name}-{layout}-{kind}", name, dict(p), kind, False))
            out.append((f"{name}-{layout}-negatives", name, dict(p), "identity", True))
    solver = [
        ("gca-ince", {"domain": "log"}),
        ("gca-ince", {"grad": "implicit", "iters": 200}),
        ("gca-uot", {"grad": "implicit", "iters": 200}),
        ("gca-uot", {"domain": "log", "layout": "cross"}),
        ("gca-rince", {"grad": "detach"}),
        ("iot-uni", {"domain": "log", "layout": "cross"}),
        ("iot", {"relax": "both"}),
        ("ot", {"constraint": "cols", "divergence": "rince"}),
        ("gca-ince", {"tol": 1e-6, "iters": 500}),
        ("ot-hard", {"coupling_grad": "unrolled", "layout": "cross", "tol": 0.0, "iters": 20}),
        ("ot-hard", {"coupling_grad": "implicit", "tol": 1e-12, "iters": 300}),
    ]
    for i, (name, p) in enumerate(solver):
        out.append((f"{name}-solver{i}", name, p, "identity", True))
    return out


CASES = _cases()


def _run(name, params, kind, with_neg, z1, z2, neg, labels, distributed, stream):
    loss_fn = build(name, gather_distributed=distributed, **params, **(STREAM if stream else {}))
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    extra = {}
    if kind == "labels":
        extra["labels"] = labels
    elif kind == "target":
        extra["target"] = _target(params.get("layout", "simclr"), WORLD * N_LOCAL)
    if with_neg:
        extra["negatives"] = neg.clone().requires_grad_()
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
                name, params, kind, with_neg, z1[rows], z2[rows], neg[nrows], labels[rows],
                True, True,
            )  # fmt: skip
        except Exception as e:  # reported by the test, not a hang
            results[cid] = repr(e)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results():
    return spawn_ranks(_worker, WORLD)


@pytest.mark.parametrize("cid,name,params,kind,with_neg", CASES, ids=[c[0] for c in CASES])
def test_two_processes_equal_one(distributed_results, cid, name, params, kind, with_neg):
    z1, z2, neg, labels = _data()
    ref_val, ref_grads = _run(name, params, kind, with_neg, z1, z2, neg, labels, False, False)
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
