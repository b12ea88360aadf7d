"""Graph breaks and per-step host syncs of the losses and of the trainer's step.

A training step should never wait for the GPU (the host runs ahead, kernels queue up) and the
compiled parts should be one graph each. This script measures both, per loss:

* **graph breaks** of the loss call: ``torch._dynamo.explain`` on ``loss(z1, z2)`` with the loss
  built ``check_inputs=False`` (as the trainer builds it); the number of graphs, the breaks with
  their reason and the otcl source line, or the error that stops tracing altogether;
* **host reads** of one forward + backward of the loss: every tensor value read back by Python
  (``.item()``, ``bool()``, ``float()``, ``int()``, ``.tolist()``, ``nonzero``, ...), caught by a
  ``TorchFunctionMode`` with the otcl source line. On a GPU each of them is a host sync; on CPU
  they are reported where they are, with the same meaning once the tensor lives on a GPU (a read
  of a tensor made on the CPU, e.g. from a CPU generator, is not a device sync: see the line);
* on CUDA also the **device syncs** counted by ``torch.cuda.set_sync_debug_mode("warn")`` over
  the same forward + backward (this also sees syncs inside C++ ops and the autograd threads);
* **trainer step**: the same host-read count over one whole ``SSLTrainer`` step (augmentation,
  encoder, loss, optimizer; the loop's periodic loss read-back every ``log_every`` steps is not
  part of a step), and the graph breaks of the encoder (what ``train.compile`` compiles) and of
  the augmentation.

Usage::

    python benchmarks/graph_breaks.py                       # CPU, the seven default losses
    python benchmarks/graph_breaks.py --device cuda --json out.json
    python benchmarks/graph_breaks.py --losses infonce,gca-uot --no-trainer
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

import otcl  # noqa: E402

DEFAULT_LOSSES = ("infonce", "gca-uot", "gca-ince", "iot-uni", "hcl", "ot-hard", "dmm")

#: tensor methods / functions whose result is a host value (a device sync for a GPU tensor)
HOST_READS = frozenset(
    {
        "item",
        "__bool__",
        "__float__",
        "__int__",
        "__index__",
        "tolist",
        "nonzero",
        "masked_select",
        "unique",
        "numpy",
        "cpu",
    }
)


def _where(stack: list[traceback.FrameSummary]) -> str:
    """The innermost otcl frame (``otcl/ot/sinkhorn.py:631``), else the innermost frame."""
    for fr in reversed(stack):
        norm = fr.filename.replace("\\", "/")
        if "/otcl/" in norm and "/benchmarks/" not in norm:
            return norm.split("/src/")[-1].split("site-packages/")[-1] + f":{fr.lineno}"
    return f"{Path(stack[-1].filename).name}:{stack[-1].lineno}" if stack else "?"


class HostReads(torch.overrides.TorchFunctionMode):
    """Records every host read of a tensor value (see :data:`HOST_READS`) with its source line.

    ``device``: count only reads of tensors on this device type (None: every read).
    """

    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.device = device
        self.reads: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor):
            if self.device is None or args[0].device.type == self.device:
                self.reads.append((name, _where(traceback.extract_stack()[:-1])))
        return func(*args, **(kwargs or {}))

    def summary(self) -> list[str]:
        """``["float() at otcl/ot/sinkhorn.py:631 (x2)", ...]`` in first-seen order."""
        counts: dict[tuple[str, str], int] = {}
        for r in self.reads:
            counts[r] = counts.get(r, 0) + 1
        out = []
        for (name, where), k in counts.items():
            call = name.strip("_") + "()" if name.startswith("__") else f".{name}()"
            out.append(f"{call} at {where}" + (f" (x{k})" if k > 1 else ""))
        return out


def build_loss(name: str) -> torch.nn.Module:
    """The loss as the trainer builds it (``check_inputs=False``); DMM past its warm-up."""
    loss = otcl.losses.build(name, check_inputs=False)
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(10**6)  # DMM mixes only after its ramp-up starts
    return loss


def _inputs(n: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(n, dim, generator=g).to(device).requires_grad_()
    z2 = torch.randn(n, dim, generator=g).to(device).requires_grad_()
    return z1, z2


def explain(fn, *args) -> dict[str, Any]:
    """``torch._dynamo.explain`` of ``fn(*args)`` as plain data (or the error that stopped it)."""
    import logging

    import torch._dynamo as dynamo

    dynamo.reset()
    torch._logging.set_logs(dynamo=logging.ERROR)  # the breaks are reported below, not logged
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = dynamo.explain(fn)(*args)
    except Exception as e:  # tracing itself failed: report where
        msg = str(e)
        locs = re.findall(r'File "([^"]+)", line (\d+)', msg)
        otcl_locs = [f"{f.split('/src/')[-1]}:{n}" for f, n in locs if "/otcl/" in f]
        first = msg.splitlines()[0] if msg else ""
        first = first.split(". ")[0]  # the first sentence says what failed
        return {
            "error": f"{type(e).__name__}: {first[:240]}",
            "where": otcl_locs[-1] if otcl_locs else None,
            "seconds": time.perf_counter() - t0,
        }
    breaks = []
    for b in ex.break_reasons:
        stack = list(b.user_stack or [])
        breaks.append({"reason": b.reason.splitlines()[0][:200], "where": _where(stack)})
    return {
        "graphs": ex.graph_count,
        "breaks": ex.graph_break_count,
        "reasons": breaks,
        "seconds": time.perf_counter() - t0,
    }


def host_reads(fn, device: str) -> list[str]:
    """Host reads during ``fn()``; on CUDA only reads of CUDA tensors."""
    mode = HostReads(device if device == "cuda" else None)
    with mode:
        fn()
    return mode.summary()


def cuda_syncs(fn) -> list[str]:
    """Synchronizing CUDA operations during ``fn()`` (``set_sync_debug_mode("warn")``)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    out = []
    for w in caught:
        if "synchroniz" in str(w.message):
            out.append(f"{Path(w.filename).name}:{w.lineno}")
    return out


def loss_report(name: str, n: int, dim: int, device: str) -> dict[str, Any]:
    loss = build_loss(name).to(device)
    z1, z2 = _inputs(n, dim, device)

    def step() -> None:
        z1.grad = z2.grad = None
        loss(z1, z2).backward()

    step()  # warm-up (lazy initialisation is not a per-step cost)
    rep: dict[str, Any] = {"loss": name, "explain": explain(loss, z1, z2)}
    rep["host_reads"] = host_reads(step, device)
    if device == "cuda":
        rep["cuda_syncs"] = cuda_syncs(step)
    return rep


def trainer_report(losses, device: str, augment: bool = False) -> dict[str, Any]:
    """Host reads of one SSLTrainer step per loss; graph breaks of the encoder and augmentation."""
    from otcl.pipelines.sources.images import ImageData
    from otcl.pipelines.ssl.config import Config
    from otcl.pipelines.ssl.trainer import SSLTrainer

    g = torch.Generator().manual_seed(0)  # CIFAR-shaped random images: the pixels do not matter
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(64) % 10
    m = (0.5, 0.5, 0.5)
    data = ImageData("synthetic", x, y, x[:16], y[:16], [str(i) for i in range(10)], m, m)

    def trainer(name: str) -> SSLTrainer:
        cfg = Config()
        cfg.data.dataset = "cifar10"  # its augmentations; a small CNN for speed
        cfg.loss.name = name
        cfg.model.arch, cfg.model.width, cfg.model.head_hidden, cfg.model.head_out = (
            "small-cnn",
            8,
            32,
            16,
        )
        cfg.train.epochs, cfg.train.batch_size = 1, 32
        cfg.train.device, cfg.train.progress = device, False
        tr = SSLTrainer(cfg, Path(tempfile.mkdtemp()) / "run", data=data)
        tr.start_epoch(10**6)  # DMM past its warm-up
        return tr

    steps = {}
    tr = None
    for name in losses:
        tr = trainer(name)
        tr.train_step(0, 0)  # warm-up
        steps[name] = host_reads(lambda tr=tr: tr.train_step(0, 1), device)
        if device == "cuda":
            steps[name + " (cuda syncs)"] = cuda_syncs(lambda tr=tr: tr.train_step(0, 2))
    assert tr is not None
    x = tr.images[:32]
    views = torch.cat([tr.augment(x, tr.step_generator("a"))] * 2)
    rep = {"step_host_reads": steps, "encoder": explain(tr.model, views)}
    if augment:  # eager by design (per-step generators break graphs); slow to trace
        rep["augment"] = explain(lambda x: tr.augment(x, tr.step_generator("a")), x)
    return rep


# -- report --------------------------------------------------------------------------------
def _explain_cell(ex: dict[str, Any]) -> tuple[str, str]:
    if "error" in ex:
        return "tracing fails", f"{ex['error']} (at {ex['where']})"
    counts: dict[str, int] = {}
    for r in ex["reasons"]:
        key = f"{r['reason']} (at {r['where']})"
        counts[key] = counts.get(key, 0) + 1
    reasons = "; ".join(k + (f" x{c}" if c > 1 else "") for k, c in counts.items()) or "-"
    return f"{ex['graphs']} graph(s), {ex['breaks']} break(s)", reasons


def render(report: dict[str, Any]) -> str:
    dev = report["device"]
    lines = [
        f"Graph breaks and host syncs ({dev}; losses built check_inputs=False; "
        f"N={report['n']}, d={report['dim']}; torch {report['torch']})",
        "",
        "| loss | dynamo explain | break reasons / error | host reads per forward+backward |"
        + (" CUDA syncs |" if dev == "cuda" else ""),
        "|---|---|---|---|" + ("---|" if dev == "cuda" else ""),
    ]
    for r in report["losses"]:
        head, reasons = _explain_cell(r["explain"])
        reads = "; ".join(r["host_reads"]) or "none"
        row = f"| {r['loss']} | {head} | {reasons} | {reads} |"
        if dev == "cuda":
            syncs = r.get("cuda_syncs", [])
            row += (
                f" {len(syncs)}" + (f" ({'; '.join(sorted(set(syncs)))})" if syncs else "") + " |"
            )
        lines.append(row)
    tr = report.get("trainer")
    if tr:
        lines += ["", "Trainer step (augmentation + encoder + loss + optimizer, one step):", ""]
        for name, reads in tr["step_host_reads"].items():
            lines.append(
                f"- {name}: {len(reads)} host read(s)" + (": " + "; ".join(reads) if reads else "")
            )
        for part in ("encoder", "augment"):
            if part not in tr:
                continue
            head, reasons = _explain_cell(tr[part])
            lines.append(f"- {part} under dynamo explain: {head}; {reasons}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--losses", default=",".join(DEFAULT_LOSSES))
    p.add_argument("--n", type=int, default=64, help="pairs per batch (default 64)")
    p.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32)")
    p.add_argument("--no-trainer", action="store_true", help="losses only")
    p.add_argument(
        "--augment",
        action="store_true",
        help="also trace the augmentation (it runs eagerly: its generators break graphs)",
    )
    p.add_argument("--json", help="also write the report as JSON here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    report: dict[str, Any] = {
        "device": args.device,
        "n": args.n,
        "dim": args.dim,
        "torch": torch.__version__,
        "losses": [],
    }
    for name in losses:
        report["losses"].append(loss_report(name, args.n, args.dim, args.device))
        print(f"{name}: done", file=sys.stderr)
    if not args.no_trainer:
        report["trainer"] = trainer_report(losses, args.device, args.augment)
    text = render(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
