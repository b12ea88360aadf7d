"""The streaming geometry and solver equal the dense ones (otcl.ot.streaming*).

Tiles stack to the dense scores; the online column log-sum-exp equals ``torch.logsumexp``; a
streamed solve gives the dense potentials, row log-sum-exps, marginal errors and iteration
counts, and the gradient of any function of them equals the dense gradient (unrolled, implicit,
detach; exp and log domains; balanced, unbalanced, rows, cols, mass; both layouts, extra
negatives; tile sizes 1, 7, 64 and n, float64 to 1e-10).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from otcl.ot import Problem, Sinkhorn, pair_scores
from otcl.ot.streaming import OnlineColumnLSE, streaming_pair_scores
from otcl.ot.streaming_sinkhorn import row_reduce, streaming_solve

N, D = 13, 5


def _pairs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, D, generator=g, dtype=dtype)
    return (
        z1,
        z1 + torch.randn(N, D, generator=g, dtype=dtype),
        torch.randn(3, D, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("tile", [1, 7, 64])
def test_tiles_stack_to_the_dense_scores(layout, similarity, tile):
    z1, z2, neg = _pairs()
    kw = dict(
        temperature=0.3, layout=layout, similarity_kind=similarity, clip_min=-0.2, negatives=neg
    )
    dense = pair_scores(z1, z2, **kw)
    geo = streaming_pair_scores(z1, z2, tile_size=tile, **kw)
    torch.testing.assert_close(geo.dense_scores(), dense.scores, rtol=1e-12, atol=1e-12)
    assert geo.shape == tuple(dense.scores.shape) and geo.n_rows == dense.n_rows
    torch.testing.assert_close(geo.pos, dense.pos, rtol=0, atol=0)
    assert geo.bound == dense.bound


def test_online_column_lse():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(23, 9, generator=g, dtype=torch.float64) * 30
    z[:, 2] = float("-inf")  # an empty column
    z[:5, 4] = float("-inf")
    acc = OnlineColumnLSE(9, z)
    for r0 in range(0, 23, 4):
        acc.add(z[r0 : r0 + 4].clone())
    torch.testing.assert_close(acc.result(), torch.logsumexp(z, 0), rtol=1e-14, atol=1e-14)


PROBLEMS = {
    "balanced": Problem(),
    "unbalanced": Problem(rho_a=0.7, rho_b=1.3),
    "rows": Problem.from_name("rows"),
    "cols": Problem.from_name("cols"),
}
CASES = list(
    itertools.product(
        ["simclr", "cross"], ["exp", "log"], ["unrolled", "implicit", "detach"], list(PROBLEMS)
    )
)


@pytest.mark.parametrize("layout,domain,grad,problem", CASES)
def test_solve_equals_dense(layout, domain, grad, problem):
    """Values and the gradient of a function of (f, g, row_lse); tile sizes rotate."""
    z1, z2, neg = _pairs()
    iters = 150 if grad == "implicit" else 7
    tile = [1, 7, 64, 2 * N + 3][CASES.index((layout, domain, grad, problem)) % 4]
    prob = PROBLEMS[problem]
    w = torch.randn(2 * N + 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def objective(f, g, lse):
        n = lse.shape[0]
        out = (lse * w[:n]).sum() + torch.logsumexp(f + lse, 0)  # gauge-free parts
        if prob.constraint != "balanced":
            out = out + (f * w[:n].flip(0)).sum() + (g.sin()).sum()
        return out

    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    geo = pair_scores(a, b, temperature=0.5, layout=layout, negatives=neg)
    out = Sinkhorn(iters=iters, grad=grad, domain=domain)(geo, prob)
    lse = torch.logsumexp(out.scores + out.g, -1)
    ref = objective(out.f, out.g, lse)
    ref_grads = torch.autograd.grad(ref, (a, b))

    a2, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    sgeo = streaming_pair_scores(
        a2, b2, temperature=0.5, layout=layout, negatives=neg, tile_size=tile
    )
    sout = streaming_solve(sgeo, prob, iters=iters, grad=grad, domain=domain)
    for got, want in ((sout.f, out.f), (sout.g, out.g), (sout.row_lse, lse)):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-10)
    assert (sout.n_iters, sout.converged) == (out.n_iters, out.converged)
    torch.testing.assert_close(sout.row_error, out.row_error, rtol=1e-8, atol=1e-12)
    if sout.col_error is not None:
        torch.testing.assert_close(sout.col_error, out.col_error, rtol=1e-8, atol=1e-12)
    got = objective(sout.f, sout.g, sout.row_lse)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    for g_, r_ in zip(torch.autograd.grad(got, (a2, b2)), ref_grads, strict=True):
        torch.testing.assert_close(g_, r_, rtol=1e-10, atol=1e-10)


def test_tolerance_stops_like_the_dense_solver():
    z1, z2, _ = _pairs()
    geo = pair_scores(z1, z2, temperature=0.5)
    sgeo = streaming_pair_scores(z1, z2, temperature=0.5, tile_size=5)
    for domain in ("exp", "log"):
        out = Sinkhorn(iters=500, tol=1e-9, domain=domain)(geo, Problem())
        sout = streaming_solve(sgeo, Problem(), iters=500, tol=1e-9, domain=domain)
        assert sout.converged and (sout.n_iters, sout.domain) == (out.n_iters, domain)
        assert float(sout.row_error) < 1e-8 and float(sout.col_error) < 1e-8


def test_mass_problem_and_plan_blocks():
    z1, z2, _ = _pairs()
    geo = pair_scores(z1, z2, temperature=0.5)
    sgeo = streaming_pair_scores(z1, z2, temperature=0.5, tile_size=4)
    for prob in (Problem(mass=3.0), Problem(rho_a=0.5, rho_b=0.5)):
        out = Sinkhorn(iters=20)(geo, prob)
        sout = streaming_solve(sgeo, prob, iters=20)
        plan = torch.cat([block for _, _, block in sout.plan_blocks()])
        torch.testing.assert_close(plan, out.plan, rtol=1e-10, atol=1e-14)


def test_row_reduce_equals_dense_and_is_differentiable():
    z1, z2, neg = _pairs()
    a = z1.clone().requires_grad_()
    geo = pair_scores(a, z2, temperature=0.5, negatives=neg)
    g = torch.randn(geo.scores.shape[1], dtype=torch.float64, requires_grad=True)
    w = torch.rand(
        geo.scores.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    w[geo.scores.isinf()] = 0
    dense = (
        torch.logsumexp(geo.scores + g, -1).sum()
        + (w * (geo.scores + g)).nan_to_num(neginf=0).sum()
    )
    ref = torch.autograd.grad(dense, (a, g))
    a2 = z1.clone().requires_grad_()
    sgeo = streaming_pair_scores(a2, z2, temperature=0.5, negatives=neg, tile_size=6)
    got = (
        row_reduce(sgeo, g).sum()
        + row_reduce(sgeo, g, weight=lambda r0, r1: w[r0:r1], kind="sum").sum()
    )
    torch.testing.assert_close(got, dense, rtol=1e-12, atol=1e-12)
    for x, y in zip(torch.autograd.grad(got, (a2, g)), ref, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_bad_input_names_the_argument():
    z1, z2, _ = _pairs()
    with pytest.raises(ValueError, match="^tile_size:"):
        streaming_pair_scores(z1, z2, temperature=0.5, tile_size=0)
    sgeo = streaming_pair_scores(z1, z2, temperature=0.5, tile_size=4)
    with pytest.raises(ValueError, match="^weight:"):
        row_reduce(sgeo, kind="sum")
    with pytest.raises(ValueError, match="^grad:"):
        streaming_solve(sgeo, grad="fast")
    with pytest.raises(ValueError, match="^problem:"):
        streaming_solve(sgeo, "balanced")
