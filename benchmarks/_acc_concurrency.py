"""The concurrency measurement of the accuracy protocol: total views/s with 1, 2, 4, ...
training processes on the one GPU, measured once (the ledger keeps it), and the number of
processes chosen from it. Part of ``gpu_accuracy.py`` (its ``bench`` command)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _acc_ledger import MODULE, run_config, save_json
from _children import Child, end


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
    """Views/s of each of ``procs`` processes: measured at that level, else the one-process rate
    (or ``fallback``) shared among them."""
    levels = (measurement or {}).get("levels") or {}
    if str(procs) in levels:
        return levels[str(procs)]["total_views_per_s"] / procs
    if "1" in levels:
        return levels["1"]["total_views_per_s"] / procs
    return fallback / procs
