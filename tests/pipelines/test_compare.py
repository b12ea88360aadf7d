"""The comparison machinery every pipeline shares (otcl.pipelines.compare), on a toy trainer:
run states (reuse, resume, refusal of other settings), worker processes, statistics, outputs."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics

import numpy as np
import pytest
import torch
from torch import nn

from otcl.pipelines.compare import (
    Run,
    Runner,
    check_request,
    comparison_dir,
    make_run,
    mean_std,
    paired_delta,
    run_state,
    seed_stats,
    train_run,
    train_runs,
    write_outputs,
)
from otcl.pipelines.config import RunConfig, apply_presets
from otcl.pipelines.engine.identity import comparable
from otcl.pipelines.engine.rundir import CHECKPOINT, SUMMARY
from otcl.pipelines.engine.stops import TrainingInterrupted
from otcl.pipelines.engine.trainer import EpochTrainer

pytest.importorskip("yaml")  # run directories hold config.yaml

#: the toy pipeline's preset (what resolve fills in where the user set nothing)
PRESET = {"optim": {"lr": 0.5}, "train": {"batch_size": 16, "epochs": 2}}


def resolve(cfg: RunConfig) -> RunConfig:
    return apply_presets(cfg, PRESET)


class Toy(EpochTrainer):
    """Two noisy views of random vectors through a linear map, InfoNCE; ``data`` is unused."""

    def resolve_config(self, cfg: RunConfig) -> RunConfig:
        return resolve(cfg)

    def build(self) -> None:
        self.x = torch.randn(48, 5, generator=torch.Generator().manual_seed(1))
        self.model = nn.Linear(5, 3)
        self.loss_fn = self.build_loss()
        self.steps_per_epoch = 48 // self.batch_size

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        x = self.x[self.batch_indices(48, epoch, step)]
        noise = torch.randn(2, *x.shape, generator=self.step_generator("noise"))
        return self.loss_fn(self.model(x + 0.1 * noise[0]), self.model(x + 0.1 * noise[1]))

    def evaluate(self, final: bool) -> dict[str, float]:
        return {"norm": float(self.model.weight.detach().norm())} if final else {}


class ToyRunner(Runner):
    config_cls = RunConfig
    trainer_cls = Toy
    needs = ("extra.json",)
    resolve = staticmethod(resolve)

    def load_data(self, cfg):
        return None

    def finish(self, run: Run, data) -> None:
        (run.dir / "extra.json").write_text(json.dumps({"seed": run.seed}))


def _config(seed: int = 0, **train) -> RunConfig:
    cfg = RunConfig()
    cfg.train.progress, cfg.train.deterministic, cfg.train.device = False, True, "cpu"
    cfg.train.seed = seed
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _weights(run: Run) -> dict[str, torch.Tensor]:
    from otcl.pipelines.engine.checkpoint import load_checkpoint

    return load_checkpoint(run.dir)["model"]


def test_states_reuse_resume_and_refuse_other_settings(tmp_path):
    runner = ToyRunner()
    run = make_run("toy", _config(3), tmp_path / "cmp")
    assert run.dir == tmp_path / "cmp" / "toy" / "seed3" and run.cfg.train.out == str(run.dir)
    assert run_state(runner, run) == "new"
    lines: list[str] = []
    assert train_run(runner, run, None, lines.append) == "new"
    assert run_state(runner, run) == "finished" and (run.dir / "extra.json").exists()
    mtime = (run.dir / CHECKPOINT).stat().st_mtime_ns
    assert train_run(runner, run, None, lines.append) == "finished"
    assert lines[-1] == f"{run.dir}: finished earlier, reusing its results"
    assert (run.dir / CHECKPOINT).stat().st_mtime_ns == mtime  # not trained again
    # where and how it runs may differ; what it computes may not
    moved = make_run("toy", _config(3, device="auto", threads=1, progress=True), tmp_path / "cmp")
    assert run_state(runner, moved) == "finished"
    other = make_run("toy", _config(3, epochs=3), tmp_path / "cmp")
    with pytest.raises(ValueError, match="holds a run with a different configuration"):
        run_state(runner, other)
    # a run without its evaluation is finished again: resumed at its end, then evaluated
    (run.dir / "extra.json").unlink()
    assert run_state(runner, run) == "resume"
    assert train_run(runner, run, None, lines.append) == "resume"
    assert f"{run.dir}: resuming" in lines
    assert run_state(runner, run) == "finished"


def test_a_run_saved_before_a_new_setting_is_reused(tmp_path):
    """The saved config is resolved as today: a setting it lacks takes its preset."""
    from otcl.pipelines.engine.checkpoint import load_checkpoint, save_checkpoint

    runner = ToyRunner()
    run = make_run("toy", _config(), tmp_path)
    train_run(runner, run, None, lambda s: None)
    st = load_checkpoint(run.dir)
    del st["config"]["train"]["batch_size"], st["config"]["optim"]["fused"]
    save_checkpoint(st, run.dir / CHECKPOINT)
    assert run_state(runner, run) == "finished"


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    runner = ToyRunner()
    straight = make_run("toy", _config(), tmp_path / "a")
    train_runs(runner, [straight], None, log=lambda s: None)

    class Stop(Toy):
        def train_step(self, epoch, step):
            if epoch == 1 and step == 0:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, honoured after the step
            return super().train_step(epoch, step)

    class StopRunner(ToyRunner):
        trainer_cls = Stop

    cut = make_run("toy", _config(), tmp_path / "b")
    with pytest.raises(TrainingInterrupted):
        train_runs(StopRunner(), [cut], None, log=lambda s: None)
    assert run_state(runner, cut) == "resume"
    train_runs(runner, [cut], None, log=lambda s: None)
    a, b = _weights(straight), _weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_worker_processes_give_the_same_runs(tmp_path):
    """Two worker processes (forked here to start fast; spawned by default) train three runs
    to the same weights as this process; finished runs are reused without a worker."""
    runner = ToyRunner()
    par = [make_run("toy", _config(s), tmp_path / "par") for s in range(3)]
    seq = [make_run("toy", _config(s), tmp_path / "seq") for s in range(3)]
    lines: list[str] = []
    train_runs(runner, par, None, jobs=2, log=lines.append, start_method="fork")
    assert lines[0] == "training 3 runs in 2 worker processes"
    assert sum(" done in " in line for line in lines) == 3
    train_runs(runner, seq, None, log=lambda s: None)
    for a, b in zip(par, seq, strict=True):
        wa, wb = _weights(a), _weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert (a.dir / "extra.json").exists()
        sa, sb = (json.loads((r.dir / SUMMARY).read_text()) for r in (a, b))
        assert sa["norm"] == sb["norm"]
    lines.clear()
    train_runs(runner, par, None, jobs=2, log=lines.append, start_method="fork")
    assert lines == [f"{r.dir}: finished earlier, reusing its results" for r in par]
    with pytest.raises(ValueError, match="jobs: expected an integer >= 1"):
        train_runs(runner, par, None, jobs=0)


class BadDataRunner(ToyRunner):
    """Seed 1's data is refused (a ``ValueError`` in its worker)."""

    def load_data(self, cfg):
        if cfg.train.seed == 1:
            raise ValueError("data: seed 1's file is broken")
        return None

    def data_key(self, cfg):
        return str(cfg.train.seed)


def test_a_run_that_fails_in_its_worker_is_named_and_no_new_run_starts(tmp_path):
    from otcl.pipelines.engine.stops import RunFailed

    runs = [make_run("toy", _config(s), tmp_path / "cmp") for s in range(4)]
    lines: list[str] = []
    with pytest.raises(RunFailed) as info:
        train_runs(BadDataRunner(), runs, None, jobs=2, log=lines.append, start_method="fork")
    msg = str(info.value)
    assert msg.startswith(f"compare: {runs[1].dir}: data: seed 1's file is broken"), msg
    assert not (runs[3].dir / CHECKPOINT).exists()  # nothing new starts after a failure


def test_statistics_over_seeds():
    xs = [0.61, 0.58, None, 0.64, float("nan")]
    m, s = mean_std(xs)
    assert m == pytest.approx(np.mean([0.61, 0.58, 0.64]))
    assert s == pytest.approx(np.std([0.61, 0.58, 0.64], ddof=1))
    assert mean_std([0.3]) == (0.3, 0.0)
    assert all(math.isnan(v) for v in mean_std([None, float("nan")]))
    assert seed_stats([1.0, 3.0]) == {"mean": 2.0, "std": statistics.stdev([1.0, 3.0])}
    base, other = [0.20, 0.30, 0.25, None], [0.22, 0.33, 0.24, 0.5]
    d = paired_delta(base, other)
    diffs = [0.02, 0.03, -0.01]
    assert d["per_seed"] == pytest.approx(diffs)
    assert d["delta"] == pytest.approx(np.mean(diffs))
    assert d["delta_std"] == pytest.approx(np.std(diffs, ddof=1))
    assert d["relative"] == pytest.approx(np.mean(diffs) / np.mean([0.20, 0.30, 0.25]))
    assert math.isnan(paired_delta([0.0, 0.0], [0.1, 0.2])["relative"])


def test_comparable_drops_only_the_volatile_settings():
    cfg = _config().to_dict()
    d = comparable(cfg)
    assert "out" not in d["train"] and "device" not in d["train"] and "seed" in d["train"]
    assert "out" in cfg["train"]  # a copy
    assert comparable(cfg, ("optim.lr",))["train"] == cfg["train"]


def test_request_checks():
    with pytest.raises(ValueError, match="losses: expected at least one loss name, got none"):
        check_request([], 3, {}, [])
    with pytest.raises(ValueError, match="seeds: expected an integer >= 1, got 0"):
        check_request(["a"], 0, {}, ["a"])
    with pytest.raises(ValueError, match=r"losses not compared: \['b'\]"):
        check_request(["a"], 1, {"b": {}}, ["a"])
    with pytest.raises(ValueError, match="methods: expected at least one method"):
        check_request([], 1, {}, [], what="methods", item="method")


def test_output_dir_is_locked_and_outputs_are_written(tmp_path, capsys, monkeypatch):
    lines: list[str] = []
    with comparison_dir(tmp_path / "cmp") as out:
        with pytest.raises(ValueError, match="being written by another otcl process"):
            with comparison_dir(out):
                pass

        def no_matplotlib():
            raise ImportError("matplotlib")

        write_outputs(out, {"a": 1, "wall_seconds": 2.0}, "| t |", plot=no_matplotlib,
                      log=lines.append)  # fmt: skip
    assert json.loads((out / "results.json").read_text()) == {"a": 1, "wall_seconds": 2.0}
    assert (out / "table.md").read_text() == "| t |\n" and capsys.readouterr().out == "| t |\n"
    assert lines == [
        "matplotlib is not installed: no plots (pip install 'otcl[train]')",
        f"results: {out / 'results.json'} (2 s)",
    ]
    with comparison_dir(tmp_path / "cmp"):  # released
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        with comparison_dir(tmp_path / "file"):
            pass
