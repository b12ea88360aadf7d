"""Generic config machinery: any top-level dataclass, YAML/TOML, overrides, type checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from otcl.pipelines.config import (
    ConfigBase,
    LossConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_value,
    save_config,
)

pytest.importorskip("yaml")


@dataclass
class ItemsConfig:
    """A section a pipeline might add."""

    dim: int = 32
    tags: dict[str, str] = field(default_factory=dict)
    split: tuple[float, float] = (0.8, 0.2)
    name: str | None = None


@dataclass
class OtherConfig(ConfigBase):
    """A top-level config of some other pipeline: shared sections plus its own."""

    items: ItemsConfig = field(default_factory=ItemsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_yaml_toml_overrides_and_save_round_trip(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("loss:\n  name: gca-uot\n  params: {rho: 0.5}\ntrain:\n  epochs: 7\n")
    t = tmp_path / "c.toml"
    t.write_text('[loss]\nname = "gca-uot"\n[loss.params]\nrho = 0.5\n[train]\nepochs = 7\n')
    a, b = load_config(y, RunConfig), load_config(t, RunConfig)
    assert a.to_dict() == b.to_dict()
    assert a.loss.name == "gca-uot" and a.loss.params == {"rho": 0.5} and a.train.epochs == 7
    c = apply_overrides(a, ["train.epochs=9", "loss.params.iters=20", "optim.lr=0.3"])
    assert c.train.epochs == 9 and c.loss.params == {"rho": 0.5, "iters": 20}
    assert c.optim.lr == 0.3
    assert a.train.epochs == 7 and a.loss.params == {"rho": 0.5}  # overrides copy
    save_config(c, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml", RunConfig) == c


def test_any_top_level_dataclass(tmp_path):
    cfg = apply_overrides(
        OtherConfig(),
        ["items.dim=64", "items.tags.genre=drama", "items.split=0.9,0.1", "items.name=ml"],
    )
    assert cfg.items.dim == 64 and cfg.items.tags == {"genre": "drama"}
    assert cfg.items.split == (0.9, 0.1) and cfg.items.name == "ml"
    save_config(cfg, tmp_path / "o.yaml")
    assert load_config(tmp_path / "o.yaml", OtherConfig) == cfg
    assert OtherConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown setting 'optim'"):
        apply_overrides(OtherConfig(), ["optim.lr=1"])


def test_text_settings_keep_the_text_as_typed():
    """`--amp none` failed (`none` parsed to None); `cache_dir: off` in YAML became 'False'."""
    cfg = apply_overrides(RunConfig(), ["train.amp=none", "loss.name=none", "train.out=null"])
    assert cfg.train.amp == "none" and cfg.loss.name == "none" and cfg.train.out is None
    assert RunConfig.from_dict({"train": {"amp": False}}).train.amp == "false"
    with pytest.raises(ValueError, match="items.split: expected 2 numbers, got \\[0.5\\]"):
        apply_overrides(OtherConfig(), ["items.split=0.5"])
    with pytest.raises(ValueError, match="items.split: expected 2 numbers"):
        OtherConfig.from_dict({"items": {"split": [0.1, 0.2, 0.7]}})


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.epoch=3", "unknown setting 'train.epoch'"),
        ("train.epochs=abc", "train.epochs: expected an integer"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("train.compile=maybe", "train.compile: expected true or false"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("optim.lr=true", "optim.lr: expected a number"),
        ("train.seed=none", "train.seed: expected a value of type int"),
        ("loss.params=3", "loss.params: expected a mapping"),
        ("train=3", "'train' is a section"),
        ("nonsense", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_setting(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(RunConfig(), [override])


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "none.yaml", RunConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="cannot parse"):
        load_config(bad, RunConfig)
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        load_config(tmp_path / "c.json", RunConfig)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping at the top"):
        load_config(tmp_path / "list.yaml", RunConfig)


@pytest.mark.parametrize(
    "text, value",
    [
        ("0.5", 0.5),
        ("3", 3),
        ("true", True),
        ("off", False),
        ("none", None),
        ("[1, 2]", [1, 2]),
        ("0.2,1", [0.2, 1]),
        ("gca-uot", "gca-uot"),
        ('"a,b"', "a,b"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_given_settings_are_this_requests_not_a_saved_runs(tmp_path):
    """given(): assignments, overrides and the user's config file give a setting; a saved
    run read back with from_dict sets every setting but gives none (so a rule "a setting given
    where it does not apply is refused, whatever its value" never refuses a saved run)."""
    from otcl.pipelines.config import RunConfig, apply_overrides, from_dict, given, load_config

    cfg = apply_overrides(RunConfig(), ["optim.momentum=0.9"])  # its default value, given
    cfg.train.epochs = 3
    assert given(cfg.optim) == {"momentum"} and given(cfg.train) == {"epochs"}
    saved = from_dict(RunConfig, cfg.to_dict())
    assert given(saved.optim) == set() and given(saved.train) == set()
    path = tmp_path / "c.yaml"
    path.write_text("optim: {optimizer: adam}\n")
    assert given(load_config(path, RunConfig).optim) == {"optimizer"}


def test_a_given_inapplicable_setting_is_refused_at_its_default_value_too():
    from otcl.pipelines.config import RunConfig, from_dict
    from otcl.pipelines.engine.trainer import EpochTrainer

    class Check(EpochTrainer):  # only the settings check, no run directory
        def __init__(self, cfg):
            self.cfg = cfg

    cfg = RunConfig()
    cfg.optim.optimizer, cfg.optim.lr, cfg.train.epochs, cfg.train.batch_size = "adam", 1e-3, 1, 8
    Check(cfg).check_config()  # momentum not given: fine
    cfg.optim.momentum = 0.9  # the default, given: it does not apply to Adam
    with pytest.raises(ValueError, match="optim.momentum / optim.nesterov: apply only to"):
        Check(cfg).check_config()
    Check(from_dict(RunConfig, cfg.to_dict())).check_config()  # a saved run: not given
