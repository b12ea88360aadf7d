"""Checkpoint safety (otcl.pipelines.engine): weights-only loading, checksum, format, old files.

The malicious files below would create a marker file when unpickled by ``torch.load(...,
weights_only=False)`` (what otcl 0.1 did); every test asserts the marker never appears.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from otcl import cli
from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint
from otcl.pipelines.engine.rundir import CHECKPOINT
from otcl.pipelines.engine.runtime import rng_state, set_rng_state

OLD_RUN = Path(__file__).resolve().parent / "data" / "old-run"


class Evil:
    """Unpickling this runs ``open(marker, "w")``: arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _good_state() -> dict:
    return {
        "config": {"train": {"epochs": 1}},
        "model": {"w": torch.ones(2)},
        "epoch": 1,
        "step_in_epoch": 0,
        "global_step": 3,
        "rng": rng_state(),
    }


def _malicious_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = {}
    # a torch.save zip whose pickle calls open()
    files["torch-zip"] = tmp_path / "zip" / CHECKPOINT
    files["torch-zip"].parent.mkdir()
    torch.save({**_good_state(), "format": 1, "x": Evil(marker)}, files["torch-zip"])
    # a bare pickle (torch.load's legacy path)
    files["pickle"] = tmp_path / "pkl" / CHECKPOINT
    files["pickle"].parent.mkdir()
    with open(files["pickle"], "wb") as fh:
        pickle.dump({**_good_state(), "format": 1, "x": Evil(marker)}, fh)
    # a well-formed format-2 envelope with a valid checksum around a malicious payload
    buf = io.BytesIO()
    torch.save({**_good_state(), "format": 2, "x": Evil(marker)}, buf)
    payload = buf.getvalue()
    files["format2-payload"] = tmp_path / "f2" / CHECKPOINT
    files["format2-payload"].parent.mkdir()
    envelope = {
        "format": 2,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    torch.save(envelope, files["format2-payload"])
    # NumPy's array globals (allowed for format 1) plus one more
    files["numpy-plus"] = tmp_path / "np" / CHECKPOINT
    files["numpy-plus"].parent.mkdir()
    evil_np = {**_good_state(), "format": 1, "a": np.zeros(3), "x": Evil(marker)}
    torch.save(evil_np, files["numpy-plus"])
    assert not marker.exists()  # writing them ran nothing
    return files


def test_malicious_pickles_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    for kind, path in _malicious_files(tmp_path, marker).items():
        with pytest.raises(ValueError, match="refusing to load") as info:
            load_checkpoint(path.parent)
        assert "nothing in it was run" in str(info.value), kind
        assert not marker.exists(), kind
    # the same loader with weights_only=False (otcl 0.1) would have run it
    torch.load(tmp_path / "zip" / CHECKPOINT, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("verb", ["eval", "resume", "compare-reuse"])
def test_cli_refuses_a_malicious_run_in_one_line(tmp_path, capsys, verb):
    pytest.importorskip("yaml")
    marker = tmp_path / "pwned"
    run = _malicious_files(tmp_path, marker)["torch-zip"].parent
    if verb == "eval":
        argv = ["eval", str(run)]
    elif verb == "resume":
        argv = ["train", "--resume", str(run)]
    else:  # otcl compare finds a checkpoint where its run would go
        dst = tmp_path / "cmp" / "infonce" / "seed0"
        shutil.copytree(run, dst)
        argv = ["compare", "--losses", "infonce", "--seeds", "1", "--out", str(tmp_path / "cmp")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # compare logs its plan first
    assert err.startswith("otcl: error: run: refusing to load") and "io.open" in err
    assert not marker.exists()


def test_format2_round_trip_and_weights_only(tmp_path):
    path = tmp_path / CHECKPOINT
    state = _good_state()
    save_checkpoint(state, path)
    outer = torch.load(path, weights_only=True)  # plain torch can read it safely too
    assert outer["format"] == 2 and outer["payload"].dtype == torch.uint8
    st = load_checkpoint(tmp_path)
    assert (
        st["format"] == 2
        and st["global_step"] == 3
        and torch.equal(st["model"]["w"], state["model"]["w"])
    )


def test_rng_states_survive_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(_good_state(), tmp_path / CHECKPOINT)
    expected = (random.random(), np.random.randn(), torch.rand(()).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path)["rng"])
    assert (random.random(), np.random.randn(), torch.rand(()).item()) == expected


def test_damaged_checkpoint_fails_the_checksum(tmp_path):
    save_checkpoint(_good_state(), tmp_path / CHECKPOINT)
    outer = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    payload = outer["payload"].clone()
    payload[len(payload) // 2] ^= 0xFF
    torch.save({**outer, "payload": payload}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="damaged .*SHA-256"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)


def test_newer_and_foreign_files_are_refused(tmp_path):
    torch.save({"format": 3, "otcl_version": "9.0"}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="format 3 .*upgrade otcl"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.ones(2)}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="not an otcl checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="expected a run directory"):
        load_checkpoint(tmp_path / "missing")


def test_format1_checkpoint_loads_with_numpy_arrays_only(tmp_path):
    """The committed otcl-0.1 run: its NumPy RNG state is the only non-tensor it may hold."""
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(OLD_RUN / CHECKPOINT)
    assert {n.rsplit(".", 1)[-1] for n in needed} <= {"dtype", "ndarray", "_reconstruct"}
    st = load_checkpoint(OLD_RUN)
    assert st["format"] == 1 and st["epoch"] == 2 and isinstance(st["rng"]["numpy"], tuple)
    set_rng_state(st["rng"])  # the old tuple layout restores
    assert not os.path.exists(tmp_path / "pwned")


def test_open_run_and_restore_model(tmp_path):
    """What every pipeline's ``load_run`` does: the saved config resolved as today, NaN/inf
    weights refused before any data is loaded, the weights into a fresh model in eval mode."""
    from otcl.pipelines.config import RunConfig, apply_presets
    from otcl.pipelines.engine.checkpoint import open_run, restore_model

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    st = {**_good_state(), "config": {"train": {"epochs": 1}}, "model": model.state_dict()}
    save_checkpoint(st, tmp_path / CHECKPOINT)
    cfg, loaded = open_run(tmp_path, RunConfig, lambda c: apply_presets(c, {"optim": {"lr": 2.0}}))
    assert cfg.train.epochs == 1 and cfg.optim.lr == 2.0  # not in the file: the preset's
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    out = restore_model(fresh, loaded, tmp_path, "cpu")
    assert out is fresh and not out.training
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(),
                                                 model.state_dict().values(), strict=True))  # fmt: skip
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["0.weight"][0, 0] = float("nan")
    save_checkpoint({**st, "model": bad}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="holds NaN/inf weights \\(0.weight\\)"):
        open_run(tmp_path, RunConfig, lambda c: c)
    with pytest.raises(ValueError, match="does not fit its model"):
        restore_model(torch.nn.Linear(4, 2), loaded, tmp_path)
