"""Training throughput (augmented views per second) of otcl's trainer, loss by loss.

Measures, side by side in one process, full training steps (on-device augmentation of both
views, encoder forward/backward under autocast, loss, optimizer step) for

* ``plain``: a reference loop written here the way a careful single-file script would be --
  the same encoder, the same batched GPU augmentation, NT-Xent through ``F.cross_entropy`` --
  to show what the library's machinery costs on top of the bare computation;
* ``otcl:<loss>`` for every requested loss, through :class:`otcl.pipelines.ssl.trainer.SSLTrainer` exactly as
  ``otcl train`` runs it.

Steps are timed in rounds of ``--block`` steps per method, round-robin, after ``--warmup``
steps each (compilation, cudnn autotuning); the table gives the median views/s over rounds and
the ratio to ``otcl:infonce``, and the first step's time (with ``--compile``: the compilation of
the encoder's forward and backward, minus one ordinary step, is the compile time). Results go to
a device-named section of ``docs/benchmarks.md``; ``--json`` writes every number as JSON too.

Usage::

    python benchmarks/train_speed.py --device cuda --data-dir cifar10-jpeg.tar.gz --compile
    python benchmarks/train_speed.py --device cpu --dataset digits          # quick CPU check
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, replace_section, versions  # noqa: E402
from otcl.losses import build  # noqa: E402
from otcl.pipelines.config import apply_overrides, parse_value  # noqa: E402
from otcl.pipelines.sources.images import ImageData  # noqa: E402
from otcl.pipelines.ssl.config import Config, resolve  # noqa: E402
from otcl.pipelines.ssl.trainer import SSLTrainer, load_data, make_augment, make_model  # noqa: E402

PLACEHOLDER = {
    "cuda": "## Training throughput, cuda\n\nNot measured yet on a GPU. "
    "Target: CIFAR-10, batch 512, ResNet-18, InfoNCE "
    ">= 42,000 augmented views/s on one H100, gca-uot (10 iterations) within 10% of it. Run "
    "`python benchmarks/train_speed.py --device cuda --data-dir cifar10-jpeg.tar.gz --compile`.",
    "cpu": "## Training throughput, cpu\n\nNot measured yet: run "
    "`python benchmarks/train_speed.py --device cpu`.",
}


def synthetic(n: int, shape: tuple[int, int, int], classes: int = 10) -> ImageData:
    """Random uint8 images: throughput does not depend on the pixels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    m = (0.5,) * shape[0]
    return ImageData("synthetic", x, y, x[:1000], y[:1000], [str(i) for i in range(classes)], m, m)


class PlainLoop:
    """A bare SimCLR step: same encoder and augmentation, NT-Xent via F.cross_entropy."""

    def __init__(self, cfg: Config, data: ImageData, device: torch.device) -> None:
        self.device = device
        self.images = data.train_x.to(device)
        self.aug = make_augment(cfg, data).to(device)
        self.model = make_model(cfg, data).to(device).to(memory_format=torch.channels_last)
        self.fwd = torch.compile(self.model) if cfg.train.compile else self.model
        lr = cfg.optim.lr * cfg.train.batch_size / 128
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=lr, momentum=0.9, weight_decay=cfg.optim.weight_decay
        )
        self.amp = torch.bfloat16 if device.type == "cuda" else None
        self.t = float(cfg.loss.params.get("temperature", 0.5))
        self.b = cfg.train.batch_size
        self.gen = torch.Generator(device=device).manual_seed(0)

    def step(self) -> None:
        idx = torch.randint(
            0, self.images.shape[0], (self.b,), device=self.device, generator=self.gen
        )
        x = self.images[idx]
        v = torch.cat([self.aug(x, self.gen), self.aug(x, self.gen)])
        v = v.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            z = self.fwd(v)
        z = F.normalize(z.float(), dim=1)
        s = z @ z.T / self.t
        s.fill_diagonal_(float("-inf"))
        n = self.b
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(self.device)
        loss = F.cross_entropy(s, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class OtclLoop:
    def __init__(self, cfg: Config, data: ImageData, out: Path) -> None:
        self.tr = SSLTrainer(cfg, out, data=data)
        set_epoch = getattr(self.tr.loss_fn, "set_epoch", None)
        if set_epoch is not None:  # DMM: past its ramp-up start, so its mixed branch runs
            set_epoch(cfg.train.epochs)
        self.gen = torch.Generator().manual_seed(0)

    def step(self) -> None:
        n = self.tr.images.shape[0]
        idx = torch.randint(0, n, (self.tr.batch_size,), generator=self.gen)
        self.tr.optimize(self.tr.loss_on(idx))
        self.tr.global_step += 1


#: the throughput target on one H100: InfoNCE views/s, and gca-uot's allowed shortfall
TARGET_VIEWS_PER_S = 42_000
TARGET_GCA_UOT_GAP = 0.10


def target_verdict(device: str, med: dict[str, float], batch: int) -> str:
    """The target line (CUDA, batch 512, both otcl:infonce and otcl:gca-uot measured), else ''."""
    if device != "cuda" or batch != 512 or not {"otcl:infonce", "otcl:gca-uot"} <= set(med):
        return ""
    inf, uot = med["otcl:infonce"], med["otcl:gca-uot"]
    ok_inf = inf >= TARGET_VIEWS_PER_S
    ok_uot = uot >= (1 - TARGET_GCA_UOT_GAP) * inf
    text = (
        f"Target (>= {TARGET_VIEWS_PER_S:,} views/s for infonce, gca-uot within "
        f"{TARGET_GCA_UOT_GAP:.0%}): infonce {inf:,.0f} views/s, "
        f"**{'met' if ok_inf else 'missed'}** ({inf / TARGET_VIEWS_PER_S:.2f}x the target); "
        f"gca-uot at {uot / inf:.3f}x infonce, **{'met' if ok_uot else 'missed'}**"
    )
    compiled = med.get("otcl:gca-uot+compiled-loss")
    if compiled:
        text += f" (with its loss compiled too: {compiled / inf:.3f}x)"
    return text + "."


def _applies(name: str, params: dict, **extra) -> bool:
    """Whether ``extra`` are parameters of this loss as configured (strict parameters)."""
    try:
        build(name, **params, **extra)
    except ValueError:
        return False
    return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dataset", default="cifar10", help="preset (cifar10: ResNet-18; digits: small CNN)"
    )
    p.add_argument("--data-dir", help="ImageFolder/.tar.gz; default: synthetic images")
    p.add_argument("--losses", default="infonce,gca-uot", help="comma-separated loss names")
    p.add_argument(
        "--compile-loss-for",
        default="",
        metavar="A,B",
        help="also time these losses with train.compile_loss (the loss torch.compile-d too)",
    )
    p.add_argument("--loss-param", action="append", default=[], help="KEY=VALUE for every loss")
    p.add_argument("--batch-size", type=int, help="default: the preset's (512)")
    p.add_argument("--iters", type=int, default=10, help="Sinkhorn iterations of OT losses")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--block", type=int, default=20, help="steps per method per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--head-hidden", type=int, help="projection width (default: the preset)")
    p.add_argument("--out", default="docs/benchmarks.md", help="Markdown file ('-' = print only)")
    p.add_argument("--tmp", default="/tmp/otcl-train-speed")
    p.add_argument("--json", help="also write every number as JSON here")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any config setting, as `otcl train --set` (e.g. model.arch=small-cnn)",
    )
    args = p.parse_args(argv)

    cfg = Config()
    cfg.data.dataset = args.dataset
    cfg.data.data_dir = args.data_dir
    cfg.train.device = args.device
    cfg.train.progress = False
    cfg.train.compile = args.compile
    cfg.train.log_every = 10**9
    cfg.model.head_hidden = args.head_hidden  # None = preset
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    cfg = resolve(apply_overrides(cfg, args.set))
    device = torch.device(args.device)
    if args.data_dir or args.dataset == "digits":
        data = load_data(cfg, progress=False)
    else:
        data = synthetic(50_000, (3, 32, 32))
    shared = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.loss_param)}

    loops: dict[str, object] = {"plain": PlainLoop(cfg, data, device)}
    for i, name in enumerate(args.losses.split(",")):
        c = copy.deepcopy(cfg)
        c.loss.name = name
        c.loss.params = dict(shared)
        if "iters" not in c.loss.params and _applies(name, c.loss.params, iters=args.iters):
            c.loss.params["iters"] = args.iters
        loops[f"otcl:{name}"] = OtclLoop(c, data, Path(args.tmp) / f"{i}-{name}-{time.time_ns()}")
        if name in args.compile_loss_for.split(","):  # the same step, the loss compiled too
            c = copy.deepcopy(c)
            c.train.compile_loss = True
            out = Path(args.tmp) / f"{i}-{name}-cl-{time.time_ns()}"
            loops[f"otcl:{name}+compiled-loss"] = OtclLoop(c, data, out)

    print(f"{data!r}, batch {cfg.train.batch_size} pairs, device {device}", file=sys.stderr)
    first: dict[str, float] = {}
    warm: dict[str, float] = {}
    rates: dict[str, list[float]] = {k: [] for k in loops}

    def partial() -> None:  # what a run stopped early (a time budget) still reports
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"partial": True, "first_step_s": first, "warmup_s": warm, "rates": rates}
                )
            )

    for name, loop in loops.items():
        sync(device)
        t0 = time.perf_counter()
        loop.step()  # with --compile: tracing and compiling the encoder's forward and backward
        sync(device)
        first[name] = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            loop.step()
        sync(device)
        warm[name] = time.perf_counter() - t0
        print(
            f"warm-up {name}: {warm[name]:.1f} s (first step {first[name]:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        partial()
    for r in range(args.rounds):
        order = list(loops)
        order = order[r % len(order) :] + order[: r % len(order)]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.block):
                loops[name].step()
            sync(device)
            rates[name].append(2 * cfg.train.batch_size * args.block / (time.perf_counter() - t0))
        partial()
    given = list(sys.argv[1:] if argv is None else argv)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med.get("otcl:infonce", med["plain"])
    views_per_step = 2 * cfg.train.batch_size
    compile_s = {k: max(0.0, first[k] - views_per_step / med[k]) for k in loops}
    lines = [
        f"`{' '.join(['python', 'benchmarks/train_speed.py', *given])}`",
        "",
        f"Data: {data!r}; model {cfg.model.arch}, head {cfg.model.head_hidden}-{cfg.model.head_out}; "
        f"batch {cfg.train.batch_size} pairs ({2 * cfg.train.batch_size} views/step); "
        f"OT losses at {args.iters} Sinkhorn iterations; autocast "
        f"{'bf16' if device.type == 'cuda' else 'off'}; compile {args.compile}; "
        f"median of {args.rounds} rounds x {args.block} steps after {args.warmup} warm-up steps.",
        "",
        "| method | views/s (median) | min-max over rounds | vs otcl:infonce | first step, s |",
        "|---|---|---|---|---|",
    ]
    for k, v in rates.items():
        lines.append(
            f"| {k} | {med[k]:,.0f} | {min(v):,.0f}-{max(v):,.0f} | {med[k] / base:.3f} | "
            f"{first[k]:.1f} |"
        )
    verdict = target_verdict(device.type, med, cfg.train.batch_size)
    if args.compile:
        lines += [
            "",
            "Compile time (first step minus one ordinary step): "
            + ", ".join(f"{k} {compile_s[k]:.1f} s" for k in loops)
            + " (later compiles of the same encoder reuse the FX graph cache of the first).",
        ]
    if verdict:
        lines += ["", verdict]
    table = "\n".join(lines)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device.type,
                    "machine": machine(device.type),
                    "versions": versions(),
                    "command": " ".join(["python", "benchmarks/train_speed.py", *given]),
                    "data": repr(data),
                    "arch": cfg.model.arch,
                    "batch_size": cfg.train.batch_size,
                    "views_per_step": views_per_step,
                    "compile": args.compile,
                    "amp": "bf16" if device.type == "cuda" else "off",
                    "iters": args.iters,
                    "warmup": args.warmup,
                    "block": args.block,
                    "rounds": args.rounds,
                    "methods": {
                        k: {
                            "views_per_s": med[k],
                            "rounds": rates[k],
                            "vs_infonce": med[k] / base,
                            "first_step_s": first[k],
                            "warmup_s": warm[k],
                            "compile_s": compile_s[k] if args.compile else None,
                        }
                        for k in loops
                    },
                    "target": verdict,
                },
                indent=2,
            )
        )
    print(table)
    if args.out != "-":
        section = (
            f"## Training throughput, {device.type}\n\n"
            f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- machine: {machine(device.type)}\n- versions: {versions()}\n\n{table}\n\n"
            "`plain` is the same step without the library (F.cross_entropy NT-Xent); a ratio near "
            "1 for `otcl:*` means the loss and the trainer's bookkeeping cost little next to the "
            "encoder. `dmm` re-encodes the mixed view-1 batch (input-space mixing, as the paper's "
            "image and video setups), i.e. 3 instead of 2 images per pair per step; "
            "`--set loss.dmm_mix=embedding` mixes embeddings instead and costs nothing extra.\n"
        )
        replace_section(Path(args.out), f"train_speed:{device.type}", section)
        for other in {"cpu", "cuda"} - {device.type}:
            replace_section(Path(args.out), f"train_speed:{other}", PLACEHOLDER[other], keep=True)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
