r"""Hard and debiased negatives: ``dcl``, ``hcl`` and ``ot-hard``.

All three share one estimator of the negative term (the form of the official DCL, HCL and
HCL-OT code). For an anchor :math:`i` with positive :math:`p(i)`, scores
:math:`\ell_{ij} = s_{ij}/t` (cosine / temperature), :math:`M` negatives and row weights
:math:`w_{ij} \ge 0`, :math:`\sum_j w_{ij} = 1` on the negatives:

.. math::

    N_g^{(i)} = \max\Big\{\frac{M \sum_j w_{ij} e^{\ell_{ij}} - \tau^+ M e^{\ell_{i,p(i)}}}
        {1-\tau^+},\; M e^{-1/t}\Big\},\qquad
    \mathcal L = \frac1n\sum_i -\log\frac{e^{\ell_{i,p(i)}}}{e^{\ell_{i,p(i)}} + N_g^{(i)}} .

The methods differ only in the weights:

===========  =====================================================  ============================
name         weights :math:`w_{ij}` on the negatives                 paper / official code
===========  =====================================================  ============================
``dcl``      uniform :math:`1/M`                                     Chuang et al., NeurIPS 2020
``hcl``      :math:`\mathrm{softmax}_j(\beta\, s_{ij}/t)`            Robinson et al., ICLR 2021
``ot-hard``  :math:`P_{ij}/\sum_k P_{ik}`, :math:`P` the entropic    Jiang, Ishwar, Aeron,
             OT coupling of the batch with itself (uniform           IJCNN 2023
             marginals, self and positive pairs excluded)
===========  =====================================================  ============================

:math:`\tau^+` is the positive-class prior (debiasing), the clamp at :math:`M e^{-1/t}` (the
smallest value of :math:`M e^{s/t}` for cosine scores) keeps :math:`N_g > 0`. With
:math:`\tau^+ = 0`: ``dcl`` is InfoNCE / NT-Xent, ``hcl`` with :math:`\beta = 0` is ``dcl``.

Everything is computed in log space (:math:`\log N_g` by log-sum-exp, the debiasing by
``log1p``), so small temperatures or large :math:`\beta` neither overflow nor give NaN
gradients (the official code computes ``exp(beta * log(neg))`` directly, which overflows in
half precision at :math:`t = 0.1, \beta = 6`).

``ot-hard``: with the squared-Euclidean cost on the unit sphere, :math:`C_{ij} = 2 - 2s_{ij}`,
the coupling is :math:`P_{ij} = u_i e^{2 s_{ij}/\varepsilon} v_j`, so its row weights are HCL's
with :math:`\beta = 2t/\varepsilon`, re-weighted by the column scaling :math:`v_j`, which makes
every sample be used as a negative equally often (the second marginal). The official code
treats :math:`P` as a constant (POT on a detached CPU copy); so does ``coupling_grad="none"``,
the default. See ``docs/losses.md`` (section "Hard negatives") for defaults and differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .._validation import check_nonneg, check_positive
from ..ot.distributed import all_to_all_blocks, current_shard
from ..ot.geometry import Geometry
from ..ot.sinkhorn import Sinkhorn, SinkhornOutput
from .geometry_choice import (
    DEFAULT_MEMORY_BUDGET,
    GEOMETRIES,
    STREAMS,
    batch_tile_rows,
    check_memory_budget,
)
from .hard_estimator import HardNegativeLoss, _row_normalise
from .params import check_finite_number, choice, equals, int_at_least, optional, param
from .registry import register
from .streaming_hard import hard_streaming_forward

__all__ = ["HardNegativeLoss", "DCL", "HCL", "OTHard", "COSTS", "COUPLING_GRADS"]

COSTS = ("sqeuclidean", "exp")
COUPLING_GRADS = ("none", "unrolled", "detach", "implicit")
EXP_COST = equals("cost", "exp")


@register("dcl")
class DCL(HardNegativeLoss):
    r"""Debiased contrastive loss (Chuang, Robinson, Lin, Torralba, Jegelka, NeurIPS 2020).

    Uniform weights on the negatives, debiased by the positive-class prior ``tau_plus``:
    :math:`N_g = \max\{(\sum_j e^{s_{ij}/t} - \tau^+ M e^{s_{i,p}/t})/(1-\tau^+), M e^{-1/t}\}`.

    Defaults of the official code (chingyaoc/DCL): ``temperature=0.5``, ``tau_plus=0.1``,
    ``layout="simclr"``. ``tau_plus=0`` is exactly ``infonce`` (tested).
    """

    tau_plus: float = 0.1


@register("hcl")
class HCL(HardNegativeLoss):
    r"""Hard negative contrastive loss (Robinson, Chuang, Sra, Jegelka, ICLR 2021).

    Importance weights :math:`w_{ij} = \mathrm{softmax}_j(\beta s_{ij}/t)` over the negatives
    (the official code's ``imp = exp(beta * log(neg))`` normalised by ``imp.mean()``: beta
    multiplies :math:`s/t`, not :math:`s`), differentiated (not detached), then DCL's debiasing.

    Args:
        beta: concentration :math:`\beta \ge 0`; 0 gives ``dcl``.
        tau_plus: positive-class prior (official default 0.1).
        temperature, layout, similarity, symmetric, check_inputs: see :class:`HardNegativeLoss`.

    Defaults of the official code (joshr17/HCL): ``temperature=0.5``, ``beta=1.0``,
    ``tau_plus=0.1``. The optional annealing of beta (``--anneal down``) is left to the training
    loop: set ``loss.beta`` between epochs (``beta`` is saved in ``state_dict`` as extra state).
    """

    tau_plus: float = 0.1
    beta: float = param(default=1.0, check=check_nonneg)

    def get_extra_state(self) -> dict[str, float]:
        """``beta``, which a training loop may anneal between epochs, saved by ``state_dict``."""
        return {"beta": self.beta}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or "beta" not in state:
            raise ValueError(f"state: expected HCL extra state with key 'beta', got {state!r}")
        self.beta = check_nonneg("beta", state["beta"])

    def log_weights(self, geom: Geometry, neg: torch.Tensor) -> torch.Tensor:
        return _row_normalise(self.beta * geom.sim / self.temperature, neg)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", beta={self.beta!r}"


@register("ot-hard")
class OTHard(HardNegativeLoss):
    r"""Hard negatives from regularized OT (HCL-OT; Jiang, Ishwar, Aeron, IJCNN 2023).

    The weights are the rows of the entropic OT coupling of the batch with itself,

    .. math::

        P = \arg\min_{P \in \Pi(a, b)} \langle P, C\rangle - \varepsilon H(P),\quad
        a = b = \text{uniform},\quad P_{ij} = 0 \text{ on self and positive pairs},

    :math:`w_{ij} = P_{ij} / \sum_k P_{ik}` (= :math:`nP_{ij}` at convergence), plugged into
    the DCL/HCL estimator. The cost is on the embeddings (L2-normalised for
    ``similarity="cosine"``): ``"sqeuclidean"`` :math:`C_{ij} = \|z_i - z_j\|^2` or the paper's
    new cost ``"exp"`` :math:`C_{ij} = \exp(\|z_i - z_j\|^2 - \kappa)` (only
    :math:`\varepsilon e^{\kappa}` matters). The coupling is solved with
    :class:`otcl.ot.Sinkhorn` in the log/exp domain on the embeddings' device.

    With ``cost="sqeuclidean"`` and :math:`\varepsilon = 2t/\beta` the weights are HCL's up to
    the column scaling: :math:`w_{ij} = \mathrm{softmax}_j(\beta s_{ij}/t + g_j)`, with
    :math:`g = \log v` the column potential that makes every sample a negative equally often.
    HCL has :math:`g = 0`; :math:`g` is near-constant only without "hub" samples, so the two are
    close, not equal. Observed (t = 0.5, beta = 1, N = 64, d = 128): max total variation per row
    0.009, max relative weight error 6 %, relative loss difference 4e-4; larger in low dimension
    or at large beta (table in ``docs/losses.md``, section ``ot-hard``).

    With ``labels=``, same-class pairs are excluded from the coupling too (marginals stay
    uniform); if one class holds more than half the batch the balanced problem is infeasible
    and the solver stops at ``iters`` with its last scaling (the weights stay row-normalised).

    Args:
        eps: entropic regularisation :math:`\varepsilon > 0` (official ``--reg``, default 0.7).
        cost: ``"sqeuclidean"`` (default) or ``"exp"``.
        kappa: shift of the ``"exp"`` cost (official default 1; only with ``cost="exp"``).
        tau_plus: positive-class prior (official HCL-OT default 0).
        iters: maximum Sinkhorn iterations (default 100; the official code runs up to 1000 on
            the CPU with ``stopThr=1e-9``).
        tol: early stop when the potentials move less than ``tol`` (checked every 10
            iterations, one host sync each); default 1e-4. 0 = always ``iters`` (sync-free).
        coupling_grad: ``"none"`` (default, as the official code: the plan is a constant),
            ``"unrolled"`` (autograd through the iterations), ``"detach"`` (envelope gradient:
            potentials constant, gradient through the cost) or ``"implicit"`` (implicit
            differentiation, :mod:`otcl.ot.implicit`).
        geometry, tile_size, memory_budget: ``"dense"`` (default), ``"streaming"`` (the
            coupling's potentials and two streamed row log-sum-exps per direction, never an
            n x m matrix: :mod:`otcl.losses.streaming_hard`) or ``"auto"``; see
            :mod:`otcl.losses.geometry_choice`.
        temperature, layout, similarity, symmetric, check_inputs: see :class:`HardNegativeLoss`.

    :meth:`coupling` returns the solve of a batch (a :class:`~otcl.ot.SinkhornOutput`) for
    diagnostics (marginal errors, iterations); the loss keeps nothing between calls.
    """

    eps: float = param(default=0.7, check=check_positive)
    cost: str = param(default="sqeuclidean", check=choice(COSTS))
    kappa: float = param(default=1.0, check=check_finite_number, applies=EXP_COST)
    iters: int = param(default=100, check=int_at_least(1))
    tol: float = param(default=1e-4, check=check_nonneg)
    coupling_grad: str = param(default="none", check=choice(COUPLING_GRADS))
    geometry: str = param(default="dense", check=choice(GEOMETRIES))
    tile_size: int | None = param(default=None, check=optional(int_at_least(1)), applies=STREAMS)
    memory_budget: float = param(
        default=DEFAULT_MEMORY_BUDGET, check=check_memory_budget, applies=STREAMS
    )

    def configure(self) -> None:
        super().configure()
        if self.geometry != "dense" and self.similarity == "dot" and self.coupling_grad != "none":
            raise ValueError(
                f"coupling_grad: geometry={self.geometry!r} with similarity='dot' serves "
                "coupling_grad='none' only (the dot-product cost's gradient reaches the norms, "
                "which the streamed tiles treat as constants); use similarity='cosine' or "
                "geometry='dense'"
            )

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        *,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if target is None:  # (a target is refused by the dense forward's checks)
            shard = current_shard() if self.gather_distributed else None
            world = 1 if shard is None else shard.world
            tile = batch_tile_rows(self, z1, negatives, world)
            if tile is not None:
                return hard_streaming_forward(self, z1, z2, labels, negatives, tile_size=tile)
        return super().forward(z1, z2, labels, target, negatives=negatives)

    def cost_matrix(self, sim: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n, m) ground cost between anchors ``x`` and candidates ``y``."""
        if self.similarity == "cosine":
            d2 = (2.0 - 2.0 * sim).clamp_min(0.0)
        else:
            d2 = (x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1) - 2.0 * sim).clamp_min(0.0)
        if self.cost == "sqeuclidean":
            return d2
        return torch.exp(d2 - self.kappa)

    def _bound(self) -> float | None:
        if self.similarity != "cosine":
            return None
        top = 4.0 if self.cost == "sqeuclidean" else math.exp(4.0 - self.kappa)
        return top / self.eps

    def solve_coupling(
        self, geom: Geometry, neg: torch.Tensor, labels_given: bool = True
    ) -> SinkhornOutput:
        """The entropic OT coupling of a batch's geometry (uniform marginals, zero off ``neg``).

        A pure function of its arguments: the same batch gives the same coupling whatever was
        solved before. With a sharded geometry, this rank's rows of the global coupling.
        ``labels_given=False`` asserts that every anchor has negatives (no labels removed any):
        it saves the one host sync of the empty check.
        """
        sim = geom.sim
        empty = False
        if labels_given:  # only labels can leave no negative at all (one host sync)
            anything = neg.any()
            if geom.shard is not None:
                anything = geom.shard.max(anything.to(torch.int32))
            empty = not bool(anything)
        if empty:  # e.g. one class only: nothing to couple
            zero_n, zero_m = sim.new_zeros(sim.shape[0]), sim.new_zeros(sim.shape[1])
            empty = torch.full_like(sim, float("-inf"))
            zero = sim.new_zeros(())
            return SinkhornOutput(zero_n, zero_m, empty, 0, True, zero, zero, stored_log_plan=empty)

        def scores() -> Geometry:
            assert geom.x is not None and geom.y is not None  # pair_scores keeps the embeddings
            c = self.cost_matrix(sim, geom.x, geom.y)
            s = torch.where(neg, -c / self.eps, torch.full_like(c, float("-inf")))
            return geom.replace(scores=s, bound=self._bound(), mask=None)

        solver = Sinkhorn(iters=self.iters, tol=self.tol or None, check_values=self.check_inputs)
        if self.coupling_grad == "none":
            with torch.no_grad():
                g = scores()
                out = solver.replace(grad="detach")(g.replace(scores=g.scores.detach()))
                return out.replace(stored_log_plan=out.log_plan.detach())
        return solver.replace(grad=self.coupling_grad)(scores())

    def coupling(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        labels: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> SinkhornOutput:
        """The entropic OT coupling of a batch (uniform marginals; zero on excluded pairs; this
        rank's rows with ``gather_distributed``)."""
        geo, neg, _, _ = self._prepare(z1, z2, labels, negatives)
        return self.solve_coupling(geo, neg)

    def log_weights(self, geom: Geometry, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # the coupling needs the embeddings: see log_weight_pair

    def log_weight_pair(
        self,
        geom: Geometry,
        neg: torch.Tensor,
        rev: tuple[Geometry, torch.Tensor] | None,
        labels_given: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # one solve; the coupling of the transposed problem is the transposed coupling
        log_plan = self.solve_coupling(geom, neg, labels_given).log_plan
        log_w = _row_normalise(log_plan, neg)
        if rev is None:
            return log_w, None
        n = geom.n_pairs
        square = log_plan[:, :n]
        shard = geom.shard
        if shard is None:
            cols = square.transpose(0, 1)
        else:  # this rank's view-2 anchors are columns of every rank's rows: exchange blocks
            k = square.shape[0]
            blocks = [square[:, r * k : (r + 1) * k] for r in range(shard.world)]
            if square.requires_grad:
                got = all_to_all_blocks(blocks, shard.group)
            else:
                got = [torch.empty_like(b) for b in blocks]
                torch.distributed.all_to_all(got, [b.contiguous() for b in blocks], shard.group)
            cols = torch.cat(got, dim=0).transpose(0, 1)  # (own view-2 anchors, all view 1)
        return log_w, _row_normalise(cols, rev[1])

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", eps={self.eps!r}, cost={self.cost!r}, kappa={self.kappa!r}, iters={self.iters}, "
            f"coupling_grad={self.coupling_grad!r}"
        )
