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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _children import Child, end  # noqa: E402

MODULE = Path(__file__).stem  # the workers run this module's main() (imported by name)

LEDGER = "queue.json"
LEDGER_FORMAT = 1
COMPACT_FORMAT = "otcl-compact-1"
PART_BYTES = 15 * 2**20
STOP = "STOP"
RECIPE_FILE = ROOT / "configs" / "cifar10-simclr.yaml"

#: the protocol's runs, in training order: the comparisons that matter most come first
PROTOCOL: tuple[tuple[str, int], ...] = (
    ("infonce", 0),
    ("gca-uot", 0),
    ("gca-ince", 0),
    ("iot-uni", 0),
    ("infonce", 1),
    ("gca-uot", 1),
    ("hcl", 0),
    ("ot-hard", 0),
    ("infonce+dmm", 0),
    ("infonce", 2),
    ("gca-uot", 2),
)
DRY_PROTOCOL: tuple[tuple[str, int], ...] = (("infonce", 0), ("gca-uot", 0))
#: encoder passes per step relative to two views (DMM re-encodes the mixed view-1 batch)
COST = {"infonce+dmm": 1.5}
CIFAR10_TRAIN = 50_000
#: per-run overheads assumed before any were measured: process start + data + compile, and eval
DEFAULT_OVERHEAD = {
    "gpu": {"startup_s": 60.0, "eval_s": 30.0},
    "dry": {"startup_s": 8.0, "eval_s": 5.0},
}


# -- recipe --------------------------------------------------------------------------------
def recipe(dry_run: bool) -> dict[str, Any]:
    """The fixed training recipe as a resolved config dict (loss and seed are per run)."""
    from otcl.pipelines.config import load_config
    from otcl.pipelines.ssl.config import Config, resolve

    if dry_run:  # the CIFAR-10 preset on a tiny archive, a 4-channel CNN: seconds on CPU
        cfg = Config()
        cfg.data.dataset = "cifar10"
        cfg.model.arch, cfg.model.width, cfg.model.head_hidden, cfg.model.head_out = (
            "small-cnn",
            4,
            16,
            8,
        )
        cfg.train.epochs, cfg.train.batch_size, cfg.train.max_steps_per_epoch = 2, 16, 3
        cfg.train.device, cfg.train.amp, cfg.train.threads = "cpu", "none", 1
        cfg.train.checkpoint_every = 1
        cfg.eval.linear_epochs, cfg.eval.knn_k = 3, 10
    else:
        cfg = load_config(RECIPE_FILE, Config)
        cfg.eval.knn_every = 50  # four kNN points for the curves; the recipe file says 20
    cfg.train.progress = False
    cfg.loss.name, cfg.loss.params, cfg.train.seed = "infonce", {}, 0
    return resolve(cfg).to_dict()


def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the settings that change neither a run nor its numbers: the image
    trainer's ``volatile`` list (the one a resume and ``otcl compare`` use), less its
    ``measures`` (the evaluation: the ledger holds measured numbers)."""
    from otcl.pipelines.engine.identity import comparable as strip
    from otcl.pipelines.engine.identity import unmeasured
    from otcl.pipelines.ssl.trainer import SSLTrainer

    return strip(cfg, unmeasured(SSLTrainer.volatile, SSLTrainer.measures))


def run_config(
    rec: dict[str, Any], run: dict[str, Any], data_dir: str | None, out: Path
) -> dict[str, Any]:
    """The full config of one run of the ledger: the recipe with the run's method (a loss, or
    ``<loss>+dmm``) as the image pipeline's comparison makes it, its seed and directory."""
    from otcl.pipelines.spec import get

    spec = get("ssl")
    cfg = spec.method_config(spec.config_cls.from_dict(rec), run["loss"], run["params"], {})
    cfg.train.seed, cfg.train.out, cfg.data.data_dir = run["seed"], str(out), data_dir
    return cfg.to_dict()


# -- ledger --------------------------------------------------------------------------------
def run_id(loss: str, seed: int) -> str:
    """``infonce+dmm``, seed 0 -> ``infonce-dmm-s0`` (plain characters: a file-name part)."""
    return f"{loss.replace('+', '-')}-s{seed}"


def new_ledger(rec: dict[str, Any], protocol) -> dict[str, Any]:
    runs = []
    for loss, seed in protocol:
        runs.append(
            {
                "id": run_id(loss, seed),
                "loss": loss,
                "seed": seed,
                "params": {},  # loss parameters on top of the recipe
                "status": "pending",  # pending | partial | trained | done | failed
                "epoch": 0,
                "global_step": 0,
                "total_steps": None,
                "train_seconds": 0.0,
                "compact_resumes": 0,
                "parts": 0,
                "calls": [],
                "result": None,
                "error": None,
                "notes": [],
            }
        )
    return {
        "format": LEDGER_FORMAT,
        "recipe": rec,
        "runs": runs,
        "concurrency": None,
        "overhead": None,
        "calls": [],
    }


def load_ledger(state: Path) -> dict[str, Any]:
    path = state / LEDGER
    try:
        ledger = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--resume-from: cannot read {path}: {e}") from None
    if ledger.get("format") != LEDGER_FORMAT:
        raise ValueError(f"--resume-from: {path} is not a ledger of format {LEDGER_FORMAT}")
    return ledger


def save_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remaining(ledger: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in ledger["runs"] if r["status"] not in ("done", "failed")]


def status_lines(ledger: dict[str, Any]) -> list[str]:
    """One line per run: status, progress, results."""
    out = []
    for r in ledger["runs"]:
        prog = f"epoch {r['epoch']}/{ledger['recipe']['train']['epochs']}"
        res = r["result"] or {}
        acc = f", kNN {res['knn']:.4f}, linear {res['linear']:.4f}" if res else ""
        err = f", error: {r['error']}" if r["error"] else ""
        out.append(f"{r['id']:12s} {r['status']:8s} {prog}{acc}{err}")
    return out


# -- compact checkpoints -------------------------------------------------------------------
def _pack_weight(t):
    import torch

    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() >= 1024:
        return {"__bf16__": t.detach().to("cpu", torch.bfloat16)}
    return t


def _pack_q8(t):
    """int8 with one fp32 scale per row (the first dimension), round to nearest."""
    import torch

    if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() >= 1024):
        return t
    x = t.detach().to("cpu", torch.float32)
    rows = x.reshape(x.shape[0], -1)
    scale = rows.abs().amax(dim=1, keepdim=True) / 127.0
    q = torch.round(rows / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-127, 127)
    return {
        "__q8__": q.to(torch.int8),
        "scale": scale,
        "shape": list(x.shape),
        "dtype": str(t.dtype),
    }


def _unpack(v):
    import torch

    if isinstance(v, dict) and "__bf16__" in v:
        return v["__bf16__"].to(torch.float32)
    if isinstance(v, dict) and "__q8__" in v:
        dtype = getattr(torch, v["dtype"].replace("torch.", ""))
        return (v["__q8__"].to(torch.float32) * v["scale"]).reshape(v["shape"]).to(dtype)
    return v


def compact_checkpoint(run_dir: Path) -> bytes:
    """The run's checkpoint (and its config and metrics log) in the compact carry form: a
    checkpoint file like any other (:func:`otcl.pipelines.engine.checkpoint.save_checkpoint`: the SHA-256 of
    its payload checked on reading), whose large tensors are packed and which carries the two
    text files under ``"compact"``."""
    import tempfile

    from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint

    st = load_checkpoint(run_dir)
    st["model"] = {k: _pack_weight(v) for k, v in st["model"].items()}
    for s in st["optimizer"].get("state", {}).values():
        if "momentum_buffer" in s:
            s["momentum_buffer"] = _pack_q8(s["momentum_buffer"])
    files = {}
    for name in ("config.yaml", "metrics.jsonl"):
        if (run_dir / name).exists():
            files[name] = (run_dir / name).read_text()
    st["compact"] = {"format": COMPACT_FORMAT, "files": files}
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(st, Path(tmp) / "compact.pt")
        return (Path(tmp) / "compact.pt").read_bytes()


def expand_checkpoint(blob: bytes, run_dir: Path) -> dict[str, Any]:
    """Write ``checkpoint.pt`` (fp32 again), ``config.yaml`` and ``metrics.jsonl`` into
    ``run_dir`` from a compact blob; returns the checkpoint's state. The blob is read by
    :func:`otcl.pipelines.engine.checkpoint.load_checkpoint` (safe loading, the SHA-256 check): a damaged
    carry is a ``ValueError``."""
    import tempfile

    from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "compact.pt").write_bytes(blob)
        st = load_checkpoint(Path(tmp) / "compact.pt")
    data = st.pop("compact", None)
    if not isinstance(data, dict) or data.get("format") != COMPACT_FORMAT:
        raise ValueError("compact checkpoint: unknown format")
    st["model"] = {k: _unpack(v) for k, v in st["model"].items()}
    for s in st["optimizer"].get("state", {}).values():
        if "momentum_buffer" in s:
            s["momentum_buffer"] = _unpack(s["momentum_buffer"])
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, text in data["files"].items():
        (run_dir / name).write_text(text)
    save_checkpoint(st, run_dir / "checkpoint.pt")
    return st


def part_names(rid: str, n: int) -> list[str]:
    return [f"ckpt-{rid}.pt.part{k}" for k in range(n)]


def write_parts(blob: bytes, state: Path, rid: str, part_bytes: int = PART_BYTES) -> int:
    """Split ``blob`` into files of at most ``part_bytes``; returns their number."""
    n = max(1, math.ceil(len(blob) / part_bytes))
    for k, name in enumerate(part_names(rid, n)):
        (state / name).write_bytes(blob[k * part_bytes : (k + 1) * part_bytes])
    return n


def read_parts(state: Path, rid: str, n: int) -> bytes:
    paths = [state / name for name in part_names(rid, n)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"--resume-from: the checkpoint of {rid} lacks {', '.join(missing)}")
    return b"".join(p.read_bytes() for p in paths)


# -- the worker: one run, in its own process ------------------------------------------------
def worker_main(args: argparse.Namespace) -> int:
    """Train (or resume) one run until done or told to stop; evaluate; write a report.

    The run goes through the shared comparison (:func:`otcl.pipelines.compare.train_run` with
    the image pipeline's spec): a finished run is reused, an interrupted one resumed, a
    directory holding other settings refused, and the spec's evaluation follows training. This
    worker adds what is its own: the STOP file, the step count and the timings of its report.
    """
    t_start = time.time()
    report: dict[str, Any] = {"status": "failed"}
    report_path = Path(args.report)
    stop_file = Path(args.stop_file)
    try:
        from otcl.pipelines.compare import Run, train_run
        from otcl.pipelines.comparison import SpecRunner
        from otcl.pipelines.engine.checkpoint import load_checkpoint
        from otcl.pipelines.engine.stops import TrainingInterrupted
        from otcl.pipelines.files import read_jsonl
        from otcl.pipelines.spec import get

        spec = get("ssl")
        cfg = spec.config_cls.from_dict(json.loads(Path(args.config).read_text()))
        run_dir = Path(cfg.train.out)
        marks: dict[str, float] = {}
        stop_after = args.stop_after_steps
        # Stopping goes through the run machinery's own path: a SIGTERM inside fit() is deferred
        # to the end of the current step, then the checkpoint is written (exact resume). This
        # handler only keeps a SIGTERM outside fit() (loading, evaluating) from killing us.
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())

        def request_stop() -> None:
            if not stopping.is_set():
                stopping.set()
                os.kill(os.getpid(), signal.SIGTERM)

        def watch() -> None:  # the scheduler's STOP file -> one SIGTERM
            while not stopping.is_set():
                if stop_file.exists():
                    request_stop()
                    return
                time.sleep(0.2)

        built: list[Any] = []

        def make_trainer(*a: Any, **kw: Any) -> Any:
            """The spec's trainer, its steps counted (no subclass)."""
            tr = spec.trainer_cls(*a, **kw)
            step_fn = tr.train_step

            def counted(epoch: int, step: int) -> Any:
                if tr.steps_here == 0 and stopping.is_set():  # the deadline came while loading
                    os.kill(os.getpid(), signal.SIGTERM)  # deferred to this step's end
                loss = step_fn(epoch, step)
                tr.steps_here += 1
                if tr.steps_here == 1:
                    marks["first_step"] = time.time()
                if stop_after is not None and tr.steps_here == stop_after:
                    request_stop()  # (tests) as if the deadline came now
                return loss

            tr.steps_here, tr.train_step = 0, counted
            report.update(epoch=tr.epoch, global_step=tr.global_step, total_steps=tr.total_steps)
            marks["epoch0"] = tr.epoch
            built.append(tr)
            return tr

        runner = SpecRunner(spec)
        make_trainer.volatile = spec.trainer_cls.volatile  # type: ignore[attr-defined]
        make_trainer.measures = spec.trainer_cls.measures  # type: ignore[attr-defined]
        runner.trainer_cls = make_trainer
        finish = runner.finish

        def timed_finish(run: Any, data: Any) -> None:
            marks["eval0"] = time.time()
            finish(run, data)
            report["eval_s"] = time.time() - marks["eval0"]

        runner.finish = timed_finish  # type: ignore[method-assign]
        threading.Thread(target=watch, daemon=True).start()
        t_train = time.time()
        log = lambda s: print(s, file=sys.stderr)  # noqa: E731
        try:
            state = train_run(runner, Run(run_dir.name, cfg.train.seed, cfg, run_dir), None, log)
            status = "done"
        except TrainingInterrupted:
            state, status = "resume", "stopped"
        report["resumed"] = state == "resume"
        t_done = time.time() - report.get("eval_s", 0.0)
        st = load_checkpoint(run_dir)
        # throughput of this call: the epochs it completed, without the first (compilation)
        recs = [
            r
            for r in read_jsonl(run_dir / "metrics.jsonl")
            if r["epoch"] > marks.get("epoch0", st["epoch"])
        ]
        rates = [r["views_per_s"] for r in recs]
        report.update(
            epoch=int(st["epoch"]),
            global_step=int(st["global_step"]),
            steps_here=built[0].steps_here if built else 0,
            startup_s=(marks["first_step"] - t_start) if "first_step" in marks else None,
            train_s=t_done - t_train,
            views_per_s=statistics.median(rates[1:] or rates) if rates else None,
        )
        if built:
            report["total_steps"] = built[0].total_steps
        if status == "done":
            res = json.loads((run_dir / "eval.json").read_text())
            summary = json.loads((run_dir / "summary.json").read_text())
            report["result"] = {
                "knn": res["knn"],
                "linear": res["linear"],
                "linear_train": res["linear_train"],
                "final_loss": summary.get("final_loss"),
                "views_per_s": summary.get("views_per_s"),
                "seconds_per_epoch": summary.get("seconds_per_epoch"),
                "epochs": summary.get("epochs"),
            }
        report["status"] = status
        rc = 0
    except Exception as e:  # reported to the scheduler, which records it in the ledger
        report["error"] = f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc()[-4000:]
        print(report["traceback"], file=sys.stderr)
        rc = 1
    save_json(report_path, report)
    return rc


# -- concurrency measurement ---------------------------------------------------------------
def bench_main(args: argparse.Namespace) -> int:
    """One process of the concurrency measurement: build, compile, then run timed windows."""
    import torch

    from otcl.pipelines.ssl.config import Config
    from otcl.pipelines.ssl.trainer import SSLTrainer

    ctl = Path(args.control)
    cfg = Config.from_dict(json.loads(Path(args.config).read_text()))
    tr = SSLTrainer(cfg, Path(cfg.train.out))
    gen = torch.Generator().manual_seed(args.index)
    n = tr.images.shape[0]

    def step() -> None:
        idx = torch.randint(0, n, (tr.batch_size,), generator=gen)
        tr.optimize(tr.loss_on(idx))
        tr.global_step += 1

    def sync() -> None:
        if tr.device.type == "cuda":
            torch.cuda.synchronize(tr.device)

    for _ in range(args.warmup):
        step()
    sync()
    (ctl / f"ready-{args.index}").write_text("1")
    done: set[int] = set()
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        try:
            phase = json.loads((ctl / "phase.json").read_text())
        except (OSError, json.JSONDecodeError):
            phase = None
        if phase is not None and phase.get("quit"):
            break
        if phase is None or phase["phase"] in done or args.index not in phase["active"]:
            time.sleep(0.02)
            continue
        while time.time() < phase["start"]:
            time.sleep(0.005)
        t0, steps = time.time(), 0
        while time.time() < phase["end"]:
            step()
            steps += 1
        sync()
        secs = time.time() - t0
        views = steps * tr.items_per_step()
        save_json(
            ctl / f"result-{args.index}-{phase['phase']}.json",
            {"steps": steps, "seconds": secs, "views_per_s": views / secs},
        )
        done.add(phase["phase"])
    return 0


def measure_concurrency(
    rec: dict[str, Any],
    work: Path,
    data_dir: str | None,
    levels: tuple[int, ...],
    window_s: float,
    warmup: int,
    budget_s: float,
    log,
) -> dict[str, Any]:
    """Total views/s with 1, 2, 4, ... training processes on the device (infonce, the recipe)."""
    t_end = time.time() + budget_s
    ctl = work / "concurrency"
    ctl.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(max(levels)):
        run = {"loss": "infonce", "seed": 1000 + i, "params": {}}
        cfg = run_config(rec, run, data_dir, ctl / f"bench-{i}")
        (ctl / f"config-{i}.json").write_text(json.dumps(cfg))
        argv = ["bench", "--index", str(i), "--config", str(ctl / f"config-{i}.json")]
        argv += ["--control", str(ctl), "--warmup", str(warmup), "--timeout", str(budget_s)]
        procs.append(Child("module", MODULE, argv, ctl / f"bench-{i}.log"))
    result: dict[str, Any] = {"levels": {}, "window_s": window_s, "status": "ok"}
    try:
        n = max(levels)
        while len(list(ctl.glob("ready-*"))) < n:
            if time.time() > t_end - (window_s + 3) * len(levels):
                raise TimeoutError("the processes were not ready in time (compilation)")
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a measurement process failed (see concurrency/bench-*.log)")
            time.sleep(0.2)
        result["ready_s"] = budget_s - (t_end - time.time())
        for k, level in enumerate(levels):
            start = time.time() + 0.5
            save_json(
                ctl / "phase.json",
                {"phase": k, "active": list(range(level)), "start": start, "end": start + window_s},
            )
            files = [ctl / f"result-{i}-{k}.json" for i in range(level)]
            while not all(f.exists() for f in files):
                if time.time() > t_end:
                    raise TimeoutError(f"no result for {level} processes in time")
                time.sleep(0.1)
            rates = [json.loads(f.read_text())["views_per_s"] for f in files]
            result["levels"][str(level)] = {"total_views_per_s": sum(rates), "per_process": rates}
            log(f"concurrency: {level} process(es): {sum(rates):,.0f} views/s in total")
    except (TimeoutError, RuntimeError) as e:
        result["status"] = f"incomplete: {e}"
        log(f"concurrency: {result['status']}")
    finally:
        save_json(ctl / "phase.json", {"phase": -1, "quit": True, "active": []})
        for p in procs:
            end(p, 10)
    result["procs"] = choose_procs(result)
    return result


def choose_procs(measurement: dict[str, Any] | None) -> int:
    """The fewest processes within 5 % of the best total throughput measured (1 if none)."""
    levels = (measurement or {}).get("levels") or {}
    if not levels:
        return 1
    best = max(v["total_views_per_s"] for v in levels.values())
    ok = [int(k) for k, v in levels.items() if v["total_views_per_s"] >= 0.95 * best]
    return min(ok)


def per_process_rate(measurement: dict[str, Any] | None, procs: int, fallback: float) -> float:
    levels = (measurement or {}).get("levels") or {}
    if str(procs) in levels:
        return levels[str(procs)]["total_views_per_s"] / procs
    if "1" in levels:
        return levels["1"]["total_views_per_s"] / procs
    return fallback / procs


# -- the scheduler -------------------------------------------------------------------------
def views_left(ledger: dict[str, Any], run: dict[str, Any]) -> float:
    rec = ledger["recipe"]
    total = run["total_steps"] or _total_steps(rec)
    per_step = 2 * rec["train"]["batch_size"] * COST.get(run["loss"], 1.0)
    return max(0, total - run["global_step"]) * per_step


def _total_steps(rec: dict[str, Any]) -> int:
    """Steps of a run of the recipe (CIFAR-10: 50,000 // batch per epoch), before any report."""
    t = rec["train"]
    per_epoch = CIFAR10_TRAIN // t["batch_size"]
    if t.get("max_steps_per_epoch"):
        per_epoch = min(per_epoch, t["max_steps_per_epoch"])
    return per_epoch * t["epochs"]


def run_section(
    *,
    state_in: Path | None,
    state_out: Path,
    work: Path,
    budget_s: float,
    data_dir: str | None,
    dry_run: bool,
    call: dict[str, Any],
    procs: int | None = None,
    measure: bool = True,
    state_limit_mib: float = 40.0,
    stop_after_steps: int | None = None,
    fallback_rate: float | None = None,
    log=print,
) -> dict[str, Any]:
    """Advance the protocol within ``budget_s`` seconds; write the next state to ``state_out``.

    Returns a summary (what ran, what finished, the concurrency used, the ledger's status).
    """
    t0 = time.time()
    t_end = t0 + budget_s
    rec = recipe(dry_run)
    if state_in is not None and (state_in / LEDGER).exists():
        ledger = load_ledger(state_in)
        if comparable(ledger["recipe"]) != comparable(rec):
            raise ValueError(
                f"--resume-from: {state_in} holds a protocol with another recipe; start a new "
                "state folder (or restore the recipe)"
            )
    else:
        ledger = new_ledger(rec, DRY_PROTOCOL if dry_run else PROTOCOL)
    kind = "dry" if dry_run else "gpu"
    overhead = ledger.get("overhead") or dict(DEFAULT_OVERHEAD[kind])
    fallback = fallback_rate or (2000.0 if dry_run else 25_000.0)
    runs_dir = work / "runs"
    stop = work / STOP
    if stop.exists():
        stop.unlink()
    # the carried checkpoints back into run directories
    expanded = set()
    for r in ledger["runs"]:
        if r["status"] in ("partial", "trained") and r["parts"]:
            assert state_in is not None
            try:
                expand_checkpoint(read_parts(state_in, r["id"], r["parts"]), runs_dir / r["id"])
                expanded.add(r["id"])
            except Exception as e:  # a damaged carry: that run starts again
                r["notes"].append(f"carried checkpoint unreadable ({e}); started again")
                r.update(status="pending", epoch=0, global_step=0, parts=0, train_seconds=0.0)
    summary: dict[str, Any] = {"status": "ok", "started": [], "finished": [], "stopped": []}
    # concurrency: measured once, kept in the ledger
    if procs is None:
        if ledger.get("concurrency") is None and measure:
            left = t_end - time.time()
            m_budget = min(120.0 if not dry_run else 60.0, 0.5 * left)
            levels = (1, 2) if dry_run else (1, 2, 4)
            window = 0.3 if dry_run else 8.0
            measured = measure_concurrency(
                rec, work, data_dir, levels, window, 1 if dry_run else 15, m_budget, log
            )
            measured["call"] = call.get("id")
            summary["concurrency_attempt"] = measured
            if measured["status"] == "ok":  # else measured again in a later call
                ledger["concurrency"] = measured
        procs = choose_procs(ledger.get("concurrency"))
    summary["procs"] = procs
    summary["views_per_s_per_process"] = per_process_rate(
        ledger.get("concurrency"), procs, fallback
    )
    grace = 8.0 if dry_run else 25.0  # a stopped worker: finish its step, write, exit
    deadline = t_end - grace
    est_size = _compact_size_estimate(rec)
    max_carry = int(state_limit_mib * 2**20 // est_size)
    summary["max_carry"] = max_carry
    active: dict[str, tuple[Child, Any, float]] = {}

    def predicted_unfinished(ids: list[str], n_active: int) -> int:
        r_each = per_process_rate(ledger.get("concurrency"), max(1, n_active), fallback)
        now = time.time()
        count = 0
        for rid in ids:
            run = next(r for r in ledger["runs"] if r["id"] == rid)
            started = active[rid][2] if rid in active else now
            need = overhead["startup_s"] + views_left(ledger, run) / r_each + overhead["eval_s"]
            if started + need > deadline:
                count += 1
        return count

    def candidates() -> list[dict[str, Any]]:
        order = {"trained": 0, "partial": 1, "pending": 2}
        pool = [r for r in ledger["runs"] if r["status"] in order and r["id"] not in active]
        return sorted(pool, key=lambda r: (order[r["status"]], -r["global_step"]))

    def start(run: dict[str, Any]) -> None:
        rdir = runs_dir / run["id"]
        rdir.mkdir(parents=True, exist_ok=True)
        cfg = run_config(rec, run, data_dir, rdir)
        (rdir / "worker-config.json").write_text(json.dumps(cfg))
        report = rdir / "worker.json"
        if report.exists():
            report.unlink()
        argv = ["worker", "--config", str(rdir / "worker-config.json"), "--report", str(report)]
        argv += ["--stop-file", str(stop)]
        if stop_after_steps is not None:
            argv += ["--stop-after-steps", str(stop_after_steps)]
        active[run["id"]] = (Child("module", MODULE, argv, rdir / "worker.log"), None, time.time())
        summary["started"].append(run["id"])
        log(f"accuracy: started {run['id']} ({run['status']}, epoch {run['epoch']})")

    def collect(rid: str, killed: bool = False) -> None:
        p, _, started = active.pop(rid)
        run = next(r for r in ledger["runs"] if r["id"] == rid)
        rdir = runs_dir / rid
        try:
            rep = json.loads((rdir / "worker.json").read_text())
        except (OSError, json.JSONDecodeError):
            rep = {
                "status": "failed",
                "error": f"worker ended (code {p.returncode}) without a report",
            }
            if killed:  # ended at the deadline (compiling or evaluating): keep its checkpoint
                rep = {"status": "stopped", "note": "ended at the deadline"}
                ck = rdir / "checkpoint.pt"
                if ck.exists():
                    from otcl.pipelines.engine.checkpoint import load_checkpoint

                    st = load_checkpoint(ck)
                    rep.update(epoch=st["epoch"], global_step=st["global_step"])
                    rep["status"] = "trained" if st.get("done") else "stopped"
        if rid in expanded and rep.get("steps_here"):
            run["compact_resumes"] += 1
            expanded.discard(rid)
        prev_epoch = run["epoch"]
        for k in ("epoch", "global_step", "total_steps"):
            if rep.get(k) is not None:
                run[k] = rep[k]
        run["train_seconds"] += float(rep.get("train_s") or 0.0)
        run["calls"].append(
            {
                "call": call.get("id"),
                "device": call.get("device"),
                "epochs": [prev_epoch, run["epoch"]],
                "status": rep["status"],
                "views_per_s": rep.get("views_per_s"),
                "procs": procs,
                "seconds": time.time() - started,
            }
        )
        if rep.get("startup_s") and rep.get("steps_here", 0) > 0:
            overhead["startup_s"] = max(overhead["startup_s"] * 0.5, float(rep["startup_s"]))
        if rep.get("eval_s"):
            overhead["eval_s"] = float(rep["eval_s"])
        status = rep["status"]
        if status == "done":
            run["result"] = rep["result"]
            run["status"] = "done"
            summary["finished"].append(rid)
        elif status in ("stopped", "trained"):
            has_ckpt = (rdir / "checkpoint.pt").exists()
            run["status"] = status if has_ckpt else "pending"
            summary["stopped"].append(rid)
        else:
            run["status"] = "failed"
            run["error"] = rep.get("error")
        log(f"accuracy: {rid} -> {run['status']} (epoch {run['epoch']})")

    while True:
        now = time.time()
        for rid in [rid for rid, (p, _, _) in active.items() if p.poll() is not None]:
            collect(rid)
        if now >= deadline:
            break
        # fill free slots while the carry rule allows
        for run in candidates():
            min_train = (
                2.0 if dry_run else 60.0
            )  # a start must buy some training, not only compiling
            if len(active) >= procs or time.time() + overhead["startup_s"] + min_train > deadline:
                break
            ids = list(active) + [run["id"]]
            if predicted_unfinished(ids, len(ids)) > max_carry:
                continue  # it could not finish and could not be carried either
            start(run)
        if not active:
            break
        time.sleep(0.5 if dry_run else 2.0)
    if active:
        stop.write_text("stop\n")
        for rid, (p, _, _) in list(active.items()):
            collect(rid, killed=end(p, max(1.0, t_end - time.time())))
    ledger["overhead"] = overhead
    ledger["calls"].append({**call, "accuracy_s": time.time() - t0, "procs": procs})
    write_state(ledger, runs_dir, state_in, state_out, max_carry, log)
    summary["ledger"] = status_lines(ledger)
    summary["remaining"] = [r["id"] for r in remaining(ledger)]
    summary["runs"] = {
        r["id"]: {k: r[k] for k in ("status", "epoch", "result")} for r in ledger["runs"]
    }
    summary["concurrency"] = ledger.get("concurrency")
    summary["seconds"] = time.time() - t0
    return summary


def _compact_size_estimate(rec: dict[str, Any]) -> int:
    """Bytes of one compact checkpoint of the recipe's model (3 bytes a parameter + 1 MiB)."""
    from otcl.pipelines.sources.backbones import build_encoder

    m = rec["model"]
    enc = build_encoder(
        m["arch"],
        3,
        width=m["width"] or 32,
        head_hidden=m["head_hidden"],
        head_out=m["head_out"],
        head_bn=m["head_bn"],
    )
    return 3 * sum(p.numel() for p in enc.parameters()) + 2**20


def write_state(
    ledger: dict[str, Any],
    runs_dir: Path,
    state_in: Path | None,
    state_out: Path,
    max_carry: int,
    log,
) -> None:
    """The ledger and the compact checkpoints of the unfinished runs (the most advanced first,
    at most ``max_carry``); runs beyond it go back to pending, their progress noted as lost."""
    state_out.mkdir(parents=True, exist_ok=True)
    for old in state_out.glob("ckpt-*"):
        old.unlink()
    unfinished = [r for r in ledger["runs"] if r["status"] in ("partial", "trained", "stopped")]
    unfinished.sort(key=lambda r: (r["status"] != "trained", -r["global_step"]))
    for i, r in enumerate(unfinished):
        if r["status"] == "stopped":
            r["status"] = "partial"
        ckpt = runs_dir / r["id"] / "checkpoint.pt"
        if i >= max_carry or not ckpt.exists():
            r["notes"].append(
                f"progress to epoch {r['epoch']} dropped (carry limit)"
                if ckpt.exists()
                else "no checkpoint to carry"
            )
            r.update(status="pending", epoch=0, global_step=0, parts=0, train_seconds=0.0)
            continue
        r["parts"] = write_parts(compact_checkpoint(runs_dir / r["id"]), state_out, r["id"])
        log(f"accuracy: carrying {r['id']} at epoch {r['epoch']} ({r['parts']} part(s))")
    for r in ledger["runs"]:
        if r["status"] in ("pending", "done", "failed"):
            r["parts"] = 0
    save_json(state_out / LEDGER, ledger)


def copy_state(state_in: Path | None, state_out: Path) -> None:
    """The carried state unchanged (a call that did not run the accuracy section)."""
    state_out.mkdir(parents=True, exist_ok=True)
    if state_in is None or not (state_in / LEDGER).exists():
        return
    ledger = load_ledger(state_in)
    for r in ledger["runs"]:
        for name in part_names(r["id"], r.get("parts") or 0):
            (state_out / name).write_bytes((state_in / name).read_bytes())
    save_json(state_out / LEDGER, ledger)


# -- command line --------------------------------------------------------------------------
def main(argv=None) -> int:
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
