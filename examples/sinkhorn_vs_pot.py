"""The Sinkhorn solver on its own, checked against POT.

``otcl.ot.sinkhorn(scores, a, b, iters=...)`` maximises ``<P, S> + H(P)`` under the marginals
``a``, ``b`` (hard, or KL-relaxed with ``rho_a``, ``rho_b``). With ``scores = -C / eps`` it is
POT's entropic OT with cost ``C`` and regularisation ``eps``. Shows: the balanced plan and its
marginal errors, the unbalanced plan, the result fields (``plan``, ``f``, ``g``,
``n_iters``, ``converged``), and the largest difference from ``ot.sinkhorn`` and
``ot.unbalanced.sinkhorn_unbalanced`` in float64. Without POT (``pip install pot``) the
comparison is skipped.

    python examples/sinkhorn_vs_pot.py
"""

from __future__ import annotations

import sys
import warnings

import torch

import otcl


def main(tiny: bool = False) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    n, m, eps = (6, 5, 0.5) if tiny else (40, 30, 0.1)
    x, y = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(m, 2, generator=g)
    cost = torch.cdist(x, y.double()) ** 2
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    b = b / b.sum()

    out = otcl.ot.sinkhorn(-cost / eps, a, b, iters=2000, tol=1e-12)
    print(f"balanced: {out.n_iters} iterations, converged={out.converged}")
    print(
        f"  row marginal error {float((out.plan.sum(1) - a).abs().max()):.1e}, "
        f"column {float((out.plan.sum(0) - b).abs().max()):.1e}"
    )
    rho = 1.0 / eps  # KL weight reg_m = 1 in POT's units
    unb = otcl.ot.sinkhorn(-cost / eps, a, b, iters=2000, tol=1e-12, rho_a=rho, rho_b=rho)
    print(f"unbalanced (rho = {rho:g}): total mass {float(unb.plan.sum()):.4f}")

    result = {"balanced_row_error": float((out.plan.sum(1) - a).abs().max())}
    try:
        import ot  # POT
    except ImportError:
        print("POT is not installed: comparison skipped (pip install pot)")
        return result
    ref = torch.as_tensor(
        ot.sinkhorn(
            a.numpy(),
            b.numpy(),
            cost.numpy(),
            eps,
            method="sinkhorn_log",
            numItermax=5000,
            stopThr=1e-12,
        )
    )
    with warnings.catch_warnings():  # POT notes how it treats reg_type="entropy"
        warnings.simplefilter("ignore", UserWarning)
        ref_unb = torch.as_tensor(
            ot.unbalanced.sinkhorn_unbalanced(
                a.numpy(),
                b.numpy(),
                cost.numpy(),
                eps,
                1.0,
                reg_type="entropy",
                numItermax=5000,
                stopThr=1e-12,
            )
        )
    result["pot_balanced"] = float((out.plan - ref).abs().max())
    result["pot_unbalanced"] = float((unb.plan - ref_unb).abs().max())
    print(
        f"max |otcl - POT|: balanced {result['pot_balanced']:.1e}, "
        f"unbalanced {result['pot_unbalanced']:.1e}"
    )
    return result


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
