"""Problem: the marginals and relaxations, immutable, with the named constraint sets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from otcl.ot import CONSTRAINTS, Problem, Sinkhorn, sinkhorn


@pytest.mark.parametrize(
    "name,rho,expected",
    [
        ("balanced", None, (None, None)),
        ("rows", None, (None, 0.0)),
        ("cols", None, (0.0, None)),
        ("unbalanced", 0.5, (0.5, 0.5)),
        ("unbalanced", (0.5, 2.0), (0.5, 2.0)),
    ],
)
def test_named_sets_and_their_name_round_trip(name, rho, expected):
    p = Problem.from_name(name, rho)
    assert (p.rho_a, p.rho_b) == expected and p.constraint == name
    assert p.closed_form == (name in ("rows", "cols"))


def test_mass_problem_and_its_exclusions():
    p = Problem.from_name("mass", mass=3.0)
    assert p.constraint == "mass" and p.closed_form and set(CONSTRAINTS) >= {"mass"}
    with pytest.raises(ValueError, match="a: the 'mass' problem fixes only the total mass"):
        Problem(a=torch.ones(3), mass=1.0)
    with pytest.raises(ValueError, match="rho_a: the 'mass' problem"):
        Problem(rho_a=1.0, mass=1.0)
    with pytest.raises(ValueError, match="mass: expected a finite number > 0"):
        Problem(mass=0.0)


def test_problem_is_immutable_and_replace_derives():
    p = Problem(rho_a=1.0, rho_b=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.rho_a = 2.0  # type: ignore[misc]
    q = p.replace(rho_b=None)
    assert (p.rho_a, p.rho_b) == (1.0, 1.0) and (q.rho_a, q.rho_b) == (1.0, None)
    assert p.tau_a == pytest.approx(0.5) and q.tau_b == 1.0


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"rho_a": -1.0}, "rho_a: expected a number >= 0"),
        ({"rho_b": "x"}, "rho_b: expected a number >= 0"),
    ],
)
def test_bad_problem_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        Problem(**kw)


def test_from_name_rejects_rho_where_it_does_not_apply():
    with pytest.raises(ValueError, match="rho: applies only to the 'unbalanced' constraint"):
        Problem.from_name("balanced", 1.0)
    with pytest.raises(ValueError, match="rho: the 'unbalanced' constraint needs rho > 0"):
        Problem.from_name("unbalanced")
    with pytest.raises(ValueError, match="constraint: expected one of"):
        Problem.from_name("nope")


def test_solver_takes_the_problem_and_one_call_form_agrees():
    """Sinkhorn(**opts)(S, Problem(a, b, rho_a, rho_b)) == sinkhorn(S, a, b, rho_a=, rho_b=)."""
    g = torch.Generator().manual_seed(0)
    S = torch.randn(5, 7, generator=g, dtype=torch.float64)
    a = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    for rho in [(None, None), (0.3, 2.0), (None, 0.0)]:
        one = sinkhorn(S, a, b, iters=50, rho_a=rho[0], rho_b=rho[1])
        obj = Sinkhorn(iters=50)(S, Problem(a, b, *rho))
        torch.testing.assert_close(one.plan, obj.plan, rtol=0, atol=0)
    with pytest.raises(ValueError, match="problem: expected an otcl.ot.Problem"):
        Sinkhorn()(S, "balanced")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a: expected a marginal of length 5"):
        Sinkhorn()(S, Problem(a=torch.ones(4)))


def test_solver_options_are_checked_and_immutable():
    with pytest.raises(ValueError, match="backward: expected one of 'fused', 'autograd'"):
        Sinkhorn(backward="manual")
    with pytest.raises(ValueError, match="iters: expected an integer >= 1"):
        Sinkhorn(iters=0)
    s = Sinkhorn(iters=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.iters = 6  # type: ignore[misc]
    assert s.replace(grad="implicit").grad == "implicit" and s.grad == "unrolled"
