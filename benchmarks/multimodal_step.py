"""Cost of one multimodal training step: each loss plain, + DMM (input mixing), + DMM (embedding).

One step = the objective of a batch of every modality (encoders, shared head, fusion, the
alignment terms, DMM's term when on) + backward + Adam, exactly as ``otcl multimodal train``
runs it (:class:`otcl.pipelines.multimodal.objectives.MultimodalObjective` on a model from
:func:`build_model`). DMM is timed with its weight on (``warmup=0``), i.e. after its ramp starts.
Variants run round-robin in blocks of ``--block`` steps after ``--warmup`` steps each; the table
gives the median milliseconds per step over rounds and the ratio to plain ``infonce``. Results
go to the ``multimodal_step:<device>`` section of ``docs/benchmarks.md``.

Usage::

    python benchmarks/multimodal_step.py                 # digits in 4 patches, CPU, 1 thread
    python benchmarks/multimodal_step.py --device cuda --threads 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, machine, replace_section, versions  # noqa: E402
from otcl.losses import build  # noqa: E402
from otcl.pipelines.multimodal.config import LOSS_DEFAULTS  # noqa: E402
from otcl.pipelines.multimodal.data import load_split_images  # noqa: E402
from otcl.pipelines.multimodal.models import build_model  # noqa: E402
from otcl.pipelines.multimodal.objectives import MultimodalObjective  # noqa: E402


def variants(losses: list[str]) -> list[tuple[str, str, dict, str]]:
    """(label, loss name, params, dmm_mix) of every timed variant."""
    out = []
    for name in losses:
        out.append((name, name, dict(LOSS_DEFAULTS), "input"))
        dmm = {**LOSS_DEFAULTS, "base": name, "warmup": 0.0}
        out.append((f"{name}+dmm (input)", "dmm", dmm, "input"))
        out.append((f"{name}+dmm (embedding)", "dmm", dmm, "embedding"))
    return out


def run(args: argparse.Namespace) -> tuple[list[dict], str]:
    dev = torch.device(args.device)
    data = load_split_images("digits", patches=args.patches)
    shapes = {m: data.shape(m) for m in data.modalities}
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(data.num_train, generator=g)[: args.batch]
    x = {m: v[idx].to(dev) for m, v in data.train.items()}
    setups = []
    for label, name, params, mix in variants(args.losses.split(",")):
        torch.manual_seed(0)
        model = build_model(shapes, data.kinds, hidden=64, latent=32, image_arch="mlp").to(dev)
        objective = MultimodalObjective(build(name, **params).to(dev), args.objective, mix)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        setups.append((label, model, objective, opt))

    def step(model, objective, opt) -> None:
        loss = objective(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _, model, objective, opt in setups:
        for _ in range(args.warmup):
            step(model, objective, opt)
    times: dict[str, list[float]] = {s[0]: [] for s in setups}
    for _ in range(args.rounds):
        for label, model, objective, opt in setups:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(args.block):
                step(model, objective, opt)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[label].append(1000 * (time.perf_counter() - t0) / args.block)
    base = statistics.median(times[setups[0][0]])
    rows = [
        {"variant": k, "ms": statistics.median(v), "ratio": statistics.median(v) / base}
        for k, v in times.items()
    ]
    return rows, repr(data)


def section(rows: list[dict], data: str, args: argparse.Namespace) -> str:
    lines = [
        f"## Multimodal training step, {args.device}",
        "",
        f"`python benchmarks/multimodal_step.py --device {args.device} --threads {args.threads}`"
        f" on {time.strftime('%Y-%m-%d')}: {data}, batch {args.batch}, objective "
        f"{args.objective}, MLP encoders (hidden 64, latent 32), Adam; median over "
        f"{args.rounds} rounds of {args.block} steps. Machine: {machine(args.device)}. "
        f"{versions()}. The CPU was shared with other jobs: absolute times are upper bounds, "
        "the ratios (measured side by side, round-robin) are what to read.",
        "",
        "| variant | ms / step | vs infonce |",
        "|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {r['ms']:.2f} | {r['ratio']:.2f}x |" for r in rows]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--losses", default="infonce,gca-uot")
    p.add_argument("--objective", default="joint", choices=("joint", "pairwise", "both"))
    p.add_argument("--patches", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, data = run(args)
    text = section(rows, data, args)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "benchmarks.md", f"multimodal_step:{args.device}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
