"""Streaming (tiled) OT losses vs dense, and vs a streaming InfoNCE: memory, time, passes.

For each batch size N (pairs; the ``simclr`` layout couples 2N x 2N views), d = 128, each method
runs forward + backward of its loss on random embeddings in a fresh process:

* ``infonce:dense`` / ``gca-uot:dense`` / ...: ``build(name)`` (the stored n x n scores);
* ``gca-uot:streaming`` / ...: ``build(name, geometry="streaming", tile_size=T)``;
* ``infonce:streaming``: the Inf-CL recipe (``otcl.losses.streaming_infonce``), the same tiles.

Reported per run: the median wall time of forward + backward; the peak memory it adds on top of
the inputs (CPU: the process's peak resident set, reset before the call through
``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``); the number of passes over
the n x n x d scores (one tile matmul of every row = one pass; the streamed ones counted while they
run, the dense ones 3: scores forward, two gradient products backward); time per pass. Dense runs
whose matrices would not fit (``--dense-max-gib``, estimated from the dense peak measured at the
largest size that ran, which grows as n^2) are reported as "does not fit" with that size.

The targets it checks (CPU): at N = 8192 the streaming gca-uot adds at most 1/10 of the dense
path's peak; doubling N at a fixed tile grows the streaming peak at most 2.2x; the largest N
completes; the streaming gca-uot's time per pass is within 1.3x of the streaming InfoNCE's at
N = 8192.

    python benchmarks/streaming.py --sizes 1024,4096,8192,16384,32768 --out streaming.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

DENSE_SCORE_PASSES = 3  # the scores forward, their two gradient products backward
BASELINE_PASSES = {"score": 2, "grad": 2}  # Inf-CL: scores forward, again backward; 2 products


# -- one measurement (a child process) -----------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> dict:
    import torch

    import otcl
    from otcl.losses.streaming_infonce import streaming_infonce
    from otcl.ot.streaming import TileSpec

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name, geometry = args.method.split(":")
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(args.n, args.dim, generator=g).to(dev).requires_grad_()
    z2 = (z1.detach() + 0.5 * torch.randn(args.n, args.dim, generator=g).to(dev)).requires_grad_()
    options = {"iters": args.iters} if name != "infonce" else {}
    if geometry == "streaming" and name == "infonce":

        def loss_fn(a, b):
            return streaming_infonce(a, b, tile_size=args.tile)

    elif geometry == "streaming":
        loss_fn = otcl.losses.build(name, geometry="streaming", tile_size=args.tile, **options)
    else:
        loss_fn = otcl.losses.build(name, **options)

    counts = {"score": 0, "grad": 0}
    real_scores, real_backprop = TileSpec.scores, TileSpec.backprop

    def scores(self, x, y, r0, r1):
        counts["score"] += r1 - r0
        return real_scores(self, x, y, r0, r1)

    def backprop(self, x, y, r0, r1, *rest):
        counts["grad"] += 2 * (r1 - r0)
        return real_backprop(self, x, y, r0, r1, *rest)

    TileSpec.scores, TileSpec.backprop = scores, backprop
    try:
        return _measure(args, torch, dev, name, geometry, loss_fn, z1, z2, counts)
    finally:
        TileSpec.scores, TileSpec.backprop = real_scores, real_backprop


def _measure(args, torch, dev, name, geometry, loss_fn, z1, z2, counts) -> dict:

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        z1.grad = z2.grad = None
        loss_fn(z1, z2).backward()

    w1, w2 = z1[:16].detach().requires_grad_(), z2[:16].detach().requires_grad_()
    loss_fn(w1, w2).backward()  # warm-up: kernels, thread pool (untimed, before the baseline)
    counts.update(score=0, grad=0)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak()
        base = _rss_bytes()
    times = []
    t0 = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (_peak_bytes() - base) if reset else None
    n_rows = 2 * args.n  # the simclr layout
    if geometry == "streaming" and name != "infonce":
        passes = {k: v / n_rows for k, v in counts.items()}
    elif geometry == "streaming":
        passes = dict(BASELINE_PASSES)
    else:
        passes = {"score": 1, "grad": 2}
    for _ in range(args.repeats - 1):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_bytes": peak, "passes": passes}


# -- the driver ------------------------------------------------------------------------------
def run_child(method: str, n: int, args: argparse.Namespace, repeats: int) -> dict:
    if args.in_process:  # (the dry run: no process start per method; memory not isolated)
        ns = argparse.Namespace(**{**vars(args), "method": method, "n": n, "repeats": repeats})
        return child(ns)
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--dim", str(args.dim)]
    cmd += ["--tile", str(args.tile), "--iters", str(args.iters), "--repeats", str(repeats)]
    cmd += ["--device", args.device, "--threads", str(args.threads)]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {
            "error": (res.stderr or res.stdout).strip().splitlines()[-1:],
            "wall": time.time() - t0,
        }
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall"] = time.time() - t0
    return out


def gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", default="1024,4096,8192,16384,32768", help="N (pairs), comma-separated"
    )
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--tile", type=int, default=512, help="rows per tile")
    p.add_argument("--iters", type=int, default=10, help="Sinkhorn iterations")
    p.add_argument("--losses", default="gca-uot,gca-ince,iot-uni", help="OT losses to stream")
    p.add_argument(
        "--stream-all-max",
        type=int,
        default=8192,
        help="OT losses besides the first beyond this N: skipped",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls per run (median)")
    p.add_argument("--repeats-above", type=int, default=8192, help="beyond this N: 1 call")
    p.add_argument(
        "--dense-max-gib", type=float, default=12.0, help="dense runs above this estimate: not run"
    )
    p.add_argument("--only", default="", help="run only these methods (comma-separated)")
    p.add_argument("--combine", nargs="+", help="render the Markdown of these --json files")
    p.add_argument("--in-process", action="store_true", help="every method in this process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="raw results")
    p.add_argument("--out", help="Markdown report")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.__class__(**{**vars(args), "method": args.child}))))
        return 0

    import torch

    import otcl

    losses = [x for x in args.losses.split(",") if x]
    if args.combine:  # several runs (e.g. the largest N on its own) in one report
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        results = {}
        for part in parts:
            for n, row in part["results"].items():
                results.setdefault(n, {}).update(row)
        sizes = sorted(int(n) for n in results)
        results = {str(n): results[str(n)] for n in sizes}
        for method in ("infonce:dense", f"{losses[0]}:dense"):  # dense beyond what ran
            ran = [n for n in sizes if (results[str(n)].get(method) or {}).get("peak_bytes")]
            if not ran:
                continue
            n0, peak0 = ran[-1], results[str(ran[-1])][method]["peak_bytes"]
            for n in sizes:
                est = peak0 * (n / n0) ** 2
                if n > n0 and method not in results[str(n)] and est > args.dense_max_gib * 2**30:
                    row = {"does_not_fit": est, "matrix_bytes": (2 * n) ** 2 * 4}
                    results[str(n)] = {method: row, **results[str(n)]}
        report = {"info": parts[0]["info"], "results": results}
        report["targets"] = targets(results, losses[0], sizes)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        md = render(report, losses[0])
        if args.out:
            Path(args.out).write_text(md + "\n")
        print(md)
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    results: dict = {}
    dense_peak: dict[str, tuple[int, float]] = {}  # method -> (n, peak) of the largest run
    for n in sizes:
        row: dict = {}
        repeats = args.repeats if n <= args.repeats_above else 1
        methods = ["infonce:dense", f"{losses[0]}:dense", "infonce:streaming"]
        methods += [f"{x}:streaming" for x in losses if x == losses[0] or n <= args.stream_all_max]
        if args.only:
            methods = [m for m in methods if m in args.only.split(",")]
        for method in methods:
            if method.endswith(":dense") and method in dense_peak:
                n0, peak0 = dense_peak[method]
                est = peak0 * (n / n0) ** 2
                if est > args.dense_max_gib * 2**30:
                    matrix = (2 * n) ** 2 * 4
                    row[method] = {"does_not_fit": est, "matrix_bytes": matrix}
                    print(f"N={n} {method}: does not fit (~{gib(est)} GiB)", flush=True)
                    continue
            r = run_child(method, n, args, repeats)
            row[method] = r
            if method.endswith(":dense") and r.get("peak_bytes"):
                dense_peak[method] = (n, r["peak_bytes"])
            print(f"N={n} {method}: {json.dumps(r)}", flush=True)
        results[str(n)] = row
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "otcl": otcl.__version__,
        "device": args.device,
        "threads": args.threads,
        "dim": args.dim,
        "tile": args.tile,
        "iters": args.iters,
    }
    report = {"info": info, "results": results, "targets": targets(results, losses[0], sizes)}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    md = render(report, losses[0])
    if args.out:
        Path(args.out).write_text(md + "\n")
    print(md)
    return 0


def _median(r: dict) -> float | None:
    return statistics.median(r["times"]) if r and "times" in r else None


def _per_pass(r: dict) -> float | None:
    t = _median(r)
    if t is None:
        return None
    return t / (r["passes"]["score"] + r["passes"]["grad"])


def targets(results: dict, ot: str, sizes: list[int]) -> list[str]:
    out = []
    at = results.get("8192") or {}
    dense, stream = at.get(f"{ot}:dense") or {}, at.get(f"{ot}:streaming") or {}
    if dense.get("peak_bytes") and stream.get("peak_bytes"):
        ratio = stream["peak_bytes"] / dense["peak_bytes"]
        out.append(
            f"- memory, N = 8192: {ot} streaming adds {gib(stream['peak_bytes'])} GiB, dense "
            f"{gib(dense['peak_bytes'])} GiB: {ratio:.3f} of it (target <= 0.1: "
            f"{'met' if ratio <= 0.1 else 'NOT met'})"
        )
    for a, b in zip(sizes, sizes[1:], strict=False):
        ra = (results.get(str(a)) or {}).get(f"{ot}:streaming") or {}
        rb = (results.get(str(b)) or {}).get(f"{ot}:streaming") or {}
        if ra.get("peak_bytes") and rb.get("peak_bytes"):
            g = rb["peak_bytes"] / ra["peak_bytes"]
            k = b / a
            limit = 2.2 ** math.log2(k)  # <= 2.2x per doubling of N
            out.append(
                f"- memory growth N = {a} -> {b} ({k:g}x N): {ot} streaming peak x{g:.2f} "
                f"(target <= 2.2x per doubling, {limit:.2f}x here: "
                f"{'met' if g <= limit else 'NOT met'})"
            )
    last = (results.get(str(sizes[-1])) or {}).get(f"{ot}:streaming") or {}
    if last:
        ok = "times" in last
        out.append(
            f"- N = {sizes[-1]} ({2 * sizes[-1]} x {2 * sizes[-1]}): {ot} streaming forward + "
            f"backward {'completed in ' + format(_median(last), '.0f') + ' s' if ok else 'FAILED'}"
            + (f", peak added {gib(last.get('peak_bytes'))} GiB" if ok else "")
        )
    inf = at.get("infonce:streaming") or {}
    if _per_pass(stream) and _per_pass(inf):
        r = _per_pass(stream) / _per_pass(inf)
        out.append(
            f"- time per pass, N = 8192: {ot} streaming {_per_pass(stream):.3f} s, InfoNCE "
            f"streaming {_per_pass(inf):.3f} s: {r:.2f}x (target <= 1.3: "
            f"{'met' if r <= 1.3 else 'NOT met'})"
        )
    return out


def render(report: dict, ot: str) -> str:
    info = report["info"]
    lines = [
        f"<!-- streaming:{info['device']}:begin -->",
        f"Measured {info['date']} on {info['machine']} ({info['device']}, {info['threads']} "
        f"threads), python {info['python']}, torch {info['torch']}, otcl {info['otcl']}; "
        f"d = {info['dim']}, tile = {info['tile']} rows, {info['iters']} Sinkhorn iterations, "
        "float32, the simclr layout (2N x 2N).",
        "",
        "| N | method | fwd+bwd (median s) | peak added (GiB) | passes (scores + grads) | "
        "s per pass |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n, row in report["results"].items():
        for method, r in row.items():
            if "does_not_fit" in r:
                lines.append(
                    f"| {n} | {method} | does not fit | ~{gib(r['does_not_fit'])} (one 2N x 2N "
                    f"fp32 matrix: {gib(r['matrix_bytes'])}) | | |"
                )
                continue
            if "error" in r:
                lines.append(f"| {n} | {method} | failed: {' '.join(r['error'])} | | | |")
                continue
            ps = r["passes"]
            lines.append(
                f"| {n} | {method} | {_median(r):.3f} | {gib(r['peak_bytes'])} | "
                f"{ps['score']:g} + {ps['grad']:g} | {_per_pass(r):.4f} |"
            )
    lines += ["", *report["targets"], f"<!-- streaming:{info['device']}:end -->"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
