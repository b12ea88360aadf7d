"""Parameters declared once: the signature, defaults, checks, listing and errors follow."""

from __future__ import annotations

import inspect

import pytest
import torch

import otcl
from otcl._validation import check_int_at_least
from otcl.losses import OTContrastiveLoss, build
from otcl.losses.params import equals, param


@pytest.mark.parametrize("name", otcl.losses.available())
def test_signature_shows_every_parameter_with_its_default(name):
    cls = otcl.losses.get(name)
    sig = inspect.signature(cls)
    kinds = {p.kind for p in sig.parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds  # no bare **kwargs
    shown = {k: p.default for k, p in sig.parameters.items() if k not in ("base", "base_params")}
    assert shown == dict(cls.defaults)
    first = next(iter(sig.parameters))
    assert first == ("base" if name == "dmm" else "temperature")


def test_a_new_parameter_is_one_declaration():
    """A subclass adds a parameter in one line: default, check, rule, listing and error."""

    class Tiled(OTContrastiveLoss):
        scheme: str = param(default="dense")
        tile_size: int = param(
            default=64,
            check=lambda name, v: check_int_at_least(name, v, 1),
            applies=equals("scheme", "tiled"),
        )

    assert Tiled.defaults["tile_size"] == 64 and Tiled.defaults["temperature"] == 0.5
    assert Tiled.applies_when["tile_size"] == "scheme='tiled'"
    assert inspect.signature(Tiled).parameters["tile_size"].default == 64
    assert Tiled(scheme="tiled", tile_size=8).tile_size == 8
    assert Tiled().tile_size == 64
    with pytest.raises(ValueError, match="^tile_size: expected an integer >= 1, got 0$"):
        Tiled(scheme="tiled", tile_size=0)
    with pytest.raises(
        ValueError, match="^tile_size: applies only to scheme='tiled'; Tiled has scheme='dense'$"
    ):
        Tiled(tile_size=8)
    with pytest.raises(
        TypeError, match="Clash.solve: a parameter may not take the name of a method"
    ):

        class Clash(OTContrastiveLoss):
            solve: str = param(default="x")

    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Tiled()(z, z.flip(0)), build("infonce")(z, z.flip(0)))


def test_a_preset_changes_a_default_with_an_annotated_value():
    class Balanced(OTContrastiveLoss):
        constraint: str = "balanced"

    assert Balanced.defaults["constraint"] == "balanced"
    assert OTContrastiveLoss.defaults["constraint"] == "rows"  # the parent is unchanged
    assert Balanced().constraint == "balanced" and Balanced().iters == 10


def test_positional_and_duplicate_arguments():
    assert build("infonce").__class__(0.2).temperature == 0.2
    with pytest.raises(TypeError, match="at most 1 positional"):
        otcl.losses.InfoNCE(0.2, "cross")
    with pytest.raises(TypeError, match="multiple values for temperature"):
        otcl.losses.InfoNCE(0.2, temperature=0.3)


def _bool_params():
    cases = []
    for name in otcl.losses.available():
        for key, default in otcl.losses.get(name).defaults.items():
            if isinstance(default, bool):
                cases.append((name, key))
    return cases


BOOLS = _bool_params()


def test_bool_parameter_sweep_covers_every_loss():
    assert {n for n, _ in BOOLS} == set(otcl.losses.available())
    assert ("infonce", "symmetric") in BOOLS and ("dmm", "legacy_cumulative_margin") in BOOLS


@pytest.mark.parametrize("name,key", BOOLS)
@pytest.mark.parametrize("value", ["false", "true", "", 2, 1.0, [True]])
def test_bool_parameters_take_booleans_only(name, key, value):
    """A string such as "false" is refused (it used to be truthy), naming the parameter."""
    extra = {"layout": "cross"} if key == "symmetric" else {}
    if key == "detach_mean":
        extra = {"lam_uni": 0.2}
    with pytest.raises(ValueError, match=rf"^{key}: expected a bool \(True or False\), got "):
        build(name, **extra, **{key: value})


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), (1, True), (0, False)])
def test_bool_parameters_accept_bools_and_0_1(value, expected):
    import numpy as np

    assert build("infonce", layout="cross", symmetric=value).symmetric is expected
    assert build("dcl", check_inputs=np.bool_(expected)).check_inputs is expected


@pytest.mark.parametrize("name", otcl.losses.available())
def test_hooks_and_call_are_visible_to_inspect(name):
    loss = build(name)
    assert list(inspect.signature(loss.set_epoch).parameters) == ["epoch"]
    assert list(inspect.signature(loss.prepare_inputs).parameters) == ["encoder", "x1", "x2"]
    call = inspect.signature(loss.forward).parameters
    assert list(call)[:4] == ["z1", "z2", "labels", "target"] and "negatives" in call


def test_typed_package_and_build_return_type():
    from pathlib import Path
    from typing import get_type_hints

    assert (Path(otcl.__file__).parent / "py.typed").is_file()
    hints = get_type_hints(otcl.losses.build)
    assert hints["return"] is otcl.losses.ContrastiveLoss
    assert isinstance(build("infonce"), otcl.losses.ContrastiveLoss)
