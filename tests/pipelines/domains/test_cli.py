"""``otcl domains train | eval | compare`` end to end on tiny data, and one-line errors."""

from __future__ import annotations

import json

from otcl.cli import main

TINY = [
    "--epochs", "1", "--batch-size", "32", "--no-progress",
    "--set", "data.per_domain=40", "--set", "data.image_size=8", "--set", "model.width=4",
    "--set", "train.max_steps_per_epoch=2", "--set", "eval.linear_epochs=2",
]  # fmt: skip


def test_train_eval_compare(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["domains", "train", "--loss", "gca-uot", "--beta", "0.5", "--eval", "--out", str(out)]
    assert main([*argv, *TINY]) == 0
    line = capsys.readouterr().out
    assert "eval: gca-uot (alpha 0, beta 0.5): class kNN" in line and "leave-one-domain-out" in line
    ev = json.loads((out / "eval.json").read_text())
    assert ev["beta"] == 0.5 and set(ev["lodo_per_domain"]) == {
        "photo",
        "sketch",
        "cartoon",
        "painting",
    }
    assert main(["domains", "eval", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["knn"] == ev["knn"]
    cmp = tmp_path / "cmp"
    argv = ["domains", "compare", "--methods", "infonce,gca-ince@+0.5", "--seeds", "1"]
    assert main([*argv, "--out", str(cmp), "--no-plot", "--jobs", "1", *TINY]) == 0
    res = json.loads((cmp / "results.json").read_text())
    assert list(res["methods"]) == ["infonce", "gca-ince@+0.5"]


def test_one_line_errors(tmp_path, capsys):
    for argv, match in (
        (["domains", "train", "--alpha", "-1"], "target.alpha: expected a finite number >= 0"),
        (["domains", "compare", "--methods", "x@1"], "methods: unknown loss 'x'"),
        (["domains", "train", "--dataset", "folder"], "data.data_dir: dataset 'folder' needs"),
    ):
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
