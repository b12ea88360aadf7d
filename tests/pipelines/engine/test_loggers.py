"""``train.log=tensorboard``: the scalars of metrics.jsonl as TensorBoard events, read back."""

from __future__ import annotations

import importlib.util
import json

import pytest

from otcl.pipelines.engine import loggers
from otcl.pipelines.ssl.trainer import SSLTrainer

HAS_TB = importlib.util.find_spec("tensorboard") is not None
needs_tb = pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (otcl[tensorboard])")


def _events(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / loggers.TB_DIR))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _jsonl(run_dir) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in loggers.scalars(rec).items():
            out.setdefault(k, []).append((rec["epoch"], v))
    return out


def _same(events, records):
    assert events.keys() == records.keys()
    for tag, pts in records.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in pts], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in pts], rel=1e-6), tag


@needs_tb
def test_tensorboard_events_hold_the_scalars_of_metrics_jsonl(tmp_path, tiny_config):
    cfg = tiny_config(log="tensorboard")
    SSLTrainer(cfg, tmp_path / "run").fit()
    events = _events(tmp_path / "run")
    assert {"loss", "lr", "seconds", "views_per_s", "knn"} <= events.keys()
    _same(events, _jsonl(tmp_path / "run"))


@needs_tb
def test_a_resumed_run_drops_the_events_after_its_checkpoint(tmp_path, tiny_config):
    cfg = tiny_config(log="tensorboard", epochs=4, checkpoint_every=2)
    cfg.eval.knn_every = 1

    class CrashInEpoch4(SSLTrainer):  # epochs 1-3 logged, the checkpoint is of epoch 2
        def train_step(self, epoch, step):
            if epoch == 3 and step == 1:
                raise RuntimeError("crash")
            return super().train_step(epoch, step)

    with pytest.raises(RuntimeError, match="crash"):
        CrashInEpoch4(cfg, tmp_path / "run").fit()
    assert [s for s, _ in _events(tmp_path / "run")["loss"]] == [1, 2, 3]
    SSLTrainer(cfg, tmp_path / "run", resume=True).fit()
    events = _events(tmp_path / "run")
    assert [s for s, _ in events["loss"]] == [1, 2, 3, 4]  # epoch 3 once: the redone one
    _same(events, _jsonl(tmp_path / "run"))


def test_bad_or_missing_logger_is_one_line(monkeypatch, tmp_path, tiny_config):
    with pytest.raises(ValueError, match=r"train.log: expected one of none, tensorboard"):
        loggers.check_log("wandb")
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install 'otcl\[tensorboard\]'"):
        SSLTrainer(tiny_config(log="tensorboard"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "verb", [["train"], ["recsys", "train"], ["multimodal", "train"], ["domains", "train"]]
)
def test_the_flag_is_on_every_train_verb(verb, capsys):
    from otcl import cli

    with pytest.raises(SystemExit):
        cli.main([*verb, "--help"])
    assert "--log {none,tensorboard}" in capsys.readouterr().out
