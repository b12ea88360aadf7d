"""Output-directory ownership (otcl.pipelines.engine.rundir.check_owner): each output directory
records the command that made it (``owner.json``), and every other command refuses it in one
line, leaving its files as they were."""

from __future__ import annotations

import numpy as np

from otcl.cli import main
from otcl.pipelines.engine.rundir import OWNER, read_owner

from .conftest import write_ml100k

TINY = ["--dim", "8", "--epochs", "1", "--no-progress", "--set", "eval.ks=[1,5]"]


def _refused(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("otcl: error: ") and match in err, err


def _files(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".otcl.lock"}


def test_no_command_writes_into_another_commands_directory(tmp_path, capsys):
    ml = write_ml100k(tmp_path / "ml")
    data = ["--data-dir", str(ml), *TINY]
    run, cmp = tmp_path / "run", tmp_path / "cmp"
    assert main(["recsys", "train", "--out", str(run), *data]) == 0
    assert read_owner(run) == {"kind": "run", "pipeline": "recsys"}
    compare = ["--methods", "cml", "--seeds", "1", "--jobs", "1", "--no-plot"]
    assert main(["recsys", "compare", "--out", str(cmp), *compare, *data]) == 0
    assert read_owner(cmp) == {"kind": "compare", "pipeline": "recsys"}
    assert read_owner(cmp / "cml" / "seed0") == {"kind": "run", "pipeline": "recsys"}
    capsys.readouterr()
    before = {d: _files(d) for d in (run, cmp)}

    _refused(capsys, ["recsys", "compare", "--out", str(run), *compare, *data],
             "holds a training run of the recsys pipeline (made by `otcl recsys train`)")  # fmt: skip
    _refused(capsys, ["recsys", "train", "--out", str(cmp), *data],
             "holds a comparison of the recsys pipeline (made by `otcl recsys compare`)")  # fmt: skip
    _refused(capsys, ["compare", "--out", str(cmp), "--losses", "infonce", "--seeds", "1"],
             "`otcl ssl compare` does not write into it")  # fmt: skip
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", video=rng.normal(size=(20, 3)), text=rng.normal(size=(20, 4)),
             labels=np.arange(20) % 2)  # fmt: skip
    mm = ["--dataset", "npz", "--data-dir", str(tmp_path / "f.npz"), "--no-progress"]
    _refused(capsys, ["multimodal", "compare", "--out", str(cmp), "--methods", "infonce", *mm],
             "holds a comparison of the recsys pipeline")  # fmt: skip
    _refused(capsys, ["multimodal", "train", "--out", str(run), *mm],
             "holds a training run of the recsys pipeline")  # fmt: skip
    assert {d: _files(d) for d in (run, cmp)} == before  # nothing overwritten

    # eval of another pipeline's run, or of a comparison: what to run instead
    _refused(capsys, ["multimodal", "eval", str(run)],
             f"is a run of the recsys pipeline (made by `otcl recsys train`); evaluate it with "
             f"`otcl recsys eval {run}`")  # fmt: skip
    _refused(capsys, ["recsys", "eval", str(cmp)], "is a comparison")


def test_a_directory_made_before_owners_were_recorded_is_recognised(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    assert read_owner(tmp_path) == {"kind": "compare", "pipeline": None}
    (tmp_path / OWNER).write_text('{"kind": "run", "pipeline": "ssl"}')
    assert read_owner(tmp_path) == {"kind": "run", "pipeline": "ssl"}
    assert read_owner(tmp_path / "nothing") is None
