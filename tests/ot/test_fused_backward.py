"""
The solver's fast paths equal their references (fp64 to 1e-10, fp32 to 1e-5):

* the hand-written backward of the unrolled iterations (exp domain: rank-2T kernel gradient; log
  domain: recomputation) vs plain autograd through the loop (``backward="autograd"``);
* ``row_lse`` and the marginal errors from the scaling vectors vs the plan;
* the output object: formed on access, immutable, ``replace`` / ``with_log_plan``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import otcl

PROBLEMS = [(None, None), (0.5, 2.0), (None, 0.3), (None, 0.0), (0.0, None)]


def _run(S, a, b, W, fused, **kw):
    S1, a1, b1 = (t.clone().requires_grad_() for t in (S, a, b))
    init = kw.pop("init", None)
    if init is not None:
        init = tuple(t.clone().requires_grad_() for t in init)
    backward = "fused" if fused else "autograd"
    out = otcl.ot.sinkhorn(S1, a1, b1, init=init, backward=backward, **kw)
    # a loss using the plan and (gauge-dependent) potentials directly
    loss = (out.plan * W).sum() + 0.3 * out.f.sum() + (out.g**2).sum()
    loss.backward()
    grads = [S1.grad, a1.grad, b1.grad]
    if init is not None:
        grads += [t.grad for t in init]
    return out, grads


@pytest.mark.parametrize("rho", PROBLEMS)
@pytest.mark.parametrize("domain", ["exp", "log"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_sinkhorn_equals_autograd(rho, domain, dtype, assert_same):
    g = torch.Generator().manual_seed(0)
    S = 2 * torch.randn(3, 20, 16, generator=g, dtype=dtype)
    S[:, 0, 1] = float("-inf")
    a = torch.rand(20, generator=g, dtype=dtype) + 0.1  # shared (broadcast) row marginal
    b = torch.rand(3, 16, generator=g, dtype=dtype) + 0.1  # batched column marginal
    a, b = a / a.sum(), b / b.sum(-1, keepdim=True)
    W = torch.randn(3, 20, 16, generator=g, dtype=dtype)
    init = (0.1 * torch.randn(3, 20, dtype=dtype), 0.1 * torch.randn(3, 16, dtype=dtype))
    kw = dict(iters=12, rho_a=rho[0], rho_b=rho[1], domain=domain, init=init)
    out_f, gr_f = _run(S, a, b, W, True, **dict(kw))
    out_r, gr_r = _run(S, a, b, W, False, **dict(kw))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    fast = (out_f.f, out_f.g, out_f.log_plan.exp())
    for x, y in zip(fast, (out_r.f, out_r.g, out_r.log_plan.exp()), strict=True):
        assert_same(x, y, tol)
    for x, y in zip(
        (out_f.row_error, out_f.col_error), (out_r.row_error, out_r.col_error), strict=True
    ):  # marginal errors, near zero: absolute tolerance
        assert_same(x, y, tol, floor=0.1)
    assert out_f.n_iters == out_r.n_iters and out_f.domain == out_r.domain == domain
    for x, y in zip(gr_f, gr_r, strict=True):
        assert_same(x, y, tol)


@pytest.mark.parametrize("domain", ["exp", "log"])
def test_fused_early_stop_matches(domain, assert_same):
    torch.manual_seed(1)
    S = torch.randn(30, 30, dtype=torch.float64)
    a = b = torch.full((30,), 1 / 30, dtype=torch.float64)
    W = torch.randn(30, 30, dtype=torch.float64)
    kw = dict(iters=500, tol=1e-9, check_every=5, domain=domain)
    out_f, gr_f = _run(S, a, b, W, True, **dict(kw))
    out_r, gr_r = _run(S, a, b, W, False, **dict(kw))
    assert out_f.converged and out_r.converged
    assert out_f.n_iters == out_r.n_iters < 500
    for x, y in zip(gr_f, gr_r, strict=True):
        assert_same(x, y, 1e-10)


def test_errors_from_scaling_vectors_match_plan():
    """Exp-domain marginal errors are computed from u, v and two matvecs; check vs the plan."""
    torch.manual_seed(2)
    S = torch.randn(2, 12, 9)
    for grad in ("unrolled", "detach", "implicit"):
        out = otcl.ot.sinkhorn(S, iters=3, rho_a=1.0, grad=grad, domain="exp")
        P = out.plan
        torch.testing.assert_close(out.row_error, (P.sum(-1) - 1 / 12).abs().sum(-1))
        torch.testing.assert_close(out.col_error, (P.sum(-2) - 1 / 9).abs().sum(-1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_scores_nan_or_posinf_rejected(bad):
    S = torch.zeros(4, 4)
    S[1, 2] = bad
    with pytest.raises(ValueError, match="scores"):
        otcl.ot.sinkhorn(S, iters=2)


# -- vector-only divergences, lazy plan, fused uniformity penalty ------------------------------
@pytest.mark.parametrize("rho", PROBLEMS)
def test_row_lse_equals_logsumexp_with_gradients(rho, assert_same):
    """row_lse = LSE_j(S_ij + g_j) of the fused exp solve: value and gradients vs autograd."""
    g = torch.Generator().manual_seed(5)
    S = 2 * torch.randn(18, 15, generator=g)
    S[0, 1] = float("-inf")
    W = torch.randn(18, generator=g)
    kw = dict(iters=9, rho_a=rho[0], rho_b=rho[1], domain="exp")
    S1, S2 = S.clone().requires_grad_(), S.clone().requires_grad_()
    out = otcl.ot.sinkhorn(S1, **kw)
    assert out.row_lse is not None
    (out.row_lse * W).sum().add(out.f.sum()).backward()
    ref = otcl.ot.sinkhorn(S2, backward="autograd", **kw)
    assert ref.row_lse is None
    lse = torch.logsumexp(S2 + ref.g.unsqueeze(-2), dim=-1)
    (lse * W).sum().add(ref.f.sum()).backward()
    assert_same(out.row_lse, lse, 1e-5)
    assert_same(S1.grad, S2.grad, 1e-5)


def test_log_plan_formed_on_access_and_output_immutable():
    S = torch.randn(6, 5, requires_grad=True)
    out = otcl.ot.sinkhorn(S, iters=3, domain="exp")
    assert out.stored_log_plan is None  # not formed by the exp solve
    lp = out.log_plan
    ref = out.f.unsqueeze(-1) + S + out.g.unsqueeze(-2)
    torch.testing.assert_close(lp, ref, rtol=0, atol=0)
    assert lp.requires_grad
    with torch.no_grad():  # formed under the grad mode of the access
        assert not out.log_plan.requires_grad
    shared = out.with_log_plan()
    assert shared.stored_log_plan is not None and shared.log_plan is shared.log_plan
    assert shared.with_log_plan() is shared
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.f = out.f + 1  # type: ignore[misc]
    moved = out.replace(f=out.f + 1.0, g=out.g - 1.0)
    torch.testing.assert_close(moved.plan, out.plan)  # the gauge: same plan
    assert moved.f is not out.f and out.stored_log_plan is None
