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
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH))

import _children  # noqa: E402
import gpu_accuracy  # noqa: E402

SECTIONS = ("loss", "train", "syncs", "multigpu", "streaming", "accuracy")
#: seconds per section on a GPU (caps: a section that finishes early leaves its time)
BUDGETS = {"loss": 100.0, "train": 200.0, "syncs": 40.0, "multigpu": 60.0, "streaming": 90.0}
DRY_BUDGETS = {"loss": 60.0, "train": 60.0, "syncs": 60.0, "multigpu": 60.0, "streaming": 60.0}
ACCURACY_MIN_S = {"gpu": 60.0, "dry": 5.0}
PACK_RESERVE_S = 10.0
DATA_DEFAULT = ROOT / ".data" / "cifar10-jpeg.tar.gz"
SUMMARY_FORMAT = 1


class Suite:
    """State of one suite run: where things go, the clock, the summary so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.dry = bool(args.dry_run)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        if self.dry:  # the CIFAR-10 path on a tiny archive made here
            self.data = stable_path(make_tiny_cifar(self.work / "tiny-cifar10.tar.gz"))
        else:
            self.data = stable_path(Path(args.data).resolve())
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["OTCL_CACHE"] = str(self.work / "cache")  # the decoded dataset, once per run
        os.environ.update(self.env)  # the accuracy workers' fork server inherits it
        budgets = dict(DRY_BUDGETS if self.dry else BUDGETS)
        for item in args.section_budget:
            name, _, sec = item.partition("=")
            try:
                budgets[name] = float(sec) if name in budgets else float("nan")
            except ValueError:
                budgets[name] = float("nan")
            if not budgets[name] > 0:
                raise SystemExit(
                    f"--section-budget: expected NAME=SECONDS with NAME one of "
                    f"{', '.join(BUDGETS)}, got {item!r}"
                )
        self.budgets = budgets
        self.summary: dict[str, Any] = {
            "format": SUMMARY_FORMAT,
            "suite": "benchmarks/gpu_suite.py",
            "command": " ".join(["python", "benchmarks/gpu_suite.py", *args.argv]),
            "dry_run": self.dry,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": args.commit or git_commit(),
            "host": platform.node(),
            "gpu": gpu_line(),
            "python": platform.python_version(),
            "budget_s": args.budget_s,
            "sections": {},
        }
        self.prep: Any = None
        self.lock = threading.Lock()
        self.call_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.summary["call_id"] = self.call_id

    # -- clock -----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.args.budget_s - PACK_RESERVE_S - self.elapsed()

    def log(self, line: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {line}", flush=True)
        with open(self.logs / "suite.log", "a") as fh:
            fh.write(f"[{self.elapsed():6.1f} s] {line}\n")

    # -- running things --------------------------------------------------------------------
    def run(self, name: str, cmd: list[str], budget: float, stdout: Path | None = None) -> dict:
        """Run ``cmd`` for at most ``budget`` seconds (then SIGINT, SIGKILL to its group).

        ``python SCRIPT.py ARGS`` runs as a fork-server child (no import cost); any other
        command (``torchrun``) as a plain process.
        """
        log = self.logs / f"{name}.log"
        t0 = time.time()
        with open(log, "a") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
        if cmd[0] == sys.executable and cmd[1].endswith(".py"):
            p: Any = _children.Child("script", cmd[1], cmd[2:], stdout or log, log)
        else:
            with open(log, "a") as err, open(stdout or log, "a") as out:
                p = subprocess.Popen(
                    cmd, stdout=out, stderr=err, env=self.env, cwd=ROOT, start_new_session=True
                )
        killed = _children.end(p, max(1.0, budget), first=signal.SIGINT)
        rc = p.returncode
        if killed:
            status = f"timeout after {budget:.0f} s"
        else:
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        return {"status": status, "seconds": time.time() - t0, "rc": rc, "log": f"{name}.log"}

    def start_data_prep(self) -> None:
        """Decode the dataset once into the cache, in the background (the sections that train wait)."""
        if not Path(self.data).exists():
            return
        self.prep_t0 = time.time()
        argv = ["prep", "--dataset", "cifar10", "--data-dir", self.data]
        self.prep = _children.Child("module", "gpu_accuracy", argv, self.logs / "data.log")

    def wait_data(self, budget: float) -> str | None:
        """None when the data is ready, else why not."""
        if not Path(self.data).exists():
            return (
                f"no data at {self.args.data}: put a CIFAR-10 ImageFolder archive at "
                ".data/cifar10-jpeg.tar.gz or name it with --data"
            )
        if self.prep is None:
            return "the data preparation did not start"
        try:
            rc = self.prep.wait(timeout=max(1.0, budget))
        except subprocess.TimeoutExpired:
            return f"decoding the dataset took more than {budget:.0f} s"
        with self.lock:  # sections may wait at once (--dry-run)
            if "data_prep_s" not in self.summary:
                self.summary["data_prep_s"] = time.time() - self.prep_t0
                self.log(f"data ready after {self.summary['data_prep_s']:.1f} s (exit {rc})")
        return None if rc == 0 else f"decoding the dataset failed (exit {rc}; see data.log)"

    # -- output ----------------------------------------------------------------------------
    def record(self, name: str, entry: dict[str, Any]) -> None:
        entry.setdefault("budget_s", self.budgets.get(name))
        self.summary["sections"][name] = entry
        self.log(f"section {name}: {entry['status']} ({entry.get('seconds', 0):.1f} s)")
        self.write()

    def write(self) -> None:
        """summary.json, summary.md and logs.tar.gz in ``--out`` (rewritten after each section)."""
        self.summary["wall_s"] = self.elapsed()
        gpu_accuracy.save_json(self.out / "summary.json", self.summary)
        (self.out / "summary.md").write_text(render_summary(self.summary) + "\n")
        tmp = self.out / "logs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for p in sorted(self.work.rglob("*")):
                if p.is_file() and _keep_in_logs(p):
                    tar.add(p, arcname=str(p.relative_to(self.work)))
        os.replace(tmp, self.out / "logs.tar.gz")


def stable_path(data: Path) -> str:
    """A path to ``data`` that is the same in every suite run: a run's config holds its data path,
    and a resumed run may not change it (the checkout may lie elsewhere on the next machine)."""
    link = Path(tempfile.gettempdir()) / "otcl-gpu-suite" / data.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    if data.exists():
        link.symlink_to(data.resolve())
        return str(link)
    return str(data)  # missing: the sections report it


def make_tiny_cifar(path: Path, per_class: int = 12, test_per_class: int = 3) -> Path:
    """A CIFAR-10-shaped ImageFolder archive of random 32x32 JPEGs (10 classes), for --dry-run."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", per_class), ("test", test_per_class)):
            for c in range(10):
                tint = rng.integers(0, 256, 3)
                for i in range(n):
                    px = (0.5 * tint + 0.5 * rng.integers(0, 256, (32, 32, 3))).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(px).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"tiny/{split}/class{c}/{i}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def _keep_in_logs(p: Path) -> bool:
    """Logs and small result files; no checkpoints, caches or compiled artefacts."""
    if p.suffix in (".pt", ".npz", ".tmp") or "cache" in p.parts:
        return False
    return p.stat().st_size < 2 * 2**20


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def gpu_line() -> str | None:
    """``nvidia-smi``'s name, memory and driver (without creating a CUDA context here)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _section_body(path: Path) -> str | None:
    """The text between the first pair of section markers of a Markdown file written by a
    benchmark script (``<!-- key:begin -->`` ... ``<!-- key:end -->``)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(r"<!-- ([\w:-]+):begin -->\n(.*?)\n<!-- \1:end -->", text, re.S)
    return m.group(2) if m else None


# -- the sections --------------------------------------------------------------------------
def section_loss(s: Suite, budget: float) -> dict[str, Any]:
    js, md = s.work / "loss_speed.json", s.work / "loss_speed.md"
    cmd = [sys.executable, str(BENCH / "loss_speed.py"), "--json", str(js), "--out", str(md)]
    if s.dry:
        cmd += ["--device", "cpu", "--sizes", "16", "--repeats", "1", "--no-memory"]
        cmd += ["--losses", "infonce,gca-uot[implicit]"]  # (the profiler's start costs seconds)
    else:
        cmd += ["--device", "cuda", "--sizes", "4096,8192", "--repeats", "20"]
        cmd += ["--profile", "infonce,gca-uot,gca-uot[implicit]"]
    cmd += ["--dim", "128", "--iters", "20", "--dtype", "bf16"]
    entry = s.run("loss", cmd, budget)
    entry["result"] = _read_json(js)
    entry["markdown"] = _section_body(md)
    if entry["status"] != "ok" and entry["result"]:
        entry["status"] += f"; sizes finished: {', '.join(entry['result']['results'])}"
    return entry


def section_train(s: Suite, budget: float) -> dict[str, Any]:
    t0 = time.time()
    why = s.wait_data(budget)
    if why:
        return {"status": f"skipped: {why}", "seconds": time.time() - t0}
    js, md = s.work / "train_speed.json", s.work / "train_speed.md"
    cmd = [sys.executable, str(BENCH / "train_speed.py"), "--json", str(js), "--out", str(md)]
    cmd += ["--tmp", str(s.work / "train_speed_runs")]
    if s.dry:  # one loss: the plumbing, in seconds
        cmd += ["--losses", "gca-uot"]
        cmd += ["--device", "cpu", "--data-dir", s.data, "--batch-size", "8"]
        cmd += ["--warmup", "1", "--block", "1", "--rounds", "1"]
        cmd += ["--set", "model.arch=small-cnn", "--set", "model.width=4"]
    else:
        cmd += ["--losses", "infonce,gca-uot", "--compile-loss-for", "gca-uot"]
        cmd += ["--device", "cuda", "--data-dir", s.data, "--compile", "--batch-size", "512"]
        cmd += ["--warmup", "30", "--block", "20", "--rounds", "5"]
    entry = s.run("train", cmd, budget - (time.time() - t0))
    entry["seconds"] = time.time() - t0
    entry["result"] = _read_json(js)
    entry["markdown"] = _section_body(md)
    return entry


def section_syncs(s: Suite, budget: float) -> dict[str, Any]:
    js, md = s.work / "graph_breaks.json", s.work / "graph_breaks.md"
    cmd = [sys.executable, str(BENCH / "graph_breaks.py"), "--json", str(js)]
    if s.dry:
        cmd += ["--device", "cpu", "--losses", "gca-uot"]  # tracing fails there: that path too
    else:
        cmd += ["--device", "cuda", "--n", "512", "--dim", "128", "--augment"]
    entry = s.run("syncs", cmd, budget, stdout=md)
    entry["result"] = _read_json(js)
    entry["markdown"] = md.read_text() if md.exists() else None
    return entry


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
        "--nproc-per-node",
        str(nproc),
    ]


def section_multigpu(s: Suite, budget: float) -> dict[str, Any]:
    """The multi-GPU check on one GPU: the global-batch losses under torchrun (NCCL) with 1
    and 2 ranks, and a world-size-1 torchrun training next to the single-process one."""
    t0 = time.time()
    entry: dict[str, Any] = {"loss_checks": {}, "training": {}}
    states = []
    for nproc in (1,) if s.dry else (1, 2):  # (a dry run: the launcher and one rank)
        js = s.work / f"distributed_loss_{nproc}.json"
        cmd = [*_torchrun(nproc), str(BENCH / "distributed_loss_check.py"), "--json", str(js)]
        if s.dry:
            cmd += ["--device", "cpu", "--pairs", "32", "--dim", "16", "--repeats", "2"]
            cmd += ["--losses", "gca-uot"]
        else:
            cmd += ["--device", "cuda", "--pairs", "4096", "--dim", "128"]
        r = s.run(f"multigpu-loss-{nproc}", cmd, min(40.0, budget - (time.time() - t0)))
        r["result"] = _read_json(js)
        entry["loss_checks"][str(nproc)] = r
        states.append(f"losses, {nproc} rank(s): {r['status']}")
    why = s.wait_data(budget - (time.time() - t0))
    if why:
        states.append(f"training: skipped: {why}")
        entry["status"] = "; ".join(states)
        entry["seconds"] = time.time() - t0
        return entry
    common = ["train", "--epochs", "2", "--no-progress", "--dataset", "cifar10"]
    common += ["--data-dir", s.data]
    if s.dry:
        common += ["--device", "cpu", "--set", "train.max_steps_per_epoch=3", "--batch-size", "8"]
        common += ["--set", "model.arch=small-cnn", "--set", "model.width=4"]
    else:
        common += ["--device", "cuda", "--compile", "--set", "train.max_steps_per_epoch=60"]
    runs = {
        "single": [sys.executable, "-m", "otcl.cli"],
        "torchrun": [*_torchrun(1), "-m", "otcl.cli"],
    }
    tr: dict[str, Any] = {"runs": {}}
    for i, (name, prefix) in enumerate(runs.items()):
        out = s.work / "multigpu" / name
        left = budget - (time.time() - t0)
        r = s.run(f"multigpu-{name}", [*prefix, *common, "--out", str(out)], left / (2 - i))
        r["summary"] = _read_json(out / "summary.json")
        tr["runs"][name] = r
    rates = {k: (v["summary"] or {}).get("views_per_s") for k, v in tr["runs"].items()}
    tr["views_per_s"] = rates
    log = s.logs / "multigpu-torchrun.log"
    tr["backend_seen"] = [b for b in ("nccl", "gloo") if b in log.read_text().lower()]
    if all(rates.values()):
        tr["torchrun_vs_single"] = rates["torchrun"] / rates["single"]
    bad = [f"{k}: {v['status']}" for k, v in tr["runs"].items() if v["status"] != "ok"]
    tr["status"] = "; ".join(bad) or "ok"
    entry["training"] = tr
    states.append(f"training: {tr['status']}")
    entry["status"] = "; ".join(states)
    entry["seconds"] = time.time() - t0
    return entry


def section_streaming(s: Suite, budget: float) -> dict[str, Any]:
    js, md = s.work / "streaming.json", s.work / "streaming.md"
    cmd = [sys.executable, str(BENCH / "streaming.py"), "--json", str(js), "--out", str(md)]
    cmd += ["--losses", "gca-uot", "--dim", "128", "--iters", "10"]
    if s.dry:
        cmd += ["--device", "cpu", "--threads", "1", "--sizes", "32", "--tile", "16"]
        cmd += ["--repeats", "1", "--in-process"]
    else:
        cmd += ["--device", "cuda", "--sizes", "8192,32768,65536", "--tile", "4096"]
        cmd += ["--repeats", "3", "--repeats-above", "32768", "--dense-max-gib", "60"]
    entry = s.run("streaming", cmd, budget)
    entry["result"] = _read_json(js)
    entry["markdown"] = _section_body(md)
    return entry


def section_accuracy(s: Suite, budget: float) -> dict[str, Any]:
    t0 = time.time()
    why = s.wait_data(budget)
    if why:
        gpu_accuracy.copy_state(s.args.resume_from and Path(s.args.resume_from), s.out / "state")
        return {"status": f"skipped: {why}", "seconds": time.time() - t0}
    train = (s.summary["sections"].get("train") or {}).get("result") or {}
    fallback = ((train.get("methods") or {}).get("otcl:infonce") or {}).get("views_per_s")
    try:
        res = gpu_accuracy.run_section(
            state_in=Path(s.args.resume_from) if s.args.resume_from else None,
            state_out=s.out / "state",
            work=s.work / "accuracy",
            budget_s=budget - (time.time() - t0),
            data_dir=s.data,
            dry_run=s.dry,
            call={"id": s.call_id, "device": s.summary["gpu"] or "cpu"},
            procs=s.args.procs,
            measure=not s.args.no_measure,
            state_limit_mib=s.args.state_limit_mib,
            stop_after_steps=s.args.acc_stop_after_steps,
            fallback_rate=fallback,
            log=s.log,
        )
    except ValueError as e:
        gpu_accuracy.copy_state(s.args.resume_from and Path(s.args.resume_from), s.out / "state")
        return {"status": f"failed: {e}", "seconds": time.time() - t0}
    res["seconds"] = time.time() - t0
    return res


# -- the summary for people ----------------------------------------------------------------
def status_table(summary: dict[str, Any]) -> list[str]:
    """The sections' status, time and budget as a Markdown table."""
    lines = ["| section | status | seconds | budget |", "|---|---|---:|---:|"]
    for name, e in summary["sections"].items():
        b = e.get("budget_s")
        budget = "" if b is None else f"{b:.0f}"
        lines.append(f"| {name} | {e['status']} | {e.get('seconds', 0):.1f} | {budget} |")
    return lines


def finding_lines(summary: dict[str, Any], level: str = "##") -> list[str]:
    """Every section's headline figures in Markdown (the suite's summary.md and record_gpu.py's
    ``gpu_suite:cuda`` section): the targets, graph breaks and syncs, multi-GPU, concurrency."""
    secs = summary["sections"]
    lines: list[str] = []
    loss = (secs.get("loss") or {}).get("result") or {}
    if loss.get("target"):
        lines += ["", f"{level} Loss speed", "", *loss["target"]]
    train = (secs.get("train") or {}).get("result") or {}
    if train.get("methods"):
        lines += ["", f"{level} Training throughput", ""]
        for k, v in train["methods"].items():
            comp = v.get("compile_s")
            lines.append(
                f"- {k}: {v['views_per_s']:,.0f} views/s; first step {v['first_step_s']:.1f} s"
                + (f", of which compilation {comp:.1f} s" if comp is not None else "")
            )
        if train.get("target"):
            lines += ["", train["target"]]
    syncs = (secs.get("syncs") or {}).get("markdown")
    if syncs:
        lines += ["", f"{level} Graph breaks and device syncs", "", syncs.strip()]
    mg = secs.get("multigpu")
    if mg:
        lines += ["", f"{level} Multi-GPU", "", f"- {mg['status']}"]
        for nproc, r in (mg.get("loss_checks") or {}).items():
            res = r.get("result") or {}
            for name, row in (res.get("losses") or {}).items():
                agree = f", values agree: {row['agree']}" if "agree" in row else ""
                lines.append(
                    f"- {name}, {nproc} rank(s), {res.get('backend')}, N={res.get('n')}: local "
                    f"{row['local_ms']:.2f} ms, gather_distributed {row['gathered_ms']:.2f} ms"
                    f"{agree}"
                )
        tr = mg.get("training") or {}
        if tr.get("views_per_s"):
            ratio = tr.get("torchrun_vs_single")
            lines.append(
                f"- training views/s: single process {tr['views_per_s'].get('single')}, torchrun "
                f"world size 1 {tr['views_per_s'].get('torchrun')}"
                + (f" ({ratio:.3f}x)" if ratio else "")
                + f"; backend named in the log: {', '.join(tr.get('backend_seen') or []) or '-'}"
            )
    stream = (secs.get("streaming") or {}).get("result") or {}
    if stream.get("targets"):
        lines += ["", f"{level} Streaming OT losses", "", *stream["targets"]]
    acc = secs.get("accuracy") or {}
    conc = acc.get("concurrency") or {}
    if conc.get("levels"):
        lines += ["", f"{level} Concurrent trainings on the one GPU", ""]
        lines += ["| processes | views/s in total | per process |", "|---:|---:|---|"]
        for k, v in conc["levels"].items():
            per = ", ".join(f"{x:,.0f}" for x in v["per_process"])
            lines.append(f"| {k} | {v['total_views_per_s']:,.0f} | {per} |")
        lines += ["", f"Chosen: {conc.get('procs')} process(es) at a time ({conc.get('status')})."]
    return lines


def render_summary(summary: dict[str, Any]) -> str:
    gpu = summary.get("gpu") or ("no GPU (dry run)" if summary["dry_run"] else "unknown")
    lines = [
        f"# GPU suite, {summary['date']}",
        "",
        f"- device: {gpu}",
        f"- commit: {summary.get('commit') or 'unknown (pass --commit)'}; "
        f"python {summary['python']}",
        f"- budget {summary['budget_s']:.0f} s, wall {summary.get('wall_s', 0):.0f} s"
        + (", DRY RUN (CPU, tiny sizes)" if summary["dry_run"] else ""),
        f"- data preparation: {summary.get('data_prep_s', float('nan')):.1f} s",
        "",
        *status_table(summary),
        *finding_lines(summary),
    ]
    acc = summary["sections"].get("accuracy") or {}
    if acc.get("ledger"):
        lines += ["", "## Accuracy protocol", ""]
        lines += [f"- started {acc.get('started')}, finished {acc.get('finished')}", "", "```"]
        lines += acc["ledger"] + ["```"]
    return "\n".join(lines)


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
