"""The fixed-point iterations of :mod:`otcl.ot.sinkhorn`, in the log and the exp domain.

:func:`_log_iterate` and :func:`_exp_iterate` run the row and column updates of the module
docstring of :mod:`otcl.ot.sinkhorn` from given potentials and report the iterations run and
whether the stopping test was met; with a ``trace`` they also keep every iterate for the
hand-written backwards of :mod:`otcl.ot.sinkhorn_backward`. The small helpers (marginals,
domain choice, sums over the rows of every rank) are shared with the streaming solver.
"""

from __future__ import annotations

import math

import torch

from .distributed import Shard

# exp-domain scaling is used only when |S| <= this bound (fp32: e^30 ~ 1e13, far from overflow)
EXP_SAFE_BOUND = 30.0


def _log_marginal(m: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if m is None:
        return torch.full((n,), -math.log(n), dtype=like.dtype, device=like.device)
    return m.log()


def _choose_domain(
    domain: str, scores: torch.Tensor, bound: float | None, shard: Shard | None = None
) -> str:
    if domain != "auto":
        return domain
    if bound is None:
        finite = scores.detach()
        finite = finite[torch.isfinite(finite)]
        top = finite.abs().max() if finite.numel() else finite.new_zeros(())
        bound = float(top if shard is None else shard.max(top))
    return "exp" if bound <= EXP_SAFE_BOUND else "log"


def _col_lse(x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """LSE over the rows (dim -2) of every rank."""
    return torch.logsumexp(x, dim=-2) if shard is None else shard.logsumexp_rows(x)


def _col_sum(x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """Column sums (already over the local rows) completed over every rank."""
    return x if shard is None else shard.sum(x)


def _moved(f, f_prev, g, g_prev, shard: Shard | None) -> float:
    """sup-norm move of the potentials (one host sync; one all-reduce when sharded)."""
    df = (f - f_prev).abs().amax(dim=-1).max().detach()
    if shard is not None:
        df = shard.max(df)
    return float(torch.maximum(df, (g - g_prev).abs().amax(dim=-1).max().detach()))


def _log_iterate(S, log_a, log_b, ta, tb, f, g, iters, tol, check_every, trace=None, shard=None):
    # ``trace`` (a dict, no-grad use only) receives every potential and log-sum-exp for the
    # recomputing backward of :class:`_FusedLogSinkhorn`.
    if trace is not None:
        trace.update(f=[f], g=[g], lr=[], lc=[])
    n_done = 0
    converged = False
    lr = lc = None
    for it in range(iters):
        f_prev, g_prev = f, g
        if ta > 0:
            lr = torch.logsumexp(S + g.unsqueeze(-2), dim=-1)
            f = ta * (log_a - lr)
        if tb > 0:
            lc = _col_lse(S + f.unsqueeze(-1), shard)
            g = tb * (log_b - lc)
        if trace is not None:
            trace["f"].append(f)
            trace["g"].append(g)
            trace["lr"].append(lr if ta > 0 else None)
            trace["lc"].append(lc if tb > 0 else None)
        n_done = it + 1
        if ta == 0 or tb == 0:  # semi-relaxed: one update of the constrained side is exact
            converged = True
            break
        if tol is not None and (n_done % check_every == 0 or n_done == iters):
            if _moved(f, f_prev, g, g_prev, shard) < tol:
                converged = True
                break
    return f, g, n_done, converged


def _exp_iterate(S, log_a, log_b, ta, tb, f, g, iters, tol, check_every, trace=None, shard=None):
    # u = (a / K v)^ta, v = (b / K^T u)^tb in the exp domain: one matvec per update, no exp/log
    # of the n x m matrix inside the loop. Safe because |S| <= EXP_SAFE_BOUND.
    # ``trace`` (a dict, no-grad use only) receives K and every iterate for a hand-written
    # backward (:class:`_FusedExpSinkhorn`).
    K = S.exp()
    a, b = log_a.exp(), log_b.exp()
    u, v = f.exp(), g.exp()
    tiny = torch.finfo(K.dtype).tiny
    if trace is not None:
        trace.update(K=K, u=[u], v=[v], r=[], c=[])
    n_done = 0
    converged = False
    Kv = Ktu = None
    for it in range(iters):
        u_prev, v_prev = u, v
        if ta > 0:
            Kv = (K @ v.unsqueeze(-1)).squeeze(-1).clamp_min(tiny)
            u = a / Kv if ta == 1.0 else (a / Kv).pow(ta)
        if tb > 0:
            Ktu = _col_sum((u.unsqueeze(-2) @ K).squeeze(-2), shard).clamp_min(tiny)
            v = b / Ktu if tb == 1.0 else (b / Ktu).pow(tb)
        if trace is not None:
            trace["u"].append(u)
            trace["v"].append(v)
            trace["r"].append(Kv if ta > 0 else None)
            trace["c"].append(Ktu if tb > 0 else None)
        n_done = it + 1
        if ta == 0 or tb == 0:
            converged = True
            break
        if tol is not None and (n_done % check_every == 0 or n_done == iters):
            if _moved(u.log(), u_prev.log(), v.log(), v_prev.log(), shard) < tol:
                converged = True
                break
    return u.log(), v.log(), n_done, converged


def _exp_plan_sums(
    trace: dict, shard: Shard | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(K v, row sums, column sums)`` of the final plan :math:`\\mathrm{diag}(u) K
    \\mathrm{diag}(v)` of a traced :func:`_exp_iterate`, from two matrix-vector products."""
    K, u, v = trace["K"], trace["u"][-1], trace["v"][-1]
    kv = (K @ v.unsqueeze(-1)).squeeze(-1)
    return kv, u * kv, v * _col_sum((u.unsqueeze(-2) @ K).squeeze(-2), shard)
