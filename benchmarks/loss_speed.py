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
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

import otcl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, replace_section, versions  # noqa: E402


def _pot():
    """POT (an optional reference), imported on first use (it takes seconds); None if absent."""
    try:
        import ot
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return ot


BASELINE = "infonce"
NAIVE = "naive-unrolled"
POT_NAME = "pot-sinkhorn_log"
TEMPERATURE = 0.5  # every loss's default temperature; the references use the same
DEFAULT_SIZES = {"cpu": "256,1024,2048", "cuda": "256,1024,4096,8192"}
# the speed targets (docs/benchmarks.md): (N, max time ratio, max memory ratio or None)
TARGETS = {"cpu": (1024, 3.0, None), "cuda": (8192, 2.0, 1.5)}
ITERATIVE = ("balanced", "unbalanced")


# -- methods -------------------------------------------------------------------------------
def naive_unrolled_loss(
    z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = TEMPERATURE, iters: int = 20
) -> torch.Tensor:
    """The straightforward OT loss: autograd through ``iters`` log-domain Sinkhorn iterations.

    SimCLR layout (2N views, self-pairs excluded), cosine scores / temperature, uniform
    marginals, cross-entropy of the row-normalised plan with the other view: the same value as
    ``gca-ince`` / ``iot`` with ``iters`` iterations.
    """
    n_pairs = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    scores = z @ z.T / temperature
    n = scores.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    scores = scores.masked_fill(eye, float("-inf"))
    log_a = -math.log(n)
    f = torch.zeros(n, device=scores.device)
    g = torch.zeros(n, device=scores.device)
    for _ in range(iters):
        f = log_a - torch.logsumexp(scores + g[None, :], dim=1)
        g = log_a - torch.logsumexp(scores + f[:, None], dim=0)
    log_plan = f[:, None] + scores + g[None, :]
    idx = torch.arange(n_pairs, device=scores.device)
    return F.cross_entropy(log_plan, torch.cat([idx + n_pairs, idx]))


def pot_forward(z1: torch.Tensor, z2: torch.Tensor, *, iters: int = 20) -> None:
    """POT's log-domain Sinkhorn on the same problem, forward only (no gradient)."""
    with torch.no_grad():
        z = F.normalize(torch.cat([z1, z2]), dim=-1)
        cost = 1.0 - z @ z.T
        cost.fill_diagonal_(1e4)  # self-pairs: exp(-1e4 / eps) = 0
        n = cost.shape[0]
        a = torch.full((n,), 1.0 / n, device=cost.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _pot().bregman.sinkhorn_log(a, a, cost, TEMPERATURE, numItermax=iters, stopThr=0.0)


@dataclass
class Method:
    label: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]
    backward: bool = True
    note: str = ""


def _is_ot_coupling(loss: torch.nn.Module) -> bool:
    return isinstance(loss, otcl.losses.OTContrastiveLoss) and loss.constraint in ITERATIVE


def _build(name: str, iters: int, **extra) -> torch.nn.Module:
    """The loss with its defaults, ``iters`` where it has Sinkhorn iterations, and ``extra`` where
    it applies (closed forms take neither)."""
    params = {"iters": iters, **extra}
    known = otcl.losses.parameters(name)
    drop = otcl.losses.inapplicable_params(name, params)
    return otcl.losses.build(
        name, **{k: v for k, v in params.items() if k in known and k not in drop}
    )


def all_labels(iters: int) -> list[str]:
    """Every method label, InfoNCE first."""
    names = otcl.losses.available()
    labels = [BASELINE] + [n for n in names if n != BASELINE]
    labels += [f"{n}[implicit]" for n in names if _is_ot_coupling(_build(n, iters))]
    labels.append(NAIVE)
    if _pot() is not None:
        labels.append(POT_NAME)
    return labels


def make_method(label: str, iters: int, device: str) -> Method:
    if label == NAIVE:
        return Method(label, lambda a, b: naive_unrolled_loss(a, b, iters=iters))
    if label == POT_NAME:
        if _pot() is None:
            raise ValueError("--losses: POT is not installed")
        return Method(label, lambda a, b: pot_forward(a, b, iters=iters), False, "forward only")
    m = re.fullmatch(r"([\w-]+)\[implicit\]", label)
    if m:
        loss = _build(m.group(1), iters, grad="implicit")
        if not _is_ot_coupling(loss):
            raise ValueError(f"--losses: {m.group(1)!r} has no Sinkhorn coupling")
        return Method(label, loss.to(device))
    if label not in otcl.losses.available():
        raise ValueError(f"--losses: unknown method {label!r}")
    return Method(label, _build(label, iters).to(device))


# -- measurement ---------------------------------------------------------------------------
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
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", "--device", "cpu"]
    cmd += ["--sizes", str(n), "--dim", str(args.dim), "--iters", str(args.iters)]
    cmd += ["--dtype", args.dtype]
    cmd += ["--losses", ",".join(labels), "--threads", str(torch.get_num_threads())]
    if slow:
        cmd += ["--memory-no-warmup", ",".join(slow)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- report --------------------------------------------------------------------------------
def _fmt_ms(sec: float) -> str:
    ms = sec * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _fmt_mib(b: int) -> str:
    mib = b / 2**20
    return f"{mib:.1f}" if mib < 100 else f"{mib:.0f}"


def _ratio(x: float, base: float | None) -> str:
    return f"{x / base:.2f}x" if base and base > 0 else "n/a"


def render(device: str, results: dict, labels: list[str], notes: dict, meta: dict) -> str:
    sizes = sorted(results)
    head = "| method | " + " | ".join(f"N={n}" for n in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    time_rows, mem_rows = [head, rule], [head, rule]
    for lab in labels:
        tcells, mcells = [], []
        for n in sizes:
            med, mem = results[n]["time"], results[n]["mem"]
            if lab not in med:
                tcells.append(results[n]["skipped"].get(lab, "-"))
                mcells.append(results[n]["skipped"].get(lab, "-"))
                continue
            dagger = " †" if lab in results[n].get("slow", ()) else ""
            tcells.append(f"{_fmt_ms(med[lab])} ({_ratio(med[lab], med.get(BASELINE))}){dagger}")
            if lab in mem:
                mcells.append(f"{_fmt_mib(mem[lab])} ({_ratio(mem[lab], mem.get(BASELINE))})")
            else:
                mcells.append("-")
        name = f"{lab} ({notes[lab]})" if notes.get(lab) else lab
        if lab == BASELINE:
            name = f"**{name}**"
        time_rows.append(f"| {name} | " + " | ".join(tcells) + " |")
        mem_rows.append(f"| {name} | " + " | ".join(mcells) + " |")
    title = "GPU" if device == "cuda" else "CPU"
    mem_what = (
        "`torch.cuda.max_memory_allocated` during one call minus the memory allocated before it"
        if device == "cuda"
        else "growth of the peak resident set (VmHWM) during one call, in a separate process "
        "with glibc's mmap threshold pinned at 64 KiB (freed tensors return to the OS)"
    )
    lines = [
        f"## {title}",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- versions: {meta['versions']}",
        f"- command: `{meta['command']}`",
        f"- setup: d={meta['dim']}, {meta['iters']} Sinkhorn iterations, temperature "
        f"{TEMPERATURE}, simclr layout (2N x 2N score matrix), {meta.get('dtype', 'fp32')} "
        f"embeddings (the losses compute in float32); {meta['warmup']} warm-up "
        f"call(s) per method, then interleaved repeats ({meta['repeats']}; †: warm-up call "
        f"over {meta['slow_s']:g} s, timed in the first 3 repeats only)",
        "",
        "Forward + backward time, median ms (ratio to InfoNCE's median):",
        "",
        *time_rows,
        "",
        f"Peak memory of one call, MiB (ratio to InfoNCE); {mem_what}:",
        "",
        *mem_rows,
        "",
        *interpret(device, results, labels),
    ]
    return "\n".join(lines)


def interpret(device: str, results: dict, labels: list[str]) -> list[str]:
    n_target, t_max, m_max = TARGETS[device]
    what = f"N={n_target}: forward + backward <= {t_max:g}x InfoNCE"
    if m_max is not None:
        what += f" and peak memory <= {m_max:g}x InfoNCE"
    if n_target not in results:
        return [f"Target ({what}): not checked, N={n_target} was not measured in this run."]
    med, mem = results[n_target]["time"], results[n_target]["mem"]
    base_t, base_m = med.get(BASELINE), mem.get(BASELINE)
    if base_t is None:
        return [f"Target ({what}): not checked, InfoNCE was not measured."]
    ot_losses = [lab for lab in labels if lab in med and lab in COUPLING_LOSSES]
    checks = []
    for lab in ot_losses:
        ok = med[lab] / base_t <= t_max
        text = f"{lab} {med[lab] / base_t:.2f}x"
        if m_max is not None and lab in mem and base_m:
            ok = ok and mem[lab] / base_m <= m_max
            text += f" / {mem[lab] / base_m:.2f}x mem"
        checks.append((ok, text))
    met = [t for ok, t in checks if ok]
    missed = [t for ok, t in checks if not ok]
    out = [f"Target ({what}) for the OT-coupling losses (default unrolled gradients):"]
    out.append(
        f"**met** by {len(met)}/{len(checks)}" + (f" ({', '.join(met)})" if met else "") + "; "
        f"**missed** by {len(missed)}" + (f" ({', '.join(missed)})" if missed else "") + "."
    )
    extra = []
    if NAIVE in med:
        extra.append(f"the naive unrolled loss is at {med[NAIVE] / base_t:.2f}x")
    impl = [lab for lab in labels if lab.endswith("[implicit]") and lab in med]
    if impl:
        r = sorted(med[lab] / base_t for lab in impl)
        extra.append(f"the implicit-gradient variants at {r[0]:.2f}x to {r[-1]:.2f}x")
    if extra:
        out[-1] += " For comparison, " + " and ".join(extra) + "."
    return out


COUPLING_LOSSES = ("iot", "iot-uni", "gca-ince", "gca-rince", "gca-uot")

PLACEHOLDER = {
    "cuda": "## GPU\n\nNot measured yet on a GPU; run "
    "`python benchmarks/loss_speed.py --device cuda` on a GPU to fill it.",
    "cpu": "## CPU\n\nNot measured yet: run `python benchmarks/loss_speed.py` to fill it.",
}

HEADER = """# Benchmarks

Generated by `benchmarks/loss_speed.py` (losses alone) and `benchmarks/train_speed.py` (whole
training steps); each script's device section (between its markers) is replaced when the script
runs on that device, the rest of this page is kept. In `loss_speed`, every loss runs
with 20 Sinkhorn iterations against InfoNCE in the same process, calls interleaved round-robin,
so the ratios are comparable within a section even on a noisy machine; absolute times are not
comparable between runs.
"""


def update_doc(path: Path, device: str, section: str) -> None:
    """Replace this device's section; the other device's keeps its numbers or a placeholder."""
    for dev in ("cpu", "cuda"):
        if dev == device:
            replace_section(path, f"loss_speed:{dev}", section, header=HEADER)
        else:
            replace_section(path, f"loss_speed:{dev}", PLACEHOLDER[dev], header=HEADER, keep=True)


# -- machine-readable output and kernel profiles -------------------------------------------
def write_json(path: Path, args, results, labels, used_repeats, profiles=None) -> None:
    """Every number of the run so far (rewritten after each N; atomic rename)."""
    data = {
        "device": args.device,
        "machine": machine(args.device),
        "versions": versions(),
        "dtype": args.dtype,
        "dim": args.dim,
        "iters": args.iters,
        "repeats": {str(n): r for n, r in used_repeats.items()},
        "labels": labels,
        "results": {
            str(n): {
                "time_s": r["time"],
                "mem_bytes": r["mem"],
                "skipped": r["skipped"],
                "slow": sorted(r["slow"]),
            }
            for n, r in results.items()
        },
        "target": interpret(args.device, results, labels),
        "profiles": profiles or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


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


def render_profiles(profiles: dict) -> str:
    lines = []
    for lab, pr in profiles.items():
        if "error" in pr:
            lines += [f"Profile of `{lab}` failed: {pr['error']}", ""]
            continue
        lines += [
            f"Top kernels of one `{lab}` call at N={pr['n']} ({pr['time'].replace('_', ' ')}, "
            f"{pr['total_ms']:.2f} ms in all):",
            "",
            "| kernel / operator | ms | calls |",
            "|---|---:|---:|",
        ]
        for k in pr["kernels"]:
            name = k["name"].replace("|", "/")[:100]
            lines.append(f"| `{name}` | {k['ms']:.3f} | {k['calls']} |")
        lines.append("")
    return "\n".join(lines).rstrip()


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
