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
    assert [r["loss"] for r in res["rows"]] == ["infonce", "gca-ince"]
    for r in res["rows"]:
        assert 0 < r["knn_mean"] <= 1 and 0 < r["linear_mean"] <= 1 and r["knn_std"] >= 0
        assert len(r["runs"]) == 2
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
