"""`otcl compare`: table, results, plots, reuse of finished runs, refusal of mixed settings."""

from __future__ import annotations

import json

import pytest

from otcl import cli
from otcl.pipelines.engine.rundir import CHECKPOINT
from otcl.pipelines.ssl.compare import format_table


def test_cli_compare_writes_table_plots_and_reuses_runs(tmp_path, capsys, tiny_args):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    argv = ["compare", "--losses", "infonce,gca-ince", "--seeds", "2", "--out", str(out)]
    argv += tiny_args
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| infonce | 2 |" in table and "| gca-ince | 2 |" in table
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "otcl-results/1" and res["pipeline"] == "ssl"
    assert list(res["methods"]) == ["infonce", "gca-ince"]
    for m in res["methods"].values():
        knn, lin = m["metrics"]["knn"], m["metrics"]["linear"]
        assert 0 < knn["mean"] <= 1 and 0 < lin["mean"] <= 1 and knn["std"] >= 0
        assert m["seeds"] == [0, 1] and len(knn["per_seed"]) == 2
    assert len(res["runs"]) == 4
    assert format_table(res) in table
    for png in ("accuracy.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mtime = (out / "infonce" / "seed0" / CHECKPOINT).stat().st_mtime_ns
    assert cli.main(argv) == 0  # finished runs are reused, not retrained
    assert (out / "infonce" / "seed0" / CHECKPOINT).stat().st_mtime_ns == mtime
    assert "reusing" in capsys.readouterr().err
    # the same directory with other settings is refused instead of mixing results
    assert cli.main([*argv, "--epochs", "3"]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_runs_saved_before_a_new_setting_are_still_reused(tmp_path, capsys, tiny_args):
    """A run whose config predates a setting (here random erasing, data.erase_*) compares equal
    to today's request: the missing setting takes its preset, as on --resume."""
    from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "cmp"
    argv = ["compare", "--losses", "infonce", "--seeds", "1", "--no-plot", "--out", str(out)]
    argv += tiny_args
    assert cli.main(argv) == 0
    ckpt = out / "infonce" / "seed0" / CHECKPOINT
    st = load_checkpoint(ckpt)
    for key in ("erase_p", "erase_scale", "erase_ratio"):
        del st["config"]["data"][key]
    save_checkpoint(st, ckpt)
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "reusing" in capsys.readouterr().err


def test_a_subset_compare_merges_into_the_full_table(tmp_path, capsys, tiny_args):
    """A compare of one method and one seed into a directory holding more keeps every
    finished run with its settings in the table (never a one-row table), and a method made
    with other settings stays out of it; plots that would no longer match are removed."""
    out = tmp_path / "cmp"
    full = ["compare", "--losses", "infonce,infonce+dmm", "--seeds", "2", "--out", str(out)]
    assert cli.main([*full, "--no-plot", *tiny_args]) == 0
    before = json.loads((out / "results.json").read_text())
    (out / "accuracy.png").write_bytes(b"an earlier plot")
    capsys.readouterr()
    one = ["compare", "--losses", "infonce", "--seeds", "1", "--out", str(out), "--no-plot"]
    assert cli.main([*one, *tiny_args]) == 0
    after = json.loads((out / "results.json").read_text())
    assert list(after["methods"]) == ["infonce", "infonce+dmm"]
    assert after["methods"] == before["methods"]  # the same numbers, every seed
    assert set(after["deltas"]) == {"infonce+dmm"}
    assert "| infonce+dmm | 2 |" in capsys.readouterr().out
    assert not (out / "accuracy.png").exists()
