"""One list of the settings that do not change what a run is: resume, compare and the benchmark
read it, and agree on every entry."""

from __future__ import annotations

import doctest
import importlib.util

import pytest
import torch

import otcl.pipelines.engine.identity
from otcl.pipelines.compare import make_run, run_state, train_run
from otcl.pipelines.engine.identity import VOLATILE, changed, comparable, unmeasured
from otcl.pipelines.engine.trainer import EpochTrainer

from ..test_compare import Toy, ToyRunner, _config

#: a value other than the toy run's for every volatile setting (a new entry must be added here)
OTHER = {
    "train.out": "elsewhere",
    "train.progress": True,
    "train.device": "auto",
    "train.threads": torch.get_num_threads(),
    "train.log_every": 2,
    "train.checkpoint_every": 5,
    "train.compile": True,
    "train.deterministic": False,
    "train.log": "tensorboard" if importlib.util.find_spec("tensorboard") else "none",
}
#: settings that change what the run is
REFUSED = {"optim.lr": 0.1, "optim.weight_decay": 0.1, "train.max_steps_per_epoch": 2}


def _request(tmp_path, key: str, value):
    """The toy comparison's run with ``key`` set to ``value`` (after make_run sets train.out)."""
    run = make_run("toy", _config(), tmp_path / "cmp")
    section, name = key.split(".")
    setattr(getattr(run.cfg, section), name, value)
    return run


def test_the_examples_run():
    result = doctest.testmod(otcl.pipelines.engine.identity)
    assert result.attempted > 0 and result.failed == 0


def test_resume_and_compare_agree_on_every_entry(tmp_path):
    assert Toy.volatile == VOLATILE == EpochTrainer.volatile and not Toy.measures
    assert set(OTHER) == set(VOLATILE)
    runner = ToyRunner()
    train_run(runner, make_run("toy", _config(), tmp_path / "cmp"), None, lambda s: None)
    for key, value in OTHER.items():  # both accept
        run = _request(tmp_path, key, value)
        assert run_state(runner, run) == "finished", key
        Toy(run.cfg, run.dir, resume=True, log=lambda s: None).close()
    for key, value in REFUSED.items():  # both refuse
        run = _request(tmp_path, key, value)
        with pytest.raises(ValueError, match="different configuration"):
            run_state(runner, run)
        with pytest.raises(ValueError, match=f"resume: these settings differ .*{key}"):
            Toy(run.cfg, run.dir, resume=True, log=lambda s: None)


def test_measured_settings_resume_but_are_not_reused():
    """An image run's evaluation may change on resume (it is measured again at the end), but
    a comparison or the benchmark does not reuse numbers measured another way."""
    from otcl.pipelines.ssl.trainer import SSLTrainer

    assert set(VOLATILE) <= set(SSLTrainer.volatile)
    assert set(SSLTrainer.measures) <= set(SSLTrainer.volatile)
    saved = {"train": {"device": "cpu"}, "data": {"data_dir": "a"}, "eval": {"knn_k": 20}}
    now = {"train": {"device": "cuda"}, "data": {"data_dir": "b"}, "eval": {"knn_k": 50}}
    assert changed(saved, now, SSLTrainer.volatile) == []  # resume
    kept = unmeasured(SSLTrainer.volatile, SSLTrainer.measures)  # compare and the benchmark
    assert changed(saved, now, kept) == ["eval.knn_k"]
    assert comparable(now, kept) == {"train": {}, "data": {}, "eval": {"knn_k": 50}}
