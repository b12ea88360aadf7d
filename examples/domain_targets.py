"""Custom target plans: GCA's domain blocks through ``target=``.

Every otcl loss compares the batch's transport plan with a target plan; by default the target
is the identity (each sample's positive is its other view). ``otcl.losses.domain_target``
builds GCA's domain-aware target: extra mass ``alpha`` on pairs from the same domain and
``beta`` on pairs across domains (``alpha > beta`` pulls each domain together, ``alpha <
beta`` removes domain structure). Shows the target matrix of a small batch, then the same
loop trained with the identity target and with the domain target, and how far apart the
domains end up (mean cosine similarity within domains minus across domains).

    python examples/domain_targets.py          # ~10 s on a CPU
    python examples/domain_targets.py --tiny   # what the tests run
"""

from __future__ import annotations

import sys

import torch

import otcl


def domain_gap(z: torch.Tensor, domains: torch.Tensor) -> float:
    """Mean cosine similarity of pairs within a domain minus that of pairs across domains."""
    z = torch.nn.functional.normalize(z, dim=1)
    s = z @ z.T
    same = domains[:, None] == domains[None, :]
    off = ~torch.eye(len(z), dtype=torch.bool)
    return float(s[same & off].mean() - s[~same].mean())


def train(target_of: str, x: torch.Tensor, domains: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    encoder = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    loss_fn = otcl.losses.build("gca-ince")
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[:64]
        x1 = x[idx] + 0.3 * torch.randn(64, 16, generator=g)
        x2 = x[idx] + 0.3 * torch.randn(64, 16, generator=g)
        target = None
        if target_of == "domains":  # (2N, 2N) for the default "simclr" layout
            target = otcl.losses.domain_target(domains[idx], alpha=0.5, beta=0.0)
        loss = loss_fn(encoder(x1), encoder(x2), target=target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return domain_gap(encoder(x), domains)


def main(tiny: bool = False) -> dict[str, float]:
    torch.set_printoptions(precision=2, linewidth=120)
    print("domain target of 3 pairs, domains (0, 0, 1), alpha=0.5, beta=0:")
    print(otcl.losses.domain_target(torch.tensor([0, 0, 1]), alpha=0.5, beta=0.0))
    g = torch.Generator().manual_seed(0)
    domains = torch.arange(256) % 2
    x = torch.randn(256, 16, generator=g) + 0.5 * domains[:, None].float()  # a small shift
    steps = 5 if tiny else 150
    gaps = {name: train(name, x, domains, steps) for name in ("identity", "domains")}
    for name, gap in gaps.items():
        print(f"target {name:8s}: within-domain minus across-domain similarity {gap:+.3f}")
    return gaps


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
