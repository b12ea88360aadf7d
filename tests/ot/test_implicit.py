"""Implicit differentiation of Sinkhorn (``grad="implicit"``): against unrolled gradients at
convergence, finite differences (gradcheck), a dense solve of the adjoint system, and memory
that does not grow with the number of iterations."""

from __future__ import annotations

import pytest
import torch

import otcl
from otcl.ot.implicit import implicit_potentials, solve_adjoint

F64 = torch.float64
# (rho_a, rho_b): balanced, unbalanced, one side relaxed, semi-relaxed rows / columns
PROBLEMS = [(None, None), (0.7, 0.3), (None, 1.5), (None, 0.0), (0.0, None)]


def _grads(S, a, b, W, rho, grad, domain, iters=3000):
    S1, a1, b1 = (t.clone().requires_grad_() for t in (S, a, b))
    out = otcl.ot.sinkhorn(
        S1, a1, b1, iters=iters, rho_a=rho[0], rho_b=rho[1], grad=grad, domain=domain
    )
    (out.plan * W).sum().backward()
    return S1.grad, a1.grad, b1.grad


@pytest.mark.parametrize("rho", PROBLEMS)
@pytest.mark.parametrize("domain", ["log", "exp"])
def test_implicit_matches_unrolled_at_convergence(rho, domain, make_scores):
    S, a, b, W = make_scores()
    ref = _grads(S, a, b, W, rho, "unrolled", domain)
    imp = _grads(S, a, b, W, rho, "implicit", domain)
    for r, i in zip(ref, imp, strict=True):
        if r is None or i is None:  # a free marginal never enters the solution
            assert all(t is None or t.abs().max() == 0 for t in (r, i))
            continue
        torch.testing.assert_close(i, r, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("rho", [(None, None), (0.7, 0.3), (None, 1.5)])
def test_implicit_plan_gradcheck(rho, make_scores):
    S, a, b, _ = make_scores(seed=1, batch=(), n=5, m=4)
    inputs = (S.requires_grad_(), a.requires_grad_(), b.requires_grad_())

    def plan(S_, a_, b_):  # (balanced: perturbing a alone breaks the mass balance, the
        # potentials then drift and never meet tol, the plan converges: cap the iterations)
        out = otcl.ot.sinkhorn(
            S_,
            a_,
            b_,
            iters=1500,
            tol=1e-15,
            rho_a=rho[0],
            rho_b=rho[1],
            grad="implicit",
            domain="log",
        )
        return out.plan

    assert torch.autograd.gradcheck(plan, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_implicit_gauge_convention_balanced(make_scores):
    """Balanced potentials are defined up to (f + k, g - k); implicit gradients of gauge-dependent
    quantities are those of the gauge with sum(f) = sum(g)."""
    S, _, _, _ = make_scores(seed=2, batch=())
    wf = torch.randn(S.shape[0], dtype=F64)
    wg = torch.randn(S.shape[1], dtype=F64)

    def gauge_fixed(S_, implicit: bool):
        out = otcl.ot.sinkhorn(
            S_, iters=5000, tol=1e-15, grad="implicit" if implicit else "detach", domain="log"
        )
        f, g = out.f, out.g
        k = (g.sum() - f.sum()) / (f.numel() + g.numel())
        if implicit:  # the implicit derivative already satisfies the convention
            k = k.detach()
        return ((f + k) * wf).sum() + ((g - k) * wg).sum()

    S1 = S.clone().requires_grad_()
    (grad,) = torch.autograd.grad(gauge_fixed(S1, True), S1)
    # central finite differences of the gauge-fixed forward
    eps = 1e-6
    num = torch.zeros_like(S)
    finite = torch.isfinite(S)
    for idx in finite.nonzero():
        i, j = idx.tolist()
        Sp, Sm = S.clone(), S.clone()
        Sp[i, j] += eps
        Sm[i, j] -= eps
        num[i, j] = (gauge_fixed(Sp, False) - gauge_fixed(Sm, False)) / (2 * eps)
    torch.testing.assert_close(grad, num, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("rho", [(None, None), (0.7, 0.3), (None, 1.5)])
def test_adjoint_solver_matches_dense_solve(rho, make_scores):
    """CG on the symmetric system == a dense least-squares solve of the original adjoint system
    (I - J^T) w = (f_bar, g_bar), mapped through S_bar = B^T w."""
    torch.manual_seed(3)
    n, m = 6, 5
    S = torch.randn(n, m, dtype=F64)
    out = otcl.ot.sinkhorn(S, iters=5000, tol=1e-15, rho_a=rho[0], rho_b=rho[1], grad="detach")
    P = out.plan
    ta, tb = otcl.ot.problem.exponent(rho[0]), otcl.ot.problem.exponent(rho[1])
    fb, gb = torch.randn(n, dtype=F64), torch.randn(m, dtype=F64)
    if ta == tb == 1.0:  # a gauge-invariant upstream gradient
        gb = gb - (gb.sum() - fb.sum()) / m
    xf, xg, steps = solve_adjoint(P, fb, gb, ta, tb, tol=1e-13)
    assert steps <= 2 * (n + m)
    grad_S = -P * (ta * xf[:, None] + tb * xg[None, :])

    R = P / P.sum(1, keepdim=True)  # d f / d g = -ta R
    C = P / P.sum(0, keepdim=True)  # d g / d f = -tb C^T
    J = torch.zeros(n + m, n + m, dtype=F64)
    J[:n, n:] = -ta * R
    J[n:, :n] = -tb * C.T
    w = torch.linalg.lstsq(torch.eye(n + m, dtype=F64) - J.T, torch.cat([fb, gb])).solution
    dense = -ta * R * w[:n, None] - tb * C * w[None, n:]
    torch.testing.assert_close(grad_S, dense, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("name", ["gca-ince", "gca-uot", "iot", "iot-uni"])
def test_losses_implicit_match_unrolled_and_gradcheck(name):
    torch.manual_seed(4)
    z1, z2 = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    grads = []
    for grad in ("unrolled", "implicit"):
        fn = otcl.losses.build(name, iters=2000, grad=grad)
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        fn(a, b).backward()
        grads.append(torch.cat([a.grad, b.grad]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-10, rtol=1e-8)

    fn = otcl.losses.build(name, iters=3000, tol=1e-15, grad="implicit")
    inputs = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in otcl.losses.available()
        if issubclass(otcl.losses.get(n), otcl.losses.OTContrastiveLoss)
        and "grad" not in otcl.losses.inapplicable_params(n, {"grad": "implicit"})
    ],
)
@pytest.mark.parametrize("layout", ["simclr", "cross"])
def test_every_loss_accepts_implicit(name, layout):
    torch.manual_seed(5)
    z1 = torch.randn(8, 4, requires_grad=True)
    z2 = torch.randn(8, 4, requires_grad=True)
    loss = otcl.losses.build(name, grad="implicit", layout=layout)(z1, z2)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_semi_relaxed_implicit_is_closed_form(make_scores):
    S, a, _, W = make_scores(seed=6, batch=())
    S1 = S.clone().requires_grad_()
    f, g = implicit_potentials(
        S1,
        a.log(),
        torch.zeros(S.shape[1], dtype=F64),
        1.0,
        0.0,
        torch.zeros(S.shape[0], dtype=F64),
        torch.zeros(S.shape[1], dtype=F64),
    )
    (torch.exp(f[:, None] + S1 + g) * W).sum().backward()
    S2 = S.clone().requires_grad_()
    ((a[:, None] * torch.softmax(S2, dim=-1)) * W).sum().backward()
    torch.testing.assert_close(S1.grad, S2.grad)


def _saved_bytes(fn) -> int:
    """Bytes of distinct tensors saved for backward while running ``fn`` (plus the scaling
    vectors the fused unrolled solver keeps on its context)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    node = out.f.grad_fn
    extra = 0
    for vecs in getattr(node, "vecs", ()):  # the fused solvers' per-iteration vectors
        extra += sum(v.numel() * v.element_size() for v in vecs if v is not None)
    return sum(seen.values()) + extra


@pytest.mark.parametrize(
    ("grad", "rho"), [("implicit", None), ("implicit", 0.5), ("unrolled", None)]
)
def test_memory_independent_of_iterations(grad, rho):
    """implicit: saved state is the same for 5 and 40 iterations; unrolled (fused backwards):
    grows only by O(iters * n) vectors, far below one n x m matrix; plain autograd in the log
    domain grows by n x m matrices (one softmax per half-iteration)."""
    n = 128
    S = torch.randn(n, n).requires_grad_()

    def run(iters, domain="exp", backward="fused"):
        return otcl.ot.sinkhorn(
            S, iters=iters, rho_a=rho, rho_b=rho, grad=grad, domain=domain, backward=backward
        )

    small, large = _saved_bytes(lambda: run(5)), _saved_bytes(lambda: run(40))
    matrix = n * n * 4
    vectors = 35 * 4 * n * 4  # u, v, K v, K^T u for 35 more iterations
    if grad == "implicit":
        assert large == small
    else:
        assert large - small <= vectors
    if grad == "unrolled":  # log domain: recomputing backward vs autograd's per-step softmax
        small, large = _saved_bytes(lambda: run(5, "log")), _saved_bytes(lambda: run(40, "log"))
        assert large - small <= vectors
        ref_small = _saved_bytes(lambda: run(5, "log", "autograd"))
        ref_large = _saved_bytes(lambda: run(40, "log", "autograd"))
        assert ref_large - ref_small >= 35 * matrix
