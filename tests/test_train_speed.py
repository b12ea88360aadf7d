"""benchmarks/train_speed.py: a tiny run through the real trainer writes only its section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


def test_tiny_cpu_run_writes_its_section(tmp_path):
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.md"
    argv = ["--device", "cpu", "--dataset", "digits", "--losses", "infonce,gca-uot,dmm",
            "--batch-size", "32", "--warmup", "1", "--block", "1", "--rounds", "1",
            "--out", str(out), "--tmp", str(tmp_path / "runs")]  # fmt: skip
    assert mod.main(argv) == 0
    text = out.read_text()
    for row in ("| plain |", "| otcl:infonce |", "| otcl:gca-uot |", "| otcl:dmm |"):
        assert row in text
    assert "<!-- train_speed:cpu:begin -->" in text and "train_speed:cuda" in text
