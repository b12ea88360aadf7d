"""``loss_speed.py``'s report: the Markdown section of a device (times, memory, the target
verdict, kernel profiles), the page it lives in, and the JSON of every number."""

from __future__ import annotations

import json
import os
from pathlib import Path

from _loss_methods import BASELINE, NAIVE, TEMPERATURE
from _report import machine, replace_section, versions

# the speed targets (docs/benchmarks.md): (N, max time ratio, max memory ratio or None)
TARGETS = {"cpu": (1024, 3.0, None), "cuda": (8192, 2.0, 1.5)}


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
