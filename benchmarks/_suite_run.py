"""One suite run's state (:class:`Suite`: where things go, the clock, the summary so far, how a
section's process runs within its budget) and what it needs from the machine: a stable data
path, the tiny archive of ``--dry-run``, the commit, the GPU. Part of ``gpu_suite.py``."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _children
import gpu_accuracy
from _suite_summary import render_summary

ROOT = Path(__file__).resolve().parents[1]
#: seconds per section on a GPU (caps: a section that finishes early leaves its time)
BUDGETS = {"loss": 100.0, "train": 200.0, "syncs": 40.0, "multigpu": 60.0, "streaming": 90.0}
DRY_BUDGETS = {"loss": 60.0, "train": 60.0, "syncs": 60.0, "multigpu": 60.0, "streaming": 60.0}
PACK_RESERVE_S = 10.0
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
        """Decode the dataset once into the cache, in the background (the sections that train
        wait)."""
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
