"""benchmarks/loss_speed.py: its naive reference, a tiny run, and the section update."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import otcl

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "loss_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("loss_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_naive_unrolled_equals_gca_ince(bench):
    """The benchmark's plain autograd reference is the same loss as gca-ince / iot."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(24, 8), torch.randn(24, 8)
    grads = []
    for fn in (
        lambda a, b: bench.naive_unrolled_loss(a, b, iters=20),
        otcl.losses.build("gca-ince", iters=20),
    ):
        a = z1.clone().requires_grad_()
        val = fn(a, z2)
        val.backward()
        grads.append((val.detach(), a.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_labels_cover_every_loss_and_implicit_variants(bench):
    labels = bench.all_labels(20)
    assert labels[0] == "infonce"
    assert set(otcl.losses.available()) <= set(labels)
    for name in ("iot", "iot-uni", "gca-ince", "gca-rince", "gca-uot"):
        assert f"{name}[implicit]" in labels
    assert "infonce[implicit]" not in labels and "naive-unrolled" in labels


def test_tiny_run_writes_only_its_section(bench, tmp_path):
    out = tmp_path / "bench.md"
    args = [
        "--sizes",
        "8",
        "--repeats",
        "1",
        "--losses",
        "gca-uot,gca-uot[implicit],naive-unrolled",
    ]
    if not os.access("/proc/self/clear_refs", os.W_OK):
        args.append("--no-memory")
    assert bench.main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "<!-- loss_speed:cpu:begin -->" in text and "| gca-uot[implicit] |" in text
    assert "Not measured yet on a GPU" in text  # the other device's placeholder
    marked = text.replace("Not measured yet on a GPU", "KEEP ME on a GPU")
    out.write_text(marked)
    assert bench.main([*args, "--no-memory", "--out", str(out)]) == 0
    again = out.read_text()
    assert "KEEP ME on a GPU" in again and again.count("loss_speed:cpu:begin") == 1
