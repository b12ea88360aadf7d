"""The methods ``loss_speed.py`` measures: every named loss, the implicit-gradient variants,
the naive unrolled Sinkhorn loss written here and POT's ``sinkhorn_log`` (forward only)."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import otcl

BASELINE = "infonce"
NAIVE = "naive-unrolled"
POT_NAME = "pot-sinkhorn_log"
TEMPERATURE = 0.5  # every loss's default temperature; the references use the same
ITERATIVE = ("balanced", "unbalanced")


def _pot():
    """POT (an optional reference), imported on first use (it takes seconds); None if absent."""
    try:
        import ot
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return ot


def naive_unrolled_loss(
    z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = TEMPERATURE, iters: int = 20
) -> torch.Tensor:
    """The straightforward OT loss: autograd through ``iters`` log-domain Sinkhorn iterations.

    SimCLR layout (2N views, self-pairs excluded), cosine scores / temperature, uniform
    marginals, cross-entropy of the row-normalised plan with the other view: the same value as
    ``gca-ince`` / ``iot`` with ``iters`` iterations.
    """
    n_pairs = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    scores = z @ z.T / temperature
    n = scores.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    scores = scores.masked_fill(eye, float("-inf"))
    log_a = -math.log(n)
    f = torch.zeros(n, device=scores.device)
    g = torch.zeros(n, device=scores.device)
    for _ in range(iters):
        f = log_a - torch.logsumexp(scores + g[None, :], dim=1)
        g = log_a - torch.logsumexp(scores + f[:, None], dim=0)
    log_plan = f[:, None] + scores + g[None, :]
    idx = torch.arange(n_pairs, device=scores.device)
    return F.cross_entropy(log_plan, torch.cat([idx + n_pairs, idx]))


def pot_forward(z1: torch.Tensor, z2: torch.Tensor, *, iters: int = 20) -> None:
    """POT's log-domain Sinkhorn on the same problem, forward only (no gradient)."""
    with torch.no_grad():
        z = F.normalize(torch.cat([z1, z2]), dim=-1)
        cost = 1.0 - z @ z.T
        cost.fill_diagonal_(1e4)  # self-pairs: exp(-1e4 / eps) = 0
        n = cost.shape[0]
        a = torch.full((n,), 1.0 / n, device=cost.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _pot().bregman.sinkhorn_log(a, a, cost, TEMPERATURE, numItermax=iters, stopThr=0.0)


@dataclass
class Method:
    label: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]
    backward: bool = True
    note: str = ""


def _is_ot_coupling(loss: torch.nn.Module) -> bool:
    return isinstance(loss, otcl.losses.OTContrastiveLoss) and loss.constraint in ITERATIVE


def _build(name: str, iters: int, **extra) -> torch.nn.Module:
    """The loss with its defaults, ``iters`` where it has Sinkhorn iterations, and ``extra`` where
    it applies (closed forms take neither)."""
    params = {"iters": iters, **extra}
    known = otcl.losses.parameters(name)
    drop = otcl.losses.inapplicable_params(name, params)
    return otcl.losses.build(
        name, **{k: v for k, v in params.items() if k in known and k not in drop}
    )


def all_labels(iters: int) -> list[str]:
    """Every method label, InfoNCE first."""
    names = otcl.losses.available()
    labels = [BASELINE] + [n for n in names if n != BASELINE]
    labels += [f"{n}[implicit]" for n in names if _is_ot_coupling(_build(n, iters))]
    labels.append(NAIVE)
    if _pot() is not None:
        labels.append(POT_NAME)
    return labels


def make_method(label: str, iters: int, device: str) -> Method:
    if label == NAIVE:
        return Method(label, lambda a, b: naive_unrolled_loss(a, b, iters=iters))
    if label == POT_NAME:
        if _pot() is None:
            raise ValueError("--losses: POT is not installed")
        return Method(label, lambda a, b: pot_forward(a, b, iters=iters), False, "forward only")
    m = re.fullmatch(r"([\w-]+)\[implicit\]", label)
    if m:
        loss = _build(m.group(1), iters, grad="implicit")
        if not _is_ot_coupling(loss):
            raise ValueError(f"--losses: {m.group(1)!r} has no Sinkhorn coupling")
        return Method(label, loss.to(device))
    if label not in otcl.losses.available():
        raise ValueError(f"--losses: unknown method {label!r}")
    return Method(label, _build(label, iters).to(device))
