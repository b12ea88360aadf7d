"""The sections of the GPU suite: each runs its benchmark script (or the accuracy protocol)
within its budget and returns its entry of the summary (status, seconds, numbers, Markdown).
Part of ``gpu_suite.py``."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import gpu_accuracy
from _suite_run import Suite

BENCH = Path(__file__).resolve().parent


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
