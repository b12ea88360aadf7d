"""How ``loss_speed.py`` measures: interleaved timings, peak memory (on CPU in a separate
process) and the top kernels of one call."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from _loss_methods import Method, make_method

#: the script whose ``--memory-worker`` measures the peak memory on CPU
SCRIPT = Path(__file__).resolve().parent / "loss_speed.py"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _inputs(
    n: int, dim: int, device: str, dtype: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, dim, generator=g).to(device, DTYPES[dtype]).requires_grad_()
    z2 = torch.randn(n, dim, generator=g).to(device, DTYPES[dtype]).requires_grad_()
    return z1, z2


def _call(method: Method, z1: torch.Tensor, z2: torch.Tensor) -> None:
    z1.grad = z2.grad = None
    out = method.fn(z1, z2)
    if method.backward:
        out.backward()


def _timed(method: Method, z1, z2, device: str) -> float:
    z1.grad = z2.grad = None
    _sync(device)
    start = time.perf_counter()
    out = method.fn(z1, z2)
    if method.backward:
        out.backward()
    _sync(device)
    return time.perf_counter() - start


def naive_fits(n: int, iters: int, device: str) -> bool:
    """Whether autograd through the naive loop (~2 iters + 6 matrices of (2n)^2) fits in memory."""
    need = (2 * iters + 6) * (2 * n) ** 2 * 4
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        free = 0
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    return need < 0.5 * free


def default_repeats(n: int, device: str) -> int:
    """Timed calls per method: more for small, cheap (and noisier) sizes."""
    if device == "cuda":
        return 20
    return 21 if n <= 256 else 15 if n <= 1024 else 7


def time_methods(methods, n, dim, device, repeats, warmup, slow_s, dtype="fp32"):
    """Interleaved timings ``{label: [seconds]}`` and the set of slow labels: a method whose
    warm-up call took more than ``slow_s`` seconds (the naive reference at large N) is timed in
    the first ``min(3, repeats)`` rounds only."""
    z1, z2 = _inputs(n, dim, device, dtype)
    slow = set()
    for m in methods:
        for _ in range(warmup):
            if _timed(m, z1, z2, device) > slow_s:
                slow.add(m.label)
    times: dict[str, list[float]] = {m.label: [] for m in methods}
    for r in range(repeats):
        shift = r % len(methods)
        for m in methods[shift:] + methods[:shift]:  # round-robin, rotating start
            if m.label in slow and r >= 3:
                continue
            times[m.label].append(_timed(m, z1, z2, device))
    return times, slow


def _proc_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_memory_here(methods, n, dim, device, no_warmup=(), dtype="fp32") -> dict[str, int]:
    """Peak extra bytes of one call of each method, in this process."""
    z1, z2 = _inputs(n, dim, device, dtype)
    peaks = {}
    for m in methods:
        # warm-up: lazy initialisation is not the method's memory (always for the first one)
        if m.label not in no_warmup or m is methods[0]:
            _call(m, z1, z2)
        z1.grad = z2.grad = None
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            _call(m, z1, z2)
            torch.cuda.synchronize()
            peaks[m.label] = torch.cuda.max_memory_allocated() - before
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current resident set
            before = _proc_kib("VmRSS")
            _call(m, z1, z2)
            peaks[m.label] = (_proc_kib("VmHWM") - before) * 1024
        z1.grad = z2.grad = None
    return peaks


def peak_memory(labels, n, args, slow=()) -> dict[str, int]:
    """Peak memory per method; the ``slow`` ones are measured without a warm-up call."""
    if args.device == "cuda":
        methods = [make_method(lab, args.iters, args.device) for lab in labels]
        return peak_memory_here(methods, n, args.dim, args.device, slow, args.dtype)
    cmd = [sys.executable, str(SCRIPT), "--memory-worker", "--device", "cpu"]
    cmd += ["--sizes", str(n), "--dim", str(args.dim), "--iters", str(args.iters)]
    cmd += ["--dtype", args.dtype]
    cmd += ["--losses", ",".join(labels), "--threads", str(torch.get_num_threads())]
    if slow:
        cmd += ["--memory-no-warmup", ",".join(slow)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def profile_kernels(method: Method, n: int, args, top: int = 10) -> dict:
    """The ``top`` operators/kernels by self time in one call (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    z1, z2 = _inputs(n, args.dim, args.device, args.dtype)
    _call(method, z1, z2)
    _sync(args.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        _call(method, z1, z2)
        _sync(args.device)
    attr = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    kernels = [
        {"name": e.key, "ms": getattr(e, attr) / 1e3, "calls": int(e.count)} for e in events[:top]
    ]
    return {"n": n, "total_ms": total / 1e3, "time": attr, "kernels": kernels}
