"""A fourth pipeline from a spec alone (otcl.pipelines.spec): Gaussian clusters, a linear
encoder, any otcl loss. Registered here, it gets train, eval, compare, --jobs, resume, merging
and the results schema from the generic verbs, with nothing copied from another pipeline."""

from __future__ import annotations

import copy
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from otcl import cli
from otcl.losses import build
from otcl.pipelines import Run, load_encoder
from otcl.pipelines.config import ConfigBase, LossConfig, OptimConfig, Section, TrainConfig
from otcl.pipelines.engine.trainer import EpochTrainer
from otcl.pipelines.files import atomic_write_text
from otcl.pipelines.spec import Flag, Pipeline, get, register, split_dmm

pytest.importorskip("yaml")  # run directories hold config.yaml


# -- the toy pipeline: its whole declaration ---------------------------------- spec begins
@dataclass
class ClusterData(Section):
    clusters: int = 3
    n: int = 96


@dataclass
class ToyConfig(ConfigBase):
    data: ClusterData = field(default_factory=ClusterData)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.5))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, batch_size=16))


def load_clusters(cfg: ToyConfig) -> dict[str, torch.Tensor]:
    g, y = torch.Generator().manual_seed(0), torch.arange(cfg.data.n) % cfg.data.clusters
    centres = 3 * torch.randn(cfg.data.clusters, 6, generator=g)
    return {"x": centres[y] + torch.randn(len(y), 6, generator=g), "y": y}


def build_encoder(cfg: ToyConfig, data: dict) -> nn.Module:
    return nn.Linear(6, 4)


class ClusterTrainer(EpochTrainer):
    def build(self) -> None:
        self.data = self.given_data or load_clusters(self.cfg)
        self.model, self.loss_fn = build_encoder(self.cfg, self.data), self.build_loss()
        self.steps_per_epoch = len(self.data["y"]) // self.batch_size

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        x = self.data["x"][self.batch_indices(len(self.data["y"]), epoch, step)]
        e = 0.3 * torch.randn(2, *x.shape, generator=self.step_generator("views"))
        return self.loss_fn(self.forward_model(x + e[0]), self.forward_model(x + e[1]))


def method_config(cfg: ToyConfig, method: str, shared: dict, per_loss: dict) -> ToyConfig:
    base, dmm = split_dmm(method)
    cfg.loss.name = "dmm" if dmm else base
    cfg.loss.params = {**shared, **per_loss.get(base, {}), **({"base": base} if dmm else {})}
    return cfg


def evaluate(run_dir, *, device="cpu", data=None, progress=True) -> dict:
    """Nearest-centroid accuracy of the embeddings (centroids of the same points)."""
    run = Run.load(run_dir, "toy")
    data = data or load_clusters(run.config)
    with torch.no_grad():
        z = nn.functional.normalize(run.model(device, data=data)(data["x"]), dim=1)
    c = torch.stack([z[data["y"] == k].mean(0) for k in range(int(data["y"].max()) + 1)])
    report = {"accuracy": float(((z @ c.T).argmax(1) == data["y"]).float().mean())}
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps(report))
    return report


def check(cfg: ToyConfig) -> None:
    build(cfg.loss.name, **cfg.loss.params)  # an unknown loss or parameter: one line


def record(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {**json.loads((run_dir / "eval.json").read_text()), "loss": summary["final_loss"]}


SPEC = register(Pipeline(
    name="toy", help="Gaussian clusters", config_cls=ToyConfig, resolve=copy.deepcopy,
    check=check, load_data=load_clusters, build_model=build_encoder,
    trainer_cls=ClusterTrainer, methods=("infonce", "infonce+dmm"), method_config=method_config,
    record=record, evaluate=evaluate, eval_file="eval.json", eval_after_train=True,
    delta_metrics=("accuracy",),
    flags=(Flag("--clusters", "data.clusters", {"type": int}),),
))  # fmt: skip
# ------------------------------------------------------------------------------ spec ends

TINY = ["--no-progress", "--device", "cpu", "--clusters", "2"]


@pytest.fixture(autouse=True)
def toy():
    """Registered on import (a worker process imports this module and finds it), and here
    again (another test may have left a replacement)."""
    yield register(SPEC)


def test_the_spec_is_short():
    text = Path(__file__).read_text()
    lines = text[text.index("spec begins") : text.index("spec ends")].splitlines()
    assert len(lines) < 80


def test_train_eval_and_the_python_api(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["toy", "train", "--out", str(out), "--loss", "gca-uot", *TINY]) == 0
    assert cli.main(["toy", "train", "--out", str(tmp_path / "d"), "--dmm", *TINY]) == 0
    dmm = Run.load(tmp_path / "d").config.loss  # --dmm: DMM around the chosen loss
    assert dmm.name == "dmm" and dmm.params["base"] == "infonce"
    capsys.readouterr()
    assert cli.main(["toy", "eval", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["accuracy"] > 0
    run = Run.load(out)  # its pipeline found from the saved config
    assert run.spec is get("toy") and run.finished and run.config.data.clusters == 2
    enc = load_encoder(out)
    assert isinstance(enc, nn.Linear) and not enc.training
    assert 0.5 <= run.metrics()["accuracy"] <= 1
    with pytest.raises(SystemExit):  # another pipeline's flag: not offered here
        cli.main(["toy", "train", "--out", str(out), "--patches", "4", *TINY])


def test_compare_jobs_reuse_merge_and_schema(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["toy", "compare", "--seeds", "2", "--out", str(out), "--no-plot", *TINY]
    assert cli.main([*argv, "--jobs", "2"]) == 0  # two worker processes
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "otcl-results/1" and res["pipeline"] == "toy"
    assert list(res["methods"]) == ["infonce", "infonce+dmm"] and len(res["runs"]) == 4
    acc = res["methods"]["infonce"]["metrics"]["accuracy"]
    assert acc["n"] == 2 and len(acc["per_seed"]) == 2 and acc["std"] >= 0
    delta = res["deltas"]["infonce+dmm"]["metrics"]["accuracy"]
    dmm = res["methods"]["infonce+dmm"]["metrics"]["accuracy"]["per_seed"]
    assert delta["per_seed"] == pytest.approx(
        [b - a for a, b in zip(acc["per_seed"], dmm, strict=True)]
    )
    # the same runs in this process: every run reused, the same numbers (jobs do not matter)
    capsys.readouterr()
    assert cli.main(["toy", "compare", "--methods", "infonce", "--seeds", "1", "--out", str(out),
                     "--no-plot", "--jobs", "1", *TINY]) == 0  # fmt: skip
    assert capsys.readouterr().err.count("reusing") == 1
    again = json.loads((out / "results.json").read_text())
    assert again["methods"] == res["methods"]  # merged: the full table, not one row


def test_an_interrupted_compare_resumes_to_the_same_numbers(tmp_path, capsys, monkeypatch):
    argv = ["toy", "compare", "--methods", "infonce", "--seeds", "1", "--no-plot", *TINY]
    argv += ["--set", "train.epochs=3"]
    assert cli.main([*argv, "--out", str(tmp_path / "straight")]) == 0
    original, calls = ClusterTrainer.compute_loss, []

    def interrupt_once(self, epoch, step):
        if epoch == 1 and step == 0 and not calls:
            calls.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, deferred to the step's end
        return original(self, epoch, step)

    monkeypatch.setattr(ClusterTrainer, "compute_loss", interrupt_once)
    assert cli.main([*argv, "--out", str(tmp_path / "cut")]) == 130
    assert "run the same `otcl toy compare` command again" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(tmp_path / "cut")]) == 0
    assert "resuming" in capsys.readouterr().err
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "cut"))
    assert a["methods"] == b["methods"]
