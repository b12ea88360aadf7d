"""The global-batch OT loss under ``torch.distributed`` against the per-rank local loss.

Two processes (gloo, CPU, one torch thread each: one core per process) each hold N pairs of
embeddings (N, d). For every loss and N, one *call* is a forward + backward of

* ``local``: the loss of this rank's N pairs alone (``gather_distributed=False``: what each GPU
  computes in the official GCA code -- negatives and coupling from the local batch only);
* ``global``: the loss of the global batch of 2N pairs (``gather_distributed=True``: the
  embeddings all-gathered with gradients, the row-sharded Sinkhorn all-reducing the column
  potential's sums every iteration, see ``docs/distributed.md``);
* ``one process``: the same global loss computed by one process on the 2N pairs (rank 0, one
  thread, while rank 1 waits): what the two processes replace.

Each call starts after a barrier, and its time is the slower rank's (one all-reduce of the two
times, outside the timing). Calls of the three kinds are interleaved round-robin in every
repeat, so machine noise hits them alike; the table reports medians and the ratio to ``local``.

**Communication share**: during the ``global`` calls the collectives the loss issues
(``all_reduce``, ``all_gather_into_tensor``, ``reduce_scatter_tensor``, ``all_to_all``,
``broadcast``) are timed by wrappers; the share is their time over the call's time (median over
repeats, rank 0). Gloo's collectives are synchronous on CPU, so the time inside them includes
the wait for the other rank (load imbalance), not only the transfer.

Usage::

    python benchmarks/distributed_speed.py                 # N = 256, 512, 1024 per rank
    python benchmarks/distributed_speed.py --sizes 128 --repeats 3 --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, replace_section, versions  # noqa: E402

WORLD = 2
LOSSES = ("infonce", "gca-ince", "gca-uot")
COLLECTIVES = (
    "all_reduce",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "all_to_all",
    "broadcast",
)
KINDS = ("local", "global", "one process")


class CommTimer:
    """Wraps torch.distributed's collectives: ``seconds`` accumulates the time spent inside
    them while ``on`` is set (the library looks them up on the module at every call)."""

    def __init__(self) -> None:
        self.on = False
        self.seconds = 0.0
        self.calls = 0
        for name in COLLECTIVES:
            setattr(dist, name, self._wrap(getattr(dist, name)))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return timed


def _embeddings(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g)
    return z1, z1 + 0.5 * torch.randn(n, d, generator=g)


def _call(loss: torch.nn.Module, z1: torch.Tensor, z2: torch.Tensor) -> None:
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss(a, b).backward()


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _worker(rank: int, port: int, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)  # fmt: skip
    timer = CommTimer()
    rows = []
    for n in args.sizes:
        z1, z2 = _embeddings(WORLD * n, args.dim, seed=n)  # the global batch
        mine = slice(rank * n, (rank + 1) * n)
        for name in args.losses:
            losses = {
                "local": otcl.losses.build(name),
                "global": otcl.losses.build(name, gather_distributed=True),
            }
            times: dict[str, list[float]] = {k: [] for k in KINDS}
            shares, calls = [], 0
            for rep in range(args.warmup + args.repeats):
                order = KINDS[rep % 3 :] + KINDS[: rep % 3]
                for kind in order:
                    dist.barrier()
                    timer.seconds, timer.calls = 0.0, 0
                    t0 = time.perf_counter()
                    if kind == "one process":
                        if rank == 0:
                            _call(losses["local"], z1, z2)  # the whole global batch
                    else:
                        timer.on = kind == "global"
                        _call(losses[kind], z1[mine], z2[mine])
                        timer.on = False
                    own = time.perf_counter() - t0
                    t = _slowest(own)
                    if rep >= args.warmup:
                        times[kind].append(t)
                        if kind == "global" and rank == 0:
                            shares.append(timer.seconds / own)
                            calls = timer.calls
            if rank == 0:
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append(
                    {
                        "loss": name,
                        "n": n,
                        **{f"{k}_ms": 1e3 * v for k, v in med.items()},
                        "comm_share": statistics.median(shares),
                        "collectives": calls,
                    }
                )
                print(
                    f"{name} N={n}: local {1e3 * med['local']:.1f} ms, global "
                    f"{1e3 * med['global']:.1f} ms ({med['global'] / med['local']:.2f}x, "
                    f"{100 * statistics.median(shares):.0f}% in {calls} collectives), one "
                    f"process 2N {1e3 * med['one process']:.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def run(args: argparse.Namespace) -> list[dict]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(port, args, queue), nprocs=WORLD, start_method="spawn")
    return queue.get()


def section(rows: list[dict], args: argparse.Namespace, load: tuple[float, float]) -> str:
    torch.set_num_threads(1)
    lines = [
        "## Global-batch loss on 2 processes, cpu",
        "",
        f"`python benchmarks/distributed_speed.py --sizes {','.join(map(str, args.sizes))} "
        f"--repeats {args.repeats}` on {datetime.date.today()}: 2 processes (gloo, one torch "
        f"thread each), d = {args.dim}, forward + backward, median of {args.repeats} repeats "
        f"(slower rank of each call). Machine: {machine('cpu')}. {versions()}. Load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after, on 2 cores shared with other jobs: the "
        "absolute times are upper bounds, read the ratios (measured side by side, round-robin).",
        "",
        "| loss | N per rank | local (ms) | global (ms) | global / local | in collectives "
        "| one process, 2N (ms) | one process / global |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['loss']} | {r['n']} | {r['local_ms']:.1f} | {r['global_ms']:.1f} | "
            f"{r['global_ms'] / r['local_ms']:.2f} | {100 * r['comm_share']:.0f}% "
            f"({r['collectives']} calls) | {r['one process_ms']:.1f} | "
            f"{r['one process_ms'] / r['global_ms']:.2f} |"
        )
    lines += [
        "",
        "`local`: each rank's loss of its own N pairs (negatives and coupling from the local "
        "batch, as the official GCA code); `global`: `gather_distributed=True`, the loss of the "
        "2N pairs (each rank its 2N x 4N block of the simclr layout); `one process, 2N`: the "
        "same global loss in one process. `in collectives`: time inside torch.distributed calls "
        "over the call's time on rank 0, waiting for the other rank included.",
        "",
        "How to read it: each rank's block of the global loss is twice as wide as its local "
        "block, so with two free cores `global / local` tends to 2 plus the collectives' share "
        "(one all-gather of the embeddings, one or two all-reduces of a column vector per "
        "Sinkhorn iteration and the same in the backward: latency-bound at small N, a few per "
        "cent at large N), and `one process / global` to 2 minus it (the speed-up of splitting "
        "the global batch). On a loaded machine two processes do not get two free cores and "
        "`one process / global` stays near 1; the share in collectives then also holds the "
        "wait for the other rank.",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256,512,1024", help="pairs per rank, comma-separated")
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.losses = [s for s in args.losses.split(",") if s]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    before = os.getloadavg()[0]
    rows = run(args)
    text = section(rows, args, (before, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        replace_section(Path(args.out), "distributed_speed:cpu", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
