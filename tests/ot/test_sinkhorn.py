"""The coupling solver against POT and closed forms, and its invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ot  # POT, test reference only
from otcl.ot import Problem, Sinkhorn, pair_scores, positive_index, sinkhorn, solve


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("domain", ["log", "exp"])
def test_balanced_matches_pot_sinkhorn_log(seed, domain, make_problem):
    C, a, b, eps = make_problem(seed=seed)
    ref = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-14)
    S = torch.tensor(-C / eps)
    out = sinkhorn(S, torch.tensor(a), torch.tensor(b), iters=20000, tol=1e-13, domain=domain)
    assert out.converged
    np.testing.assert_allclose(out.plan.numpy(), ref, atol=1e-6, rtol=0)
    assert float(out.row_error) < 1e-8 and float(out.col_error) < 1e-8


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reg_m", [0.05, 1.0, 10.0])
@pytest.mark.parametrize("domain", ["log", "exp"])
def test_unbalanced_matches_pot(seed, reg_m, domain, make_problem):
    C, a, b, eps = make_problem(seed=seed)
    ref = ot.unbalanced.sinkhorn_unbalanced(
        a, b, C, eps, reg_m, reg_type="entropy", numItermax=20000, stopThr=1e-15
    )
    rho = reg_m / eps
    out = sinkhorn(
        torch.tensor(-C / eps),
        torch.tensor(a),
        torch.tensor(b),
        iters=20000,
        tol=1e-13,
        rho_a=rho,
        rho_b=rho,
        domain=domain,
    )
    np.testing.assert_allclose(out.plan.numpy(), ref, atol=1e-6, rtol=0)


def test_semi_relaxed_matches_pot_and_closed_form(make_problem):
    C, a, b, eps = make_problem(seed=3)
    # POT: reg_m = (inf, 0) means a hard row marginal and a free column marginal
    ref = ot.unbalanced.sinkhorn_unbalanced(
        a, b, C, eps, (float("inf"), 0.0), reg_type="entropy", numItermax=5000, stopThr=1e-15
    )
    S = torch.tensor(-C / eps)
    closed = torch.tensor(a)[:, None] * torch.softmax(S, dim=1)
    out = solve(S, torch.tensor(a), torch.tensor(b), problem="rows", iters=50)
    assert out.n_iters == 1 and out.converged
    torch.testing.assert_close(out.plan, closed, atol=1e-12, rtol=0)
    np.testing.assert_allclose(out.plan.numpy(), ref, atol=1e-6, rtol=0)
    cols = solve(S, torch.tensor(a), torch.tensor(b), problem="cols")
    torch.testing.assert_close(cols.plan, torch.softmax(S, dim=0) * torch.tensor(b)[None, :])


def test_semi_relaxed_closed_form_equals_iterative_solver(make_problem):
    # the closed form (free side, tau=0) equals the limit of the iterative solver with rho -> 0
    C, a, b, eps = make_problem(seed=4)
    S = torch.tensor(-C / eps)
    closed = solve(S, torch.tensor(a), torch.tensor(b), problem="rows").plan
    near = sinkhorn(S, torch.tensor(a), torch.tensor(b), rho_b=1e-9, iters=5000, tol=1e-14).plan
    torch.testing.assert_close(near, closed, atol=1e-7, rtol=0)


def test_unbalanced_tends_to_balanced_as_rho_grows(make_problem):
    """The KL-relaxed plan converges to the balanced one at rate O(1/rho)."""
    C, a, b, eps = make_problem(seed=5)
    S = torch.tensor(-C / eps)
    bal = sinkhorn(S, torch.tensor(a), torch.tensor(b), iters=20000, tol=1e-14).plan
    errs = []
    for rho in (1e1, 1e2, 1e3):
        P = sinkhorn(
            S, torch.tensor(a), torch.tensor(b), rho_a=rho, rho_b=rho, iters=100000, tol=1e-13
        ).plan
        errs.append(float((P - bal).abs().max()))
    assert errs[2] < 1e-3
    for big, small in zip(errs, errs[1:], strict=False):
        assert 8.0 < big / small < 12.0  # ten times rho, a tenth of the error


def test_mass_constraint_is_global_softmax():
    S = torch.randn(5, 6, dtype=torch.float64)
    out = solve(S, problem=Problem(mass=2.0))
    torch.testing.assert_close(out.plan, 2.0 * torch.softmax(S.flatten(), 0).view(5, 6))


def test_symmetric_scores_give_symmetric_plan():
    x = torch.randn(10, 4, dtype=torch.float64)
    S = x @ x.T
    P = sinkhorn(S, iters=5000, tol=1e-14).plan
    torch.testing.assert_close(P, P.T, atol=1e-10, rtol=0)
    # also with a masked diagonal (the simclr layout)
    S = S.masked_fill(torch.eye(10, dtype=torch.bool), float("-inf"))
    P = sinkhorn(S, iters=5000, tol=1e-14).plan
    torch.testing.assert_close(P, P.T, atol=1e-10, rtol=0)
    assert float(P.diagonal().abs().max()) == 0.0


def test_single_row_update_is_row_softmax():
    # half an iteration of Sinkhorn from g = 0 is InfoNCE's plan, for any iterative solver
    S = torch.randn(6, 6, dtype=torch.float64)
    out = sinkhorn(S, rho_b=0.0, iters=10)
    torch.testing.assert_close(out.log_plan, torch.log_softmax(S, 1) - math.log(6))


def test_batched_equals_loop_and_exp_equals_log():
    torch.manual_seed(0)
    S = torch.randn(3, 2, 8, 5) * 2
    batched = sinkhorn(S, iters=30, domain="log")
    for i in range(3):
        for j in range(2):
            single = sinkhorn(S[i, j], iters=30, domain="log")
            torch.testing.assert_close(batched.log_plan[i, j], single.log_plan)
    exp = sinkhorn(S, iters=30, domain="exp")
    torch.testing.assert_close(exp.plan, batched.plan, atol=1e-6, rtol=1e-5)
    assert exp.domain == "exp" and batched.domain == "log"


def test_marginals_converge_with_iterations():
    torch.manual_seed(1)
    S = torch.randn(16, 16, dtype=torch.float64) * 3
    errs = [float(sinkhorn(S, iters=t).row_error) for t in (1, 5, 25, 125)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 1e-8


def test_log_domain_is_stable_at_tiny_temperature():
    torch.manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    S = (x @ x.T) / 0.005  # |S| up to 200: exp(S) overflows float32
    out = sinkhorn(S, iters=50)
    assert out.domain == "log"
    assert torch.isfinite(out.log_plan).all()
    assert float(out.row_error) < 1e-4


def test_autocast_inputs_are_solved_in_float32():
    torch.manual_seed(3)
    S = torch.randn(8, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sinkhorn(S, iters=20)
    assert out.log_plan.dtype == torch.float32
    assert torch.isfinite(out.plan).all()


def test_warm_start_from_fixed_point_converges_immediately():
    S = torch.randn(6, 7, dtype=torch.float64)
    out = sinkhorn(S, iters=5000, tol=1e-14)
    again = sinkhorn(S, iters=5000, tol=1e-12, init=(out.f, out.g), check_every=1)
    assert again.n_iters == 1 and again.converged


def test_pair_scores_layouts_and_positives():
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    g = pair_scores(z1, z2, temperature=0.5, layout="simclr")
    assert g.scores.shape == (8, 8) and torch.isinf(g.scores.diagonal()).all()
    assert g.bound == 2.0
    assert positive_index(4, "simclr").tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    c = pair_scores(z1, z2, temperature=0.5, layout="cross")
    assert c.scores.shape == (4, 4) and torch.isfinite(c.scores).all()
    m = pair_scores(z1, z2, temperature=0.5, self_pair="max_cost")
    assert torch.allclose(m.scores.diagonal(), m.scores.min().expand(8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rho_a": None, "rho_b": None},
        {"rho_a": 0.7, "rho_b": 0.3},
        {"rho_a": None, "rho_b": 0.0},
    ],
)
def test_gradcheck_unrolled(kwargs):
    torch.manual_seed(4)
    S = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64)

    def fn(S):
        return (sinkhorn(S, iters=5, domain="log", **kwargs).plan * w).sum()

    assert torch.autograd.gradcheck(fn, (S,))


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"iters": 0}, "iters"),
        ({"grad": "magic"}, "grad"),
        ({"domain": "fourier"}, "domain"),
        ({"a": torch.ones(3)}, "a: expected a marginal of length 4"),
        ({"b": -torch.ones(5)}, "b: expected non-negative"),
        ({"rho_a": -1.0}, "rho_a"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_solver_input_raises_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn(torch.randn(4, 5), **bad)


def test_bad_scores_raise_value_error():
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(torch.randn(5))
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="constraint"):
        solve(torch.randn(3, 3), problem="sideways")
    with pytest.raises(ValueError, match="rho"):
        solve(torch.randn(3, 3), problem="unbalanced")


# -- POT agreement over a sweep of random problems (float64) ---------------------------------
# Measured max |P - P_POT| over 20 seeds x 3 sizes x 3 eps: balanced 5e-16, unbalanced 8e-16,
# semi-relaxed 1e-16 (log and exp domains); the tolerance leaves room for other BLAS builds.
SWEEP = [(s, n, m, eps) for s in range(4) for (n, m) in ((7, 9), (16, 12)) for eps in (0.1, 1.0)]


@pytest.mark.parametrize("domain", ["log", "exp"])
def test_pot_agreement_sweep(domain, make_problem):
    errs = {"balanced": 0.0, "unbalanced": 0.0, "rows": 0.0, "cols": 0.0}
    for seed, n, m, eps in SWEEP:
        C, a, b, _ = make_problem(seed=seed, n=n, m=m, eps=eps)
        S, at, bt = torch.tensor(-C / eps), torch.tensor(a), torch.tensor(b)
        ref = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", numItermax=50000, stopThr=1e-15)
        out = sinkhorn(S, at, bt, iters=50000, tol=1e-14, domain=domain)
        errs["balanced"] = max(errs["balanced"], float(np.abs(out.plan.numpy() - ref).max()))
        # unbalanced with different strengths per side: POT's reg_m = (reg_a, reg_b)
        for reg_a, reg_b in ((0.05, 0.05), (1.0, 10.0), (10.0, 0.3)):
            ref = ot.unbalanced.sinkhorn_unbalanced(
                a, b, C, eps, (reg_a, reg_b), reg_type="entropy", numItermax=50000, stopThr=1e-15
            )
            out = sinkhorn(
                S, at, bt, iters=50000, tol=1e-14, rho_a=reg_a / eps, rho_b=reg_b / eps,
                domain=domain,
            )  # fmt: skip
            err = float(np.abs(out.plan.numpy() - ref).max())
            errs["unbalanced"] = max(errs["unbalanced"], err)
        for side, reg_m in (("rows", (float("inf"), 0.0)), ("cols", (0.0, float("inf")))):
            ref = ot.unbalanced.sinkhorn_unbalanced(
                a, b, C, eps, reg_m, reg_type="entropy", numItermax=50000, stopThr=1e-15
            )
            out = solve(S, at, bt, problem=side, domain=domain)
            errs[side] = max(errs[side], float(np.abs(out.plan.numpy() - ref).max()))
    assert max(errs.values()) < 1e-12, errs


# -- grad="detach": the envelope gradient, exact for the OT value -----------------------------
@pytest.mark.parametrize(
    "rho", [(None, None), (0.7, 0.3), (None, 2.0), (None, 0.0)], ids=["bal", "unb", "one", "semi"]
)
@pytest.mark.parametrize("domain", ["log", "exp"])
def test_detach_gradient_is_exact_for_the_dual_value(rho, domain, make_problem):
    """With the potentials held constant, the gradient of the dual objective
    D(S) = sum P + sum_sides (hard: -<a, f>; relaxed: rho <a, e^{-f/rho} - 1>) is P, and by the
    envelope theorem P is also the true derivative of the optimal value: gradcheck applies."""
    C, a, b, _ = make_problem(seed=6, n=5, m=4)
    a_t, b_t = torch.tensor(a), torch.tensor(b)
    S = torch.tensor(-C / 0.4).requires_grad_(True)

    def side(marg, pot, r):
        if r is None:
            return -(marg * pot).sum()
        if r == 0:
            return pot.new_zeros(())
        return r * (marg * (torch.exp(-pot / r) - 1)).sum()

    def value(S_):
        out = sinkhorn(
            S_, a_t, b_t, iters=20000, tol=1e-15, rho_a=rho[0], rho_b=rho[1], grad="detach",
            domain=domain,
        )  # fmt: skip
        assert out.domain == domain
        return out.plan.sum() + side(a_t, out.f, rho[0]) + side(b_t, out.g, rho[1])

    (grad,) = torch.autograd.grad(value(S), S)
    plan = sinkhorn(S.detach(), a_t, b_t, iters=20000, tol=1e-15, rho_a=rho[0], rho_b=rho[1]).plan
    torch.testing.assert_close(grad, plan, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(value, (S,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_mass_constraint_checks_its_input():
    S = torch.randn(4, 5)
    with pytest.raises(ValueError, match="scores: expected finite"):
        solve(S.masked_fill(torch.eye(4, 5, dtype=torch.bool), float("nan")), problem="mass")
    with pytest.raises(ValueError, match="a: the 'mass' problem fixes only the total mass"):
        solve(S, torch.full((4,), 0.25), problem="mass")
    with pytest.raises(ValueError, match="iters"):
        solve(S, problem="mass", iters=0)
    with pytest.raises(ValueError, match="scores: expected a tensor"):
        solve(torch.randn(5), problem="mass")


# -- converged: what it measures, and unequal masses -------------------------------------------
def test_converged_reflects_the_final_marginal_error_of_a_balanced_solve():
    S = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sinkhorn(S, iters=200)  # no tol: the errors still tell
    assert out.tol_met is None  # no stopping test ran
    assert float(torch.maximum(out.row_error, out.col_error)) < 1e-12 and out.converged is True
    short = sinkhorn(S * 20, iters=1)
    assert float(short.row_error) > 1e-5 and short.converged is False
    assert Sinkhorn(iters=1, marginal_tol=10.0)(S * 20, Problem()).converged is True
    # tol met early, but the marginals are not within marginal_tol: not converged
    early = Sinkhorn(iters=200, tol=10.0, check_every=1)(S * 20, Problem())
    assert early.tol_met is True and early.n_iters < 5 and early.converged is False


def test_converged_of_closed_forms_and_unbalanced_solves():
    S = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    assert sinkhorn(S, rho_b=0.0).converged is True  # rows only: one update is exact
    assert Sinkhorn()(S, Problem(mass=1.0)).converged is True
    unbalanced = sinkhorn(S, rho_a=1.0, rho_b=1.0, iters=50)
    assert unbalanced.converged is None  # its marginals differ from a, b by design
    with_tol = sinkhorn(S, rho_a=1.0, rho_b=1.0, iters=500, tol=1e-6, check_every=1)
    assert with_tol.converged is True and with_tol.n_iters < 500
    batched = sinkhorn(torch.stack([S, 40 * S]), iters=3)  # one of the two is far from it
    assert batched.converged is False


def test_balanced_marginals_of_unequal_mass_are_an_error():
    S = torch.randn(3, 4)
    a, b = torch.full((3,), 5.0 / 3), torch.full((4,), 0.25)  # masses 5 and 1
    with pytest.raises(
        ValueError,
        match=r"^a, b: expected marginals of equal total mass .* "
        r"got sum\(a\)=5 and sum\(b\)=1; normalise them, or relax a side",
    ):
        sinkhorn(S, a, b)
    with pytest.raises(ValueError, match=r"sum\(a\)=5 and sum\(b\)=1"):
        sinkhorn(S, a)  # b uniform: mass 1
    with pytest.raises(ValueError, match="equal total mass"):  # one batch entry is off
        sinkhorn(torch.randn(2, 3, 4), torch.stack([torch.full((3,), 1 / 3), a]))
    # fine: equal masses, a relaxed side, a free side, or the checks switched off
    sinkhorn(S, a, torch.full((4,), 1.25))
    sinkhorn(S, a, b, rho_a=1.0, rho_b=1.0)
    sinkhorn(S, a, b, rho_b=0.0)
    Sinkhorn(check_values=False)(S, Problem(a, b))
