"""Speed and peak memory of every otcl loss against InfoNCE, measured side by side.

For each batch size N (pairs; the default "simclr" layout couples 2N x 2N views) and every
method, one *call* is a forward + backward of the loss on fixed (N, d) embeddings requiring
grad. Calls are interleaved round-robin over the methods within each repeat (the order rotates
from repeat to repeat), so machine noise hits all methods alike; the table reports each
method's median time and its ratio to InfoNCE's median from the same run.

Methods:

* every named loss of ``otcl.losses.available()`` with its defaults, except ``iters`` set to
  ``--iters`` (20) where the loss has Sinkhorn iterations;
* ``name[implicit]``: the OT-coupling losses with ``grad="implicit"``;
* ``naive-unrolled``: a plain log-domain Sinkhorn loss written here (20 ``logsumexp`` row and
  column updates, autograd through all of them, cross-entropy of the plan), the
  straightforward implementation, measured earlier at 7.4x InfoNCE;
* ``pot-sinkhorn_log``: POT's ``ot.bregman.sinkhorn_log`` on the cost ``1 - cos`` (torch backend),
  **forward only** (skipped when POT is not installed).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one call minus the memory
allocated before it. On CPU, the growth of the process's peak resident set (``VmHWM`` after
resetting it through ``/proc/self/clear_refs``) during one call, measured in a separate process
started with glibc's mmap threshold pinned at 64 KiB so that freed tensors go back to the
operating system; it counts pages actually touched by the call (tensors, autograd buffers,
library workspaces), not the inputs.

The results go to a section of ``docs/benchmarks.md`` named after the device; rerunning on
another device replaces only that device's section. ``--json`` also writes every number as JSON
(rewritten after each N, so a run stopped early keeps the sizes it finished); ``--profile``
lists the kernels that take the time in one call of the named methods at the largest N;
``--dtype bf16`` feeds bf16 embeddings (what a bf16-autocast encoder produces).

Usage::

    python benchmarks/loss_speed.py                      # CPU, N = 256, 1024, 2048
    python benchmarks/loss_speed.py --sizes 256,1024,4096
    python benchmarks/loss_speed.py --device cuda        # N = 256, 1024, 4096, 8192
    python benchmarks/loss_speed.py --quick --out /tmp/bench.md
    python benchmarks/loss_speed.py --device cuda --sizes 4096,8192 --dtype bf16 \
        --json loss.json --profile infonce,gca-uot

The parts: ``_loss_methods`` (what is measured), ``_loss_measure`` (how) and ``_loss_report``
(the Markdown section and the JSON); their names are this module's too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loss_measure import (  # noqa: E402
    DTYPES,
    default_repeats,
    naive_fits,
    peak_memory,
    peak_memory_here,
    profile_kernels,
    time_methods,
)
from _loss_methods import (  # noqa: E402
    BASELINE,
    ITERATIVE,
    NAIVE,
    POT_NAME,
    TEMPERATURE,
    Method,
    all_labels,
    make_method,
    naive_unrolled_loss,
    pot_forward,
)
from _loss_report import (  # noqa: E402
    COUPLING_LOSSES,
    HEADER,
    PLACEHOLDER,
    TARGETS,
    interpret,
    render,
    render_profiles,
    update_doc,
    write_json,
)
from _report import machine, versions  # noqa: E402

__all__ = [
    "BASELINE",
    "COUPLING_LOSSES",
    "DEFAULT_SIZES",
    "DTYPES",
    "HEADER",
    "ITERATIVE",
    "NAIVE",
    "PLACEHOLDER",
    "POT_NAME",
    "TARGETS",
    "TEMPERATURE",
    "Method",
    "all_labels",
    "default_repeats",
    "interpret",
    "main",
    "make_method",
    "naive_fits",
    "naive_unrolled_loss",
    "parse_args",
    "peak_memory",
    "peak_memory_here",
    "pot_forward",
    "profile_kernels",
    "render",
    "render_profiles",
    "time_methods",
    "update_doc",
    "write_json",
]

DEFAULT_SIZES = {"cpu": "256,1024,2048", "cuda": "256,1024,4096,8192"}


# -- main ----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sizes", help="comma-separated N (pairs); default by device")
    p.add_argument("--iters", type=int, default=20, help="Sinkhorn iterations (default 20)")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension d (default 128)")
    p.add_argument(
        "--repeats",
        type=int,
        help="timed calls per method and N (default: CPU 21 / 15 / 7 for N <= 256 / 1024 / more; "
        "CUDA 20)",
    )
    p.add_argument(
        "--slow",
        type=float,
        default=2.0,
        help="seconds: a method whose warm-up call takes longer is timed 3 times (default 2)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per method first")
    p.add_argument("--losses", help="comma-separated methods (default: all); see --list")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--quick", action="store_true", help="N=256 only, 3 repeats (smoke test)")
    p.add_argument("--list", action="store_true", help="list the method names and exit")
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="fp32",
        help="dtype of the input embeddings (default fp32; bf16 = a bf16-autocast encoder's)",
    )
    p.add_argument("--json", help="also write every number as JSON here (after each N)")
    p.add_argument(
        "--profile",
        default="",
        help="comma-separated methods: list the top kernels of one call of each at the largest N",
    )
    p.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-no-warmup", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or "256"
        args.repeats = args.repeats or 3
        args.slow = min(args.slow, 0.5)
    args.sizes = [int(s) for s in (args.sizes or DEFAULT_SIZES[args.device]).split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.list:
        print("\n".join(all_labels(args.iters)))
        return 0
    if args.losses:  # (all_labels imports POT, which takes seconds)
        wanted = [s.strip() for s in args.losses.split(",") if s.strip()]
        labels = [BASELINE] + [w for w in wanted if w != BASELINE]
    else:
        labels = all_labels(args.iters)
    if args.memory_worker:
        methods = [make_method(lab, args.iters, args.device) for lab in labels]
        skip = set(filter(None, args.memory_no_warmup.split(",")))
        peaks = peak_memory_here(methods, args.sizes[0], args.dim, args.device, skip, args.dtype)
        print(json.dumps(peaks))
        return 0

    notes = {}
    results = {}
    used_repeats: dict[int, int] = {}
    t0 = time.perf_counter()
    for n in args.sizes:
        methods, skipped = [], {}
        for lab in labels:
            if lab == NAIVE and not naive_fits(n, args.iters, args.device):
                skipped[lab] = "skipped (memory)"
                continue
            m = make_method(lab, args.iters, args.device)
            notes[lab] = m.note
            methods.append(m)
        repeats = args.repeats or default_repeats(n, args.device)
        used_repeats[n] = repeats
        times, slow = time_methods(
            methods, n, args.dim, args.device, repeats, args.warmup, args.slow, args.dtype
        )
        med = {lab: statistics.median(ts) for lab, ts in times.items()}
        mem = {}
        if not args.no_memory:
            mem = peak_memory([m.label for m in methods], n, args, sorted(slow))
        results[n] = {"time": med, "mem": mem, "skipped": skipped, "slow": slow}
        base = med[BASELINE]
        print(f"N={n} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        for lab in labels:
            if lab in med:
                mm = f"  {mem[lab] / 2**20:8.1f} MiB" if lab in mem else ""
                print(f"  {lab:24s} {med[lab] * 1e3:9.2f} ms {med[lab] / base:6.2f}x{mm}")
        sys.stdout.flush()
        if args.json:
            write_json(Path(args.json), args, results, labels, used_repeats)
    profiles = {}
    if args.profile and results:
        n = max(results)
        for lab in [s.strip() for s in args.profile.split(",") if s.strip()]:
            try:  # auxiliary: a failure here must not lose the timings
                profiles[lab] = profile_kernels(make_method(lab, args.iters, args.device), n, args)
            except Exception as e:
                profiles[lab] = {"error": f"{type(e).__name__}: {e}", "n": n, "kernels": []}
                print(f"profile {lab}: {profiles[lab]['error']}", file=sys.stderr)
                continue
            print(f"profile {lab} at N={n}:", file=sys.stderr)
            for k in profiles[lab]["kernels"]:
                print(f"  {k['ms']:9.3f} ms  {k['calls']:5d}x  {k['name'][:90]}", file=sys.stderr)
        if args.json:
            write_json(Path(args.json), args, results, labels, used_repeats, profiles)

    given = sys.argv[1:] if argv is None else argv
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(args.device),
        "versions": versions(),
        "command": ("python benchmarks/loss_speed.py " + shlex.join(given)).strip(),
        "dim": args.dim,
        "iters": args.iters,
        "repeats": ", ".join(f"{r} at N={n}" for n, r in used_repeats.items()),
        "slow_s": args.slow,
        "warmup": args.warmup,
        "dtype": args.dtype,
    }
    section = render(args.device, results, labels, notes, meta)
    if profiles:
        section += "\n\n" + render_profiles(profiles)
    if args.no_write:
        print(section)
    else:
        update_doc(Path(args.out), args.device, section)
        print(f"wrote the {args.device} section of {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
