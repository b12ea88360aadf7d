"""The dynamic mixed margin (DMM) in your own training loop.

Shows: ``otcl.losses.build("dmm", base=...)`` around any loss, and the two hooks a loop calls
on every otcl loss: ``set_epoch(epoch)`` (DMM's term ramps in with the epoch, weight
``e / (e + warmup)``) and ``prepare_inputs(encoder, x1)`` (Mixup of the raw inputs, re-encoded
by your encoder, handed to the loss as ``mixed=``). It prints the DMM term's weight per epoch
and the difference between DMM and its base loss on the same batch: zero at epoch 0, growing
with the ramp. Without ``set_epoch`` the term would stay off and the loss warns.

    python examples/dmm_loop.py            # ~10 s on a CPU
    python examples/dmm_loop.py --tiny     # what the tests run
"""

from __future__ import annotations

import sys

import torch

import otcl


def main(tiny: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g)
    encoder = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    warmup = 2
    dmm = otcl.losses.build("dmm", base="gca-uot", warmup=warmup)
    base = otcl.losses.build("gca-uot")  # the same loss without DMM, for the comparison
    opt = torch.optim.SGD(encoder.parameters(), lr=0.05, momentum=0.9)
    epochs, batch = (2, 128) if tiny else (6, 128)
    gaps = {}
    for epoch in range(epochs):
        dmm.set_epoch(epoch)  # the ramp: weight e / (e + warmup)
        for idx in torch.randperm(len(x), generator=g).split(batch):
            x1 = x[idx] + 0.3 * torch.randn(len(idx), 32, generator=g)
            x2 = x[idx] + 0.3 * torch.randn(len(idx), 32, generator=g)
            extra = dmm.prepare_inputs(encoder, x1)  # {"mixed": encoder(mixup of x1)}
            z1, z2 = encoder(x1), encoder(x2)
            loss = dmm(z1, z2, **extra)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            gap = (loss - base(z1, z2)).item()  # the DMM term on the last batch
        gaps[epoch] = gap
        weight = epoch / (epoch + warmup)
        print(
            f"epoch {epoch}: ramp weight {weight:.2f}, loss {loss.item():.4f}, DMM term {gap:+.4f}"
        )
    return {"loss": loss.item(), "term_epoch0": gaps[0], "term_last": gaps[epochs - 1]}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
