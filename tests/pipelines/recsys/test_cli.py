"""``otcl recsys train`` / ``compare`` end to end on tiny data, and their one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal

import pytest

from otcl.cli import main
from otcl.pipelines.recsys.compare import robustness, validation_curves

TINY = ["--dim", "8", "--epochs", "1", "--no-progress", "--set", "eval.ks=[1,5]"]


def _nothing_written(out):
    """No run file: at most the empty run directory (and its lock) the run machinery probes."""
    return not out.exists() or {p.name for p in out.iterdir()} <= {".otcl.lock"}


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("otcl: error: ") and match in err[0], err


def test_train_and_resume(ml_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["recsys", "train", "--data-dir", str(ml_dir), "--dmm", "--out", str(out), *TINY]
    assert main(argv) == 0
    assert "cml/triplet+dmm s0: 1 epochs, ndcg@10" not in capsys.readouterr().out  # ks 1, 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dmm"] and "warm/ndcg@5" in summary
    again = ["recsys", "train", "--resume", str(out), "--epochs", "2", "--no-progress"]
    assert main(again) == 2  # a longer run must be asked for
    assert "pass --extend" in capsys.readouterr().err
    assert main([*again, "--extend"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_eval_ranks_again_with_the_numbers_of_training(ml_dir, tmp_path, capsys):
    """``otcl recsys eval RUN`` rebuilds the model from the checkpoint and ranks the test items
    again: the numbers training wrote into summary.json, to float precision."""
    out = tmp_path / "run"
    argv = ["recsys", "train", "--data-dir", str(ml_dir), "--model", "two-tower", "--out",
            str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["recsys", "eval", str(out)]) == 0
    assert capsys.readouterr().out.startswith("tt-infonce (epoch 1): ")
    report = json.loads((out / "eval.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    keys = [k for k in summary if k.startswith(("warm/", "cold/", "no-"))]
    assert keys and {k: report[k] for k in keys} == pytest.approx({k: summary[k] for k in keys})


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--data-dir", "{tmp}/missing"], "data: '{tmp}/missing' not found"),
        (["--data-dir", "{tmp}/bad.csv", "--dataset", "csv"], "line 1: expected user_id"),
        (["--data-dir", "{tmp}/range"], "item id 99 out of range"),
        (["--data-dir", "{tmp}/stars"], "u.data' line 2: rating 7 is outside the scale 1..5"),
        (["--data-dir", "{tmp}/low.csv"], "the test set of low is empty"),
        (["--data-dir", "{ml}", "--set", "eval.ks=[1,500]"], "k: 500 is larger than"),
        (["--data-dir", "{ml}", "--model", "two-tower", "--loss-param", "rho=2"], "rho:"),
        (["--data-dir", "{ml}", "--model", "mf", "--dmm"], "dmm.enabled: not available"),
    ],
)
def test_train_bad_input_is_one_line_and_writes_nothing(
    ml_dir, make_ml, tmp_path, capsys, extra, match
):
    (tmp_path / "bad.csv").write_text("a;b;5\n")
    (tmp_path / "low.csv").write_text("a,x,1\nb,y,2\na,y,5\nb,x,1\n")
    (make_ml("range") / "u.data").write_text("1\t99\t5\t1\n")
    (make_ml("stars") / "u.data").write_text("1\t1\t5\t1\n1\t2\t7\t2\n2\t1\t-3\t3\n")
    fill = {"tmp": str(tmp_path), "ml": str(ml_dir)}
    out = tmp_path / "out"
    argv = ["recsys", "train", "--out", str(out), "--no-progress"]
    _one_line_error(capsys, argv + [a.format(**fill) for a in extra], match.format(**fill))
    assert _nothing_written(out)


def test_compare(ml_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    methods = "popularity,ease,itemknn,implicit-als,mf-bpr,cml,cml+dmm,tt-infonce,tt-infonce+dmm"
    argv = ["recsys", "compare", "--data-dir", str(ml_dir), "--out", str(out)]
    argv += ["--methods", methods, "--seeds", "2", "--cold-items", "0.3", *TINY[:5], "--jobs", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "recall@10" in printed and "DMM vs its base" in printed
    res = json.loads((out / "results.json").read_text())
    assert set(res["deltas"]) == {"cml+dmm", "tt-infonce+dmm"}
    d = res["deltas"]["cml+dmm"]["metrics"]["warm/ndcg@10"]
    per_seed = [
        res["methods"][m]["metrics"]["warm/ndcg@10"]["per_seed"] for m in ("cml", "cml+dmm")
    ]
    assert d["per_seed"] == pytest.approx([b - a for a, b in zip(*per_seed, strict=True)])
    assert "cold" in robustness(res)["tt-infonce"]
    assert (out / "recsys.png").stat().st_size > 0 and (out / "recsys-val.png").stat().st_size
    assert "best epoch" in printed and "tail recall@10" in printed
    for m in ("cml", "cml+dmm", "tt-infonce"):  # the validation-selected epoch of each seed
        best = res["methods"][m]["metrics"]["best_epoch"]["per_seed"]
        curves = [validation_curves(out / m / f"seed{k}") for k in (0, 1)]
        assert len(best) == 2 and all(curves)
        for b, pts in zip(best, curves, strict=True):
            assert b == max(pts, key=lambda p: (p[1], -p[0]))[0]
    for m in ("ease", "itemknn"):  # tuned on validation, the same value for every seed
        vals = res["methods"][m]["metrics"]["hyperparameter"]["per_seed"]
        assert len(vals) == 2 and vals[0] == vals[1]
        assert "tail/recall@10" in res["methods"][m]["metrics"]
    assert (out / "cml+dmm" / "seed1" / "checkpoint.pt").exists()
    # a second call reuses every finished run (implicit-als has none without the extra)
    assert main(argv) == 0
    runs = 18 if importlib.util.find_spec("implicit") is not None else 16
    assert capsys.readouterr().err.count("reusing") == runs


def test_compare_bad_input(ml_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    base = ["recsys", "compare", "--data-dir", str(ml_dir), "--out", str(out)]
    _one_line_error(capsys, base + ["--methods", "cml,svd"], "unknown method 'svd'")
    _one_line_error(capsys, base + ["--methods", "tt-nope"], "unknown loss 'nope'")
    _one_line_error(
        capsys,
        base + ["--methods", "cml", "--loss-param", "temperature=0.2"],
        "no compared method trains with an otcl loss",
    )
    assert _nothing_written(out)


def test_parallel_workers_give_the_same_numbers(ml_dir, tmp_path):
    """Runs trained by worker processes (forked here to start fast; spawned by default) equal
    in-process runs; two workers share three runs."""
    from otcl.pipelines.compare import make_run, train_runs
    from otcl.pipelines.comparison import SpecRunner, method_configs
    from otcl.pipelines.recsys.config import RecsysConfig
    from otcl.pipelines.recsys.trainer import load_data
    from otcl.pipelines.spec import get

    spec = get("recsys")

    cfg = RecsysConfig()
    cfg.data.data_dir = str(ml_dir)
    cfg.model.dim, cfg.train.epochs, cfg.train.progress = 8, 1, False
    runs = {}
    for where in ("par", "seq"):
        runs[where] = [
            make_run(m, method_configs(spec, cfg, m, [0], {})[0], tmp_path / where)
            for m in ("cml+dmm", "tt-infonce", "mf-bpr")
        ]
    train_runs(SpecRunner(spec), runs["par"], None, jobs=2, log=lambda s: None,
               start_method="fork")  # fmt: skip
    train_runs(SpecRunner(spec), runs["seq"], load_data(cfg), log=lambda s: None)
    for a, b in zip(runs["par"], runs["seq"], strict=True):
        par, seq = (json.loads((r.dir / "summary.json").read_text()) for r in (a, b))
        keys = [k for k in seq if k.startswith("warm/")]
        assert keys and {k: par[k] for k in keys} == {k: seq[k] for k in keys}, a.method


def test_recsys_without_a_verb_prints_its_help(capsys):
    assert main(["recsys"]) == 2
    assert "otcl recsys [-h] VERB" in capsys.readouterr().out


def test_interrupted_compare_resumes_to_the_same_numbers(ml_dir, tmp_path, capsys, monkeypatch):
    from otcl.pipelines.recsys.trainer import RecsysTrainer

    common = ["--data-dir", str(ml_dir), "--methods", "cml+dmm", "--seeds", "1", "--jobs", "1"]
    common += ["--dim", "8", "--epochs", "2", "--batch-size", "32", "--no-progress", "--no-plot"]
    assert main(["recsys", "compare", *common, "--out", str(tmp_path / "straight")]) == 0
    original = RecsysTrainer.compute_loss
    calls = {"n": 0}

    def interrupt_once(self, epoch, step):
        if epoch == 1 and step == 0 and calls["n"] == 0:
            calls["n"] += 1
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, deferred to the step's end
        return original(self, epoch, step)

    monkeypatch.setattr(RecsysTrainer, "compute_loss", interrupt_once)
    argv = ["recsys", "compare", *common, "--out", str(tmp_path / "cut")]
    assert main(argv) == 130  # Ctrl-C: the run's checkpoint is saved
    assert (
        "to continue: run the same `otcl recsys compare` command again" in capsys.readouterr().err
    )
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().err
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "cut"))
    a, b = ({k: v for k, v in r["methods"]["cml+dmm"]["metrics"].items() if k != "train_seconds"}
            for r in (a, b))  # fmt: skip
    assert a == b and "warm/ndcg@10" in a
