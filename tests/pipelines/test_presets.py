"""Presets (``apply_presets``): a preset sets every setting the user did not set, in every
pipeline's config, whatever that setting's default -- the "preset trap" (a shared non-None
default such as ``optim.optimizer="sgd"`` that no preset could change) cannot come back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from otcl.pipelines.config import (
    ConfigBase,
    RunConfig,
    Section,
    apply_overrides,
    apply_presets,
    load_config,
    preset_for,
    save_config,
    user_settings,
)
from otcl.pipelines.multimodal.config import MultimodalConfig
from otcl.pipelines.multimodal.config import resolve as mm_resolve
from otcl.pipelines.recsys.config import RecsysConfig
from otcl.pipelines.recsys.config import resolve as recsys_resolve
from otcl.pipelines.ssl import config as ssl_config

CONFIGS = [RunConfig, ssl_config.Config, MultimodalConfig, RecsysConfig]


def _other_value(ann: str, default):
    """A value of the type ``ann`` that differs from ``default`` (and from None)."""
    if "dict" in ann:
        return {"preset_key": 1}
    if "tuple" in ann:
        inner = ann[ann.index("tuple[") + 6 :].split("]", 1)[0]
        n = 2 if "..." in inner else len(inner.split(","))
        return tuple(0.125 * (i + 1) for i in range(n))
    if ann.startswith("bool"):
        return not default if isinstance(default, bool) else True
    if ann.startswith("int"):
        return (default or 0) + 7
    if ann.startswith("float"):
        return (default or 0.0) + 0.375
    if ann.startswith("str"):
        return f"{default}-preset"
    raise AssertionError(f"no test value for {ann}")


def _settings(cls):
    cfg = cls()
    for sec in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, sec.name)):
            yield sec.name, f.name, str(f.type), getattr(getattr(cfg, sec.name), f.name)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__module__ + "." + c.__name__)
def test_a_preset_sets_every_setting_the_user_did_not_set(cls):
    settings = list(_settings(cls))
    assert len(settings) > 20
    for section, name, ann, default in settings:
        value = _other_value(ann, default)
        got = getattr(getattr(apply_presets(cls(), {section: {name: value}}), section), name)
        if isinstance(default, dict):
            assert got == {**value, **default}, (section, name)
        else:
            assert got == value, (section, name)
        # set by the user -- even to the default itself -- the setting keeps the user's value
        mine = cls()
        mine_value = default if default is not None else _other_value(ann, value)
        setattr(getattr(mine, section), name, mine_value)
        assert user_settings(mine) == {f"{section}.{name}"}
        got = getattr(getattr(apply_presets(mine, {section: {name: value}}), section), name)
        assert got == ({**value, **mine_value} if isinstance(default, dict) else mine_value)


def test_every_way_of_setting_counts_as_the_users(tmp_path):
    pytest.importorskip("yaml")
    preset = {"optim": {"optimizer": "adam", "lr": 0.5}, "train": {"epochs": 9}}
    assert apply_presets(RunConfig(), preset).optim.optimizer == "adam"
    by_override = apply_overrides(RunConfig(), ["optim.optimizer=sgd", "train.epochs=2"])
    by_dict = RunConfig.from_dict({"optim": {"optimizer": "sgd"}, "train": {"epochs": 2}})
    save_config(by_override, tmp_path / "c.yaml")
    by_file = load_config(tmp_path / "c.yaml", RunConfig)
    for cfg in (by_override, by_dict, by_file):
        r = apply_presets(cfg, preset)
        assert (r.optim.optimizer, r.train.epochs) == ("sgd", 2)
        assert r.optim.lr == 0.5  # None (saved as null in the file): the preset's


def test_layers_mappings_and_copies():
    cfg = RunConfig()
    cfg.loss.params = {"temperature": 0.1}
    r = apply_presets(
        cfg,
        {"train": {"epochs": 3, "batch_size": 8}, "loss": {"params": {"temperature": 0.3}}},
        {"train": {"epochs": 4}, "loss": {"params": {"layout": "cross"}}},
    )
    assert (r.train.epochs, r.train.batch_size) == (4, 8)  # the later layer wins
    assert r.loss.params == {"temperature": 0.1, "layout": "cross"}  # the user's entries win
    assert cfg.train.epochs is None and cfg.loss.params == {"temperature": 0.1}  # a copy
    assert user_settings(r) == {"loss.params"}  # preset values are not the user's
    # ... so a second resolve with another preset replaces them
    assert apply_presets(r, {"train": {"epochs": 6}}).train.epochs == 6


def test_bad_presets_are_programming_errors():
    @dataclass
    class Plain:
        dim: int = 3

    @dataclass
    class WithPlain(ConfigBase):
        items: Plain = field(default_factory=Plain)

    with pytest.raises(TypeError, match="'items' is not a config Section"):
        apply_presets(WithPlain(), {"items": {"dim": 4}})
    with pytest.raises(TypeError, match="unknown setting train.epoch"):
        apply_presets(RunConfig(), {"train": {"epoch": 4}})
    with pytest.raises(ValueError, match="data.dataset: expected one of a, b, got 'c'"):
        preset_for({"b": {}, "a": {}}, "data.dataset", "c")
    assert issubclass(ssl_config.ImageTrainConfig, Section)


def test_pipeline_presets_can_set_shared_defaults(monkeypatch):
    """The trap: the multimodal pipeline trained with SGD while its preset meant Adam."""
    digits = ssl_config.PRESETS["digits"]
    monkeypatch.setitem(
        ssl_config.PRESETS, "digits", {**digits, "optim": {**digits["optim"], "optimizer": "adam"}}
    )
    assert ssl_config.resolve(ssl_config.Config()).optim.optimizer == "adam"
    mine = apply_overrides(ssl_config.Config(), ["optim.optimizer=sgd"])
    assert ssl_config.resolve(mine).optim.optimizer == "sgd"
    assert mm_resolve(MultimodalConfig()).optim.optimizer == "adam"
    mine = apply_overrides(MultimodalConfig(), ["optim.optimizer=sgd"])
    assert mm_resolve(mine).optim.optimizer == "sgd"
    r = recsys_resolve(RecsysConfig())
    assert (r.optim.optimizer, r.optim.schedule, r.optim.fused) == ("adam", "constant", True)


@pytest.mark.parametrize(
    "cls, resolve",
    [
        (ssl_config.Config, ssl_config.resolve),
        (MultimodalConfig, mm_resolve),
        (RecsysConfig, recsys_resolve),
    ],
)
def test_a_saved_config_resolves_to_itself(cls, resolve):
    """What ``--resume`` and ``compare`` rely on: a run's saved config resolves to itself, and a
    setting it lacks (added since) takes today's preset."""
    r = resolve(cls())
    saved = r.to_dict()
    assert resolve(cls.from_dict(saved)).to_dict() == saved
    del saved["train"]["epochs"]
    assert resolve(cls.from_dict(saved)).train.epochs == r.train.epochs


def test_a_new_preset_key_replaces_what_the_last_preset_filled():
    cml = recsys_resolve(RecsysConfig())
    assert cml.model.dim == 256
    cml.model.kind = "two-tower"
    tt = recsys_resolve(cml)
    assert tt.model.dim == 64 and tt.train.batch_size == 512 and tt.loss.params
