"""The GPU benchmark suite in one command: every section, within a wall-time budget.

One run (``--budget-s``, default 540 s: it fits a 10-minute slot of a shared GPU) runs:

1. ``loss``  -- ``loss_speed.py`` on CUDA at N = 4096 and 8192, d = 128, 20 Sinkhorn
   iterations, bf16 embeddings: every loss and the implicit variants against InfoNCE, time and
   peak memory, plus the top kernels of one call of infonce, gca-uot and gca-uot[implicit].
2. ``train`` -- ``train_speed.py``: ResNet-18 on CIFAR-10, batch 512, bf16 autocast,
   channels_last, ``torch.compile``; plain loop, infonce and gca-uot; views/s after warm-up and
   the compile time.
3. ``syncs`` -- ``graph_breaks.py`` on CUDA: graph breaks and device syncs of each loss and of
   a trainer step (``torch.cuda.set_sync_debug_mode``).
4. ``multigpu`` -- the multi-GPU check on one GPU: the global-batch losses under ``torchrun``
   (NCCL) with 1 and 2 ranks, and a world-size-1 ``torchrun`` training next to the
   single-process one.
5. ``streaming`` -- ``streaming.py`` on CUDA at N = 8192, 32768 and 65,536 pairs (the simclr
   layout: up to 131,072 x 131,072 scores), d = 128: dense vs streaming gca-uot and InfoNCE,
   peak memory, time, passes and time per pass (the dense path where it fits).
6. ``accuracy`` -- the rest of the budget: the CIFAR-10 protocol (``gpu_accuracy.py``), resumed
   from ``--resume-from`` and continued in ``$OUT/state`` (the next run resumes from it).

Each section has a time budget (``--section-budget NAME=SECONDS``) and is stopped cleanly when
it is spent; the accuracy section gets what the others leave. So the suite suits preemptible
or time-sliced GPUs: each run does what its budget allows, and the next run continues the
protocol. Results and logs go to ``--out`` (default ``$OUT``), in at most 8 files (easy to copy
back from a remote machine)::

    summary.json      every section's status, time, numbers and Markdown (for record_gpu.py)
    summary.md        the same for people
    logs.tar.gz       every log and raw result file
    state/            queue.json + the compact checkpoint of the run in progress (<= 4 parts)

``--dry-run`` runs every section on the CPU at tiny sizes (digits instead of CIFAR-10), in
seconds, so the script cannot fail on the GPU for a typo (tests/benchmarks/test_gpu_suite.py).
How to run it, resume it and record the figures: docs/gpu.md.

The parts: ``_suite_run`` (:class:`Suite`, one run's state and clock), ``_suite_sections``
(the sections) and ``_suite_summary`` (``summary.md``); their names are this module's too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH))

import _children  # noqa: E402
import gpu_accuracy  # noqa: E402
from _suite_run import (  # noqa: E402
    BUDGETS,
    DRY_BUDGETS,
    PACK_RESERVE_S,
    SUMMARY_FORMAT,
    Suite,
    git_commit,
    gpu_line,
    make_tiny_cifar,
    stable_path,
)
from _suite_sections import (  # noqa: E402
    section_accuracy,
    section_loss,
    section_multigpu,
    section_streaming,
    section_syncs,
    section_train,
)
from _suite_summary import finding_lines, render_summary, status_table  # noqa: E402

__all__ = [
    "ACCURACY_MIN_S",
    "BUDGETS",
    "DATA_DEFAULT",
    "DRY_BUDGETS",
    "PACK_RESERVE_S",
    "SECTIONS",
    "SUMMARY_FORMAT",
    "Suite",
    "finding_lines",
    "git_commit",
    "gpu_line",
    "main",
    "make_tiny_cifar",
    "parse_args",
    "render_summary",
    "section_accuracy",
    "section_loss",
    "section_multigpu",
    "section_streaming",
    "section_syncs",
    "section_train",
    "stable_path",
    "status_table",
]

SECTIONS = ("loss", "train", "syncs", "multigpu", "streaming", "accuracy")
ACCURACY_MIN_S = {"gpu": 60.0, "dry": 5.0}
DATA_DEFAULT = ROOT / ".data" / "cifar10-jpeg.tar.gz"


# -- main ----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="docs/gpu.md: running, resuming, the sections and their targets, recording.",
    )
    p.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default $OUT)")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-time budget (default 540)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--section-budget",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="override a section's budget (loss, train, syncs, multigpu, streaming)",
    )
    p.add_argument("--resume-from", help="the state folder of the previous run (.gpu-state)")
    p.add_argument("--data", default=str(DATA_DEFAULT), help="CIFAR-10 ImageFolder .tar.gz")
    p.add_argument("--commit", help="the commit being measured (default: git, if present)")
    p.add_argument("--procs", type=int, help="accuracy processes at once (default: measured)")
    p.add_argument("--no-measure", action="store_true", help="do not measure concurrency")
    p.add_argument("--state-limit-mib", type=float, default=40.0, help="kept checkpoints")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, digits: seconds")
    p.add_argument("--acc-stop-after-steps", type=int, help=argparse.SUPPRESS)  # tests
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.out:
        p.error("--out: not given and $OUT is not set")
    wanted = [x.strip() for x in args.sections.split(",") if x.strip()]
    bad = [x for x in wanted if x not in SECTIONS]
    if bad:
        p.error(f"--sections: unknown {', '.join(bad)}; expected from {', '.join(SECTIONS)}")
    args.wanted = wanted
    if args.resume_from and not (Path(args.resume_from) / gpu_accuracy.LEDGER).exists():
        print(f"note: --resume-from {args.resume_from} holds no ledger: a new protocol starts")
        args.resume_from = None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    s = Suite(args)
    s.log(
        f"gpu suite: budget {args.budget_s:.0f} s, sections {','.join(args.wanted)}, work {s.work}"
    )
    if not s.dry:
        import torch

        if not torch.cuda.is_available():
            s.log("no CUDA device: use --dry-run on a machine without a GPU")
            return 2
    _children.start_server()  # every section's process forks from it (torch imported once)
    if {"train", "multigpu", "accuracy"} & set(args.wanted):
        s.start_data_prep()
    runners = {
        "loss": section_loss,
        "train": section_train,
        "syncs": section_syncs,
        "multigpu": section_multigpu,
        "streaming": section_streaming,
    }
    fixed = [name for name in SECTIONS[:-1] if name in args.wanted]
    if s.dry:  # CPU only: the sections at once (on a GPU they share it: one by one)
        with ThreadPoolExecutor(len(fixed) or 1) as pool:
            futures = {name: pool.submit(runners[name], s, s.budgets[name]) for name in fixed}
            entries = {name: f.result() for name, f in futures.items()}
        for name in fixed:
            s.record(name, entries[name])
    for name in fixed if not s.dry else ():
        budget = min(s.budgets[name], s.left())
        if budget <= 1:
            s.record(name, {"status": "skipped: no time left", "seconds": 0.0})
            continue
        s.log(f"section {name}: budget {budget:.0f} s")
        s.record(name, runners[name](s, budget))
    if "accuracy" in args.wanted:
        budget = s.left()
        if budget < ACCURACY_MIN_S["dry" if s.dry else "gpu"]:
            gpu_accuracy.copy_state(args.resume_from and Path(args.resume_from), s.out / "state")
            s.record("accuracy", {"status": f"skipped: {budget:.0f} s left", "seconds": 0.0})
        else:
            s.log(f"section accuracy: budget {budget:.0f} s")
            s.record("accuracy", section_accuracy(s, budget))
    else:
        gpu_accuracy.copy_state(args.resume_from and Path(args.resume_from), s.out / "state")
    if s.prep is not None and s.prep.poll() is None:
        _children.end(s.prep, 0.1)
    s.write()
    files = sorted(str(p.relative_to(s.out)) for p in s.out.rglob("*") if p.is_file())
    s.log(f"wrote {len(files)} file(s) to {s.out}: {', '.join(files)}")
    if len(files) > 8:
        s.log("WARNING: more than 8 files: the suite promises at most 8")
    shutil.rmtree(s.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
