"""The global-batch losses on the real backend: run under ``torchrun``, compare and time.

On a GPU machine this checks that the NCCL path runs and reports its throughput next to the
single-process path, at the loss level (NCCL on CUDA, gloo on CPU): each loss is built with
``gather_distributed=True`` and without, on the same embeddings, and the time of a forward +
backward is reported for both. (``otcl train`` under torchrun is timed by the GPU suite's
``multigpu`` section, docs/gpu.md.)

* world size 1: the values and gradients must agree (one rank's global batch is its local
  batch; the losses skip the collectives there, so this checks the set-up, not NCCL's speed);
* world size 2 on the one GPU ("if it allows": NCCL may refuse two ranks on one device): the
  gathered loss couples both ranks' batches through all-gathers and all-reduces each Sinkhorn
  iteration, so the difference of the two times is the communication's cost. (Its values are
  checked against one process on the concatenated batch by the CPU tests, with gloo.)

Usage::

    torchrun --standalone --nproc-per-node 1 benchmarks/distributed_loss_check.py \\
        --device cuda --pairs 4096 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

import otcl  # noqa: E402


def _timed(fn, device: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--losses", default="infonce,gca-uot,gca-ince")
    p.add_argument("--pairs", type=int, default=1024, help="pairs (N) per rank")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", help="write the results here (rank 0)")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("run me under torchrun (see --help)")
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    if args.device == "cuda":  # several ranks may share the one GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    g = torch.Generator().manual_seed(rank)
    z1 = torch.randn(args.pairs, args.dim, generator=g).to(args.device).requires_grad_()
    z2 = torch.randn(args.pairs, args.dim, generator=g).to(args.device).requires_grad_()
    out: dict = {
        "backend": dist.get_backend(),
        "world_size": dist.get_world_size(),
        "device": args.device,
        "n": args.pairs,
        "dim": args.dim,
        "losses": {},
    }
    for name in [s.strip() for s in args.losses.split(",") if s.strip()]:
        row = {}
        grads = {}
        for mode in (False, True):
            loss = otcl.losses.build(name, gather_distributed=mode, check_inputs=False)

            def step(loss=loss):
                z1.grad = z2.grad = None
                v = loss(z1, z2)
                v.backward()
                return v

            v = step()
            grads[mode] = (v.detach().double().item(), z1.grad.detach().clone())
            key = "gathered" if mode else "local"
            row[f"{key}_ms"] = 1e3 * _timed(step, args.device, args.repeats)
        if out["world_size"] == 1:  # the global batch is the local one
            (v0, g0), (v1, g1) = grads[False], grads[True]
            row["value_diff"] = abs(v0 - v1)
            row["agree"] = row["value_diff"] <= 1e-5 * max(1.0, abs(v0)) and torch.allclose(
                g0, g1, rtol=1e-4, atol=1e-6
            )
        out["losses"][name] = row
        if rank == 0:
            agree = f", agree {row['agree']}" if "agree" in row else ""
            print(
                f"{name}: local {row['local_ms']:.2f} ms, gathered {row['gathered_ms']:.2f} ms"
                f"{agree} (world size {out['world_size']}, {out['backend']})",
                flush=True,
            )
    if rank == 0 and args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    dist.destroy_process_group()
    return 0 if all(r.get("agree", True) for r in out["losses"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
