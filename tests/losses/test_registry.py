"""The registry and the parameters: names, defaults, and one clear ValueError per mistake."""

from __future__ import annotations

import pytest
import torch

import otcl
from otcl.losses import build
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


# -- strict parameters: a parameter that does not apply is an error, and the rule is true ------
#: a value different from every loss's default, for each parameter that applies only sometimes
OTHER = {
    "rho": 0.5,
    "iters": 3,
    "tol": 1e-3,
    "grad": "detach",
    "domain": "log",
    "backward": "autograd",
    "q": 0.3,
    "lam": 0.5,
    "marginals": "unit",
    "symmetric": False,
    "self_pair": "max_cost",
    "divergence": "rince",
    "constraint": "rows",
    "kappa": 3.0,
    "detach_mean": True,
    "repel_weight": 5.0,
}
SETTINGS = [{}, {"layout": "cross"}]


def _inapplicable_cases():
    """(loss, extra settings, parameter): every parameter that does not apply to a loss as
    built with its defaults (or in the cross layout), for every registered loss."""
    cases = []
    for name in ALL:
        for extra in SETTINGS:
            for key in otcl.losses.parameters(name):
                if key in OTHER and key not in extra:
                    params = {**extra, key: OTHER[key]}
                    if key in otcl.losses.inapplicable_params(name, params):
                        cases.append((name, extra, key))
    return cases


INAPPLICABLE = _inapplicable_cases()


def test_every_loss_has_strict_parameters():
    """The sweep covers every loss, and the examples of the issue are among the cases."""
    names = {n for n, _, _ in INAPPLICABLE}
    assert names == set(ALL)
    for name, key in [("gca-ince", "rho"), ("infonce", "q"), ("infonce", "iters")]:
        assert any(n == name and k == key for n, _, k in INAPPLICABLE), (name, key)
    assert len(INAPPLICABLE) > 50


@pytest.mark.parametrize("name,extra,key", INAPPLICABLE, ids=lambda x: str(x))
def test_parameter_that_does_not_apply_is_an_error(name, extra, key):
    """build(name, key=...) raises a ValueError that names the parameter and says why."""
    with pytest.raises(ValueError, match=rf"^{key}: ") as err:
        build(name, **extra, **{key: OTHER[key]})
    why = str(err.value)
    assert "applies only" in why or "weights" in why, why
    # constructing the class directly is just as strict
    cls = otcl.losses.get(name)
    with pytest.raises(ValueError, match=rf"^{key}: "):
        cls(**extra, **{key: OTHER[key]})


@pytest.mark.parametrize("name,extra,key", INAPPLICABLE, ids=lambda x: str(x))
def test_inapplicable_parameter_really_changes_nothing(name, extra, key, make_pairs):
    """The rule is true: forcing the attribute on a built loss leaves the value unchanged (so
    refusing the parameter loses nothing). ``rho`` and ``constraint`` are structural (the
    problem has no place for them) and are not forced."""
    if key in ("rho", "constraint"):
        pytest.skip("structural: no attribute to force")
    z1, z2 = make_pairs(n=6, d=4, seed=31)
    base = build(name, **extra)
    if name == "dmm":
        base.set_epoch(30.0)  # the DMM term on
    forced = build(name, **extra)
    forced.load_state_dict(base.state_dict())
    setattr(forced, key, OTHER[key])
    if name == "dmm" and key not in otcl.losses.DMM.defaults:
        setattr(forced.base, key, OTHER[key])
    torch.manual_seed(0)
    a = base(z1, z2)
    torch.manual_seed(0)
    b = forced(z1, z2)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("gca-ince", {"rho": 5.0}, "rho: applies only to constraint='unbalanced'; gca-ince"),
        ("infonce", {"q": 0.3}, "q: applies only to the RINCE divergence; infonce"),
        ("infonce", {"iters": 99}, "iters: applies only to the iterative constraints"),
        ("gca-uot", {"w_rince": 0.0, "q": 0.3}, "q: applies only to the RINCE term"),
        ("iot", {"relax": "row", "iters": 5}, "iters: applies only"),
        ("iot", {"constraint": "rows", "relax": "row"}, "constraint, relax: iot takes one of"),
        ("ot", {"constraint": "balanced", "grad": "implicit", "backward": "autograd"}, "backward"),
        ("dmm", {"base": "gca-ince", "rho": 1.0}, "rho: applies only.*gca-ince"),
        ("dmm", {"iters": 5}, "iters: applies only.*infonce"),
    ],
)
def test_strict_parameter_examples(name, params, match):
    with pytest.raises(ValueError, match=match):
        build(name, **params)


def test_given_where_it_applies_is_accepted_and_listed():
    assert build("gca-uot", rho=5.0).rho == 5.0
    assert build("ot", constraint="unbalanced", rho=0.5).problem(4, 4).constraint == "unbalanced"
    assert build("infonce", layout="cross", symmetric=False).symmetric is False
    assert build("ot-hard", cost="exp", kappa=2.0).kappa == 2.0
    assert otcl.losses.inapplicable_params("gca-ince", {"rho": 1.0, "iters": 5}) == {
        "rho": "applies only to constraint='unbalanced'; gca-ince has constraint='balanced'"
    }
    cond = otcl.losses.conditions("gca-uot")
    assert cond["q"] == "w_rince > 0" and "rho" in cond
    dmm = otcl.losses.parameters("dmm")
    assert dmm["margin"] == 0.2 and dmm["temperature"] == 0.5  # own, then the base's
