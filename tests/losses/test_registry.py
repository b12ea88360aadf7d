"""The registry and the parameters: names, defaults, and one clear ValueError per mistake."""

from __future__ import annotations

import pytest
import torch

import otcl
from otcl.losses import (
    build,
)
from tests.conftest import OT_FAMILY


# -- registry and bad input ------------------------------------------------------------------
def test_registry_lists_and_builds_core_losses():
    assert set(OT_FAMILY) <= set(otcl.losses.available())
    for name in OT_FAMILY:
        assert isinstance(build(name), torch.nn.Module)
    assert otcl.losses.parameters("gca-uot")["rho"] == 0.2


ALL = otcl.losses.available()


def test_unknown_name_and_parameter_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'nope'.*gca-uot"):
        build("nope")
    with pytest.raises(ValueError, match="unknown parameter.*tempreature.*valid:.*temperature"):
        build("infonce", tempreature=0.1)


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameter_lists_the_valid_ones_for_every_loss(name):
    with pytest.raises(ValueError, match="unknown") as err:
        build(name, bogus_parameter=1)
    msg = str(err.value)
    assert "bogus_parameter" in msg and "valid:" in msg
    valid = [k for k in otcl.losses.parameters(name) if k not in ("base", "base_params")]
    assert all(k in msg for k in valid), (msg, valid)
    if name == "dmm":  # the wrapper also lists what its base accepts
        assert "temperature" in msg


@pytest.mark.parametrize(
    "z1,z2,match",
    [
        (torch.randn(4, 3), torch.randn(5, 3), r"z1, z2: expected the same shape .* got \(4, 3\)"),
        (torch.randn(4, 3), torch.randn(4, 2), "z1, z2: expected the same shape"),
        (torch.randn(4), torch.randn(4), r"z1: expected a 2-D tensor .* got shape \(4\)"),
        (torch.randn(2, 4, 3), torch.randn(2, 4, 3), "z1: expected a 2-D tensor"),
        (torch.randn(4, 3), torch.randn(4, 3, 1), "z2: expected a 2-D tensor"),
        (torch.randn(1, 3), torch.randn(1, 3), "z1: expected a batch of at least 2 .* got N=1"),
        (torch.full((4, 3), float("nan")), torch.randn(4, 3), "z1: expected finite .* got 12"),
        (torch.randn(4, 3), torch.full((4, 3), float("inf")), "z2: expected finite"),
        (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), "floating"),
        ([[1.0, 2.0]] * 4, torch.randn(4, 2), "z1: expected a torch.Tensor .* got list"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_embeddings_raise_value_error(name, z1, z2, match):
    with pytest.raises(ValueError, match=match):
        build(name)(z1, z2)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"temperature": 0.0}, "temperature: expected a finite number > 0, got 0.0"),
        ({"temperature": -0.5}, "temperature: expected a finite number > 0, got -0.5"),
        ({"temperature": float("nan")}, "temperature: expected"),
        ({"temperature": "hot"}, "temperature: expected a positive number, got 'hot'"),
        ({"iters": 0}, "iters: expected an integer >= 1, got 0"),
        ({"iters": 2.5}, "iters: expected an integer >= 1, got 2.5"),
        ({"layout": "grid"}, "layout: expected one of 'simclr', 'cross', got 'grid'"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_shared_parameters_raise_value_error_for_every_loss(name, params, match):
    if otcl.losses.inapplicable_params(name, params) or set(params) - set(
        otcl.losses.parameters(name)
    ):
        pytest.skip(f"{name} has no such parameter")  # e.g. iters of a closed form
    if name == "dmm":
        params = {"base_params": params}  # forwarded to the base loss
    with pytest.raises(ValueError, match=match):
        build(name, **params)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"iters": 0}, "iters"),
        ({"layout": "grid"}, "layout"),
        ({"q": 0.0}, "q"),
        ({"lam": -1.0}, "lam"),
        ({"rho": -0.5}, "rho"),
        ({"w_kl": 0.0, "w_rince": 0.0}, "w_kl, w_rince: expected at least one weight > 0"),
    ],
)
def test_bad_parameters_raise_value_error(params, match):
    name = "gca-uot"
    with pytest.raises(ValueError, match=match):
        build(name, **params)
