"""The state carried between suite runs of the accuracy protocol: compact checkpoints (bf16
weights, int8 momentum), their parts of at most 15 MiB, and the state folder (the ledger and
the parts of the unfinished runs). Part of ``gpu_accuracy.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _acc_ledger import LEDGER, load_ledger, save_json

COMPACT_FORMAT = "otcl-compact-1"
PART_BYTES = 15 * 2**20


def _pack_weight(t):
    import torch

    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() >= 1024:
        return {"__bf16__": t.detach().to("cpu", torch.bfloat16)}
    return t


def _pack_q8(t):
    """int8 with one fp32 scale per row (the first dimension), round to nearest."""
    import torch

    if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() >= 1024):
        return t
    x = t.detach().to("cpu", torch.float32)
    rows = x.reshape(x.shape[0], -1)
    scale = rows.abs().amax(dim=1, keepdim=True) / 127.0
    q = torch.round(rows / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-127, 127)
    return {
        "__q8__": q.to(torch.int8),
        "scale": scale,
        "shape": list(x.shape),
        "dtype": str(t.dtype),
    }


def _unpack(v):
    import torch

    if isinstance(v, dict) and "__bf16__" in v:
        return v["__bf16__"].to(torch.float32)
    if isinstance(v, dict) and "__q8__" in v:
        dtype = getattr(torch, v["dtype"].replace("torch.", ""))
        return (v["__q8__"].to(torch.float32) * v["scale"]).reshape(v["shape"]).to(dtype)
    return v


def compact_checkpoint(run_dir: Path) -> bytes:
    """The run's checkpoint (and its config and metrics log) in the compact carry form: a
    checkpoint file like any other (:func:`otcl.pipelines.engine.checkpoint.save_checkpoint`:
    the SHA-256 of its payload checked on reading), whose large tensors are packed and which
    carries the two text files under ``"compact"``."""
    import tempfile

    from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint

    st = load_checkpoint(run_dir)
    st["model"] = {k: _pack_weight(v) for k, v in st["model"].items()}
    for s in st["optimizer"].get("state", {}).values():
        if "momentum_buffer" in s:
            s["momentum_buffer"] = _pack_q8(s["momentum_buffer"])
    files = {}
    for name in ("config.yaml", "metrics.jsonl"):
        if (run_dir / name).exists():
            files[name] = (run_dir / name).read_text()
    st["compact"] = {"format": COMPACT_FORMAT, "files": files}
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(st, Path(tmp) / "compact.pt")
        return (Path(tmp) / "compact.pt").read_bytes()


def expand_checkpoint(blob: bytes, run_dir: Path) -> dict[str, Any]:
    """Write ``checkpoint.pt`` (fp32 again), ``config.yaml`` and ``metrics.jsonl`` into
    ``run_dir`` from a compact blob; returns the checkpoint's state. The blob is read by
    :func:`otcl.pipelines.engine.checkpoint.load_checkpoint` (safe loading, the SHA-256
    check): a damaged carry is a ``ValueError``."""
    import tempfile

    from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "compact.pt").write_bytes(blob)
        st = load_checkpoint(Path(tmp) / "compact.pt")
    data = st.pop("compact", None)
    if not isinstance(data, dict) or data.get("format") != COMPACT_FORMAT:
        raise ValueError("compact checkpoint: unknown format")
    st["model"] = {k: _unpack(v) for k, v in st["model"].items()}
    for s in st["optimizer"].get("state", {}).values():
        if "momentum_buffer" in s:
            s["momentum_buffer"] = _unpack(s["momentum_buffer"])
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, text in data["files"].items():
        (run_dir / name).write_text(text)
    save_checkpoint(st, run_dir / "checkpoint.pt")
    return st


def part_names(rid: str, n: int) -> list[str]:
    """The file names of the ``n`` parts of run ``rid``'s compact checkpoint."""
    return [f"ckpt-{rid}.pt.part{k}" for k in range(n)]


def write_parts(blob: bytes, state: Path, rid: str, part_bytes: int = PART_BYTES) -> int:
    """Split ``blob`` into files of at most ``part_bytes``; returns their number."""
    n = max(1, math.ceil(len(blob) / part_bytes))
    for k, name in enumerate(part_names(rid, n)):
        (state / name).write_bytes(blob[k * part_bytes : (k + 1) * part_bytes])
    return n


def read_parts(state: Path, rid: str, n: int) -> bytes:
    """The compact checkpoint of run ``rid`` joined from its ``n`` parts in ``state``."""
    paths = [state / name for name in part_names(rid, n)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"--resume-from: the checkpoint of {rid} lacks {', '.join(missing)}")
    return b"".join(p.read_bytes() for p in paths)


def write_state(
    ledger: dict[str, Any],
    runs_dir: Path,
    state_in: Path | None,
    state_out: Path,
    max_carry: int,
    log,
) -> None:
    """The ledger and the compact checkpoints of the unfinished runs (the most advanced first,
    at most ``max_carry``); runs beyond it go back to pending, their progress noted as lost."""
    state_out.mkdir(parents=True, exist_ok=True)
    for old in state_out.glob("ckpt-*"):
        old.unlink()
    unfinished = [r for r in ledger["runs"] if r["status"] in ("partial", "trained", "stopped")]
    unfinished.sort(key=lambda r: (r["status"] != "trained", -r["global_step"]))
    for i, r in enumerate(unfinished):
        if r["status"] == "stopped":
            r["status"] = "partial"
        ckpt = runs_dir / r["id"] / "checkpoint.pt"
        if i >= max_carry or not ckpt.exists():
            r["notes"].append(
                f"progress to epoch {r['epoch']} dropped (carry limit)"
                if ckpt.exists()
                else "no checkpoint to carry"
            )
            r.update(status="pending", epoch=0, global_step=0, parts=0, train_seconds=0.0)
            continue
        r["parts"] = write_parts(compact_checkpoint(runs_dir / r["id"]), state_out, r["id"])
        log(f"accuracy: carrying {r['id']} at epoch {r['epoch']} ({r['parts']} part(s))")
    for r in ledger["runs"]:
        if r["status"] in ("pending", "done", "failed"):
            r["parts"] = 0
    save_json(state_out / LEDGER, ledger)


def copy_state(state_in: Path | None, state_out: Path) -> None:
    """The carried state unchanged (a call that did not run the accuracy section)."""
    state_out.mkdir(parents=True, exist_ok=True)
    if state_in is None or not (state_in / LEDGER).exists():
        return
    ledger = load_ledger(state_in)
    for r in ledger["runs"]:
        for name in part_names(r["id"], r.get("parts") or 0):
            (state_out / name).write_bytes((state_in / name).read_bytes())
    save_json(state_out / LEDGER, ledger)
