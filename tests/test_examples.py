"""Every script in examples/ runs at its tiny size and shows what its docstring says."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested_and_says_what_it_shows():
    scripts = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    tested = {
        "own_loop",
        "dmm_loop",
        "domain_targets",
        "sinkhorn_vs_pot",
        "load_encoder",
        "recsys_python",
        "multimodal_python",
    }
    assert set(scripts) == tested
    for name in scripts:
        doc = load(name).__doc__
        assert doc and len(doc.strip().splitlines()[0]) > 20, name
        assert f"python examples/{name}.py" in doc, name  # how to run it


def test_own_loop_trains():
    r = load("own_loop").main(tiny=True)
    assert math.isfinite(r["loss"]) and 0.0 <= r["accuracy_after"] <= 1.0


def test_dmm_loop_term_follows_the_ramp():
    r = load("dmm_loop").main(tiny=True)
    assert r["term_epoch0"] == 0.0  # weight 0 / (0 + warmup): DMM equals its base loss
    assert r["term_last"] != 0.0  # the ramp switched the term on


def test_domain_targets_pull_domains_together():
    r = load("domain_targets").main(tiny=True)
    assert r["domains"] > r["identity"]


def test_sinkhorn_matches_pot():
    pytest.importorskip("ot")
    r = load("sinkhorn_vs_pot").main(tiny=True)
    assert r["balanced_row_error"] < 1e-10
    assert r["pot_balanced"] < 1e-8 and r["pot_unbalanced"] < 1e-8


def test_sinkhorn_example_runs_as_a_script():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "sinkhorn_vs_pot.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "balanced:" in proc.stdout and "converged=True" in proc.stdout


def test_load_encoder_gives_useful_features(tmp_path):
    pytest.importorskip("sklearn")
    r = load("load_encoder").main(tiny=True, out=str(tmp_path))
    assert r["ncm"] > 0.3  # 10 classes: chance is 0.1
    assert (tmp_path / "gca-uot" / "summary.json").exists()


def test_recsys_from_python(tmp_path):
    pytest.importorskip("yaml")
    r = load("recsys_python").main(tiny=True, out=str(tmp_path))
    assert set(r) == {"cml", "cml+dmm"}
    for metrics in r.values():
        assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_multimodal_from_python(tmp_path):
    pytest.importorskip("sklearn")
    r = load("multimodal_python").main(tiny=True, out=str(tmp_path))
    assert 0.0 <= r["R@1"] <= 1.0 and r["full_accuracy"] > 0.1
