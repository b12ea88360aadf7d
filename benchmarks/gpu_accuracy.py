"""Section 5 of the GPU suite: the CIFAR-10 accuracy protocol, resumable across suite runs.

The protocol: every loss of :data:`PROTOCOL` trained with one fixed recipe
(``configs/cifar10-simclr.yaml``: ResNet-18, batch 512, 200 epochs, SGD lr 0.06 x batch/128,
cosine, bf16 autocast, ``torch.compile``; only the loss and the seed change), then evaluated
on frozen features: kNN (k=200, t=0.1) and the linear probe (100 epochs, final epoch).

One 200-epoch run takes about 8 minutes at the target throughput (42,000 views/s), and a suite
run has a wall-time budget (540 s by default, so that it fits a 10-minute slot of a preemptible
or time-sliced GPU), so trainings span suite runs and machines. The state kept between suite
runs is a folder (``.gpu-state`` in the repository, where ``gpu_suite.sh`` resumes from; the
suite writes the next one to ``$OUT/state``)::

    queue.json                the ledger: the recipe, every run's status, progress, results,
                              the suite runs that worked on it, the concurrency measurement
    ckpt-<run>.pt.part<k>     the compact checkpoint of the run in progress, in parts of
                              15 MiB (each file at most 16 MiB)

Compact checkpoints (the state budget): the checkout, the 19 MB CIFAR-10 archive and this
folder are kept under 64 MiB together, so that they can travel to a remote GPU. A full
checkpoint of the run (fp32 weights 44 MiB + fp32 SGD momentum 44 MiB + the rest) does not fit.
The compact form keeps every large float tensor of the model in bf16 (22 MiB) and the SGD
momentum in int8 with one fp32 scale per row (11 MiB); everything else (BatchNorm statistics,
1-D parameters, scheduler, RNG states, step counters, config, metrics log) exactly. So a
resumed run continues from weights rounded to bf16 (relative error <= 2^-9) and momentum
rounded to 1/254 of each row's largest entry: close to, but not bit-identical with, an
uninterrupted run (within one suite run a training resumes nothing and is exact; the ledger
counts each run's compact resumes). At most ``--state-limit-mib`` (40) MiB of checkpoints are
kept: one ResNet-18 run in progress at a time. Finished runs keep their numbers in the ledger,
not their weights.

The compact file is a checkpoint like any other (the run machinery's envelope: the SHA-256 of
its payload is checked when it is read, and it is loaded without running code), so a damaged
carry is refused and that run starts again. Each run goes through the image pipeline's shared
comparison (``train_run`` with its spec: reuse, resume, refusal of other settings, evaluation);
methods are named as in ``otcl compare`` (``infonce+dmm``: DMM around InfoNCE).

Concurrency: several training processes on the one GPU may give more views/s in total than one
(ResNet-18 on 32x32 images leaves an H100 partly idle). :func:`measure_concurrency` measures
1, 2 and 4 processes once (the result stays in the ledger); the scheduler then runs that many at
a time, but starts a run only while at most as many runs as can be kept are predicted to be
unfinished at the deadline.

Stopping: at the deadline the scheduler creates a ``STOP`` file; each worker checks it before
every step and stops at a step boundary (the run machinery's interrupt path: checkpoint written,
exact resume), so no step is ever half applied.

Standalone use (the suite calls these)::

    python benchmarks/gpu_accuracy.py status .gpu-state     # what is done, what remains

The parts, one module each (their names are this module's too): ``_acc_ledger`` (the recipe
and the ledger), ``_acc_state`` (compact checkpoints, their parts, the state folder),
``_acc_worker`` (one run), ``_acc_concurrency`` (the measurement) and ``_acc_schedule`` (one
suite run's share of the protocol).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _acc_concurrency import (  # noqa: E402
    bench_main,
    choose_procs,
    measure_concurrency,
    per_process_rate,
)
from _acc_ledger import (  # noqa: E402
    COST,
    DRY_PROTOCOL,
    LEDGER,
    LEDGER_FORMAT,
    MODULE,
    PROTOCOL,
    RECIPE_FILE,
    comparable,
    load_ledger,
    new_ledger,
    recipe,
    remaining,
    run_config,
    run_id,
    save_json,
    status_lines,
)
from _acc_schedule import (  # noqa: E402
    CIFAR10_TRAIN,
    DEFAULT_OVERHEAD,
    STOP,
    run_section,
    views_left,
)
from _acc_state import (  # noqa: E402
    COMPACT_FORMAT,
    PART_BYTES,
    compact_checkpoint,
    copy_state,
    expand_checkpoint,
    part_names,
    read_parts,
    write_parts,
    write_state,
)
from _acc_worker import worker_main  # noqa: E402

__all__ = [
    "CIFAR10_TRAIN",
    "COMPACT_FORMAT",
    "COST",
    "DEFAULT_OVERHEAD",
    "DRY_PROTOCOL",
    "LEDGER",
    "LEDGER_FORMAT",
    "MODULE",
    "PART_BYTES",
    "PROTOCOL",
    "RECIPE_FILE",
    "ROOT",
    "STOP",
    "bench_main",
    "choose_procs",
    "comparable",
    "compact_checkpoint",
    "copy_state",
    "expand_checkpoint",
    "load_ledger",
    "main",
    "measure_concurrency",
    "new_ledger",
    "part_names",
    "per_process_rate",
    "read_parts",
    "recipe",
    "remaining",
    "run_config",
    "run_id",
    "run_section",
    "save_json",
    "status_lines",
    "views_left",
    "worker_main",
    "write_parts",
    "write_state",
]


# -- command line --------------------------------------------------------------------------
def main(argv=None) -> int:
    """The command line: ``status`` of a state folder, and the suite's internal commands."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="(internal) train and evaluate one run")
    w.add_argument("--config", required=True)
    w.add_argument("--report", required=True)
    w.add_argument("--stop-file", required=True)
    w.add_argument("--stop-after-steps", type=int)
    b = sub.add_parser("bench", help="(internal) one process of the concurrency measurement")
    b.add_argument("--index", type=int, required=True)
    b.add_argument("--config", required=True)
    b.add_argument("--control", required=True)
    b.add_argument("--warmup", type=int, default=15)
    b.add_argument("--timeout", type=float, default=300)
    d = sub.add_parser("prep", help="(internal) decode a dataset into the cache ($OTCL_CACHE)")
    d.add_argument("--dataset", required=True)
    d.add_argument("--data-dir")
    s = sub.add_parser("status", help="print a state folder's ledger")
    s.add_argument("state")
    args = p.parse_args(argv)
    if args.cmd == "worker":
        return worker_main(args)
    if args.cmd == "bench":
        return bench_main(args)
    if args.cmd == "prep":
        from otcl.pipelines.sources.images import load_dataset

        print(load_dataset(args.dataset, args.data_dir))
        return 0
    ledger = load_ledger(Path(args.state))
    print("\n".join(status_lines(ledger)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
