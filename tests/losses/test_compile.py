"""A training step's loss syncs nothing with the host and compiles into one graph.

With ``check_inputs=False`` (the trainer's own periodic finiteness check suffices) and no solver
tolerance, the losses contain no ``.item()``, no data-dependent branch and no side channel:
``torch._dynamo.explain`` finds a single graph without breaks (each break would be a host sync
and a stop in a compiled step). Documented exceptions: a tolerance (``tol``) and the implicit
backward's conjugate gradient check convergence on the host; DMM draws its lambda on the host.
"""

from __future__ import annotations

import pytest
import torch

import otcl

COMPILED = [  # one of each code path (explain takes seconds per loss)
    ("infonce", {}),
    ("gca-uot", {}),
    ("iot-uni", {"layout": "cross"}),
    ("hcl", {}),
    ("ot-hard", {"tol": 0.0}),
]


@pytest.mark.parametrize("name,params", COMPILED, ids=[f"{n}-{p}" for n, p in COMPILED])
def test_loss_compiles_without_graph_breaks(name, params):
    import torch._dynamo as dynamo

    loss = otcl.losses.build(name, check_inputs=False, **params)
    z1 = torch.randn(16, 8, requires_grad=True)
    z2 = torch.randn(16, 8, requires_grad=True)
    dynamo.reset()
    explained = dynamo.explain(lambda a, b: loss(a, b))(z1, z2)
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


def test_checks_and_tolerance_are_the_host_syncs():
    """The documented exceptions: input checks and a tolerance do sync (graph breaks)."""
    import torch._dynamo as dynamo

    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    for params in ({"check_inputs": True}, {"check_inputs": False, "tol": 1e-3}):
        dynamo.reset()
        loss = otcl.losses.build("gca-ince", **params)
        assert dynamo.explain(lambda a, b, f=loss: f(a, b))(z1, z2).graph_break_count > 0
