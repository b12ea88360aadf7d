"""The accuracy protocol's scheduler: one suite run's share of the protocol within its budget
(carried runs expanded, workers started while the carry rule allows, stopped at the deadline,
the next state written). Part of ``gpu_accuracy.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from _acc_concurrency import choose_procs, measure_concurrency, per_process_rate
from _acc_ledger import (
    COST,
    DRY_PROTOCOL,
    LEDGER,
    MODULE,
    PROTOCOL,
    comparable,
    load_ledger,
    new_ledger,
    recipe,
    remaining,
    run_config,
    status_lines,
)
from _acc_state import expand_checkpoint, read_parts, write_state
from _children import Child, end

STOP = "STOP"
CIFAR10_TRAIN = 50_000
#: per-run overheads assumed before any were measured: process start + data + compile, and eval
DEFAULT_OVERHEAD = {
    "gpu": {"startup_s": 60.0, "eval_s": 30.0},
    "dry": {"startup_s": 8.0, "eval_s": 5.0},
}


def views_left(ledger: dict[str, Any], run: dict[str, Any]) -> float:
    """Views the run still has to train (its remaining steps times its views per step)."""
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
