"""Your own training loop with an OT contrastive loss.

Shows: ``otcl.losses.build("gca-uot")`` dropped into a plain PyTorch loop (two augmented views
of a batch -> encoder -> loss), the loss's two training-loop hooks called as on any otcl loss,
and ``otcl.diagnostics.batch_diagnostics`` on a trained batch. The data are Gaussian clusters
in 32 dimensions; an augmented view is the sample plus noise and a random feature dropout.

    python examples/own_loop.py            # ~10 s on a CPU
    python examples/own_loop.py --tiny     # a few steps (what the tests run)
"""

from __future__ import annotations

import sys

import torch

import otcl


def make_data(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 0.7 * torch.randn(classes, dim, generator=g)
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dim, generator=g), y


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(x.shape, generator=g) > 0.2).float()
    return x * keep + 0.5 * torch.randn(x.shape, generator=g)


def nearest_centroid_accuracy(z: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of assigning each embedding to the closest class mean (a quick linear probe)."""
    z = torch.nn.functional.normalize(z, dim=1)
    means = torch.stack([z[y == c].mean(0) for c in range(int(y.max()) + 1)])
    return float(((z @ means.T).argmax(1) == y).float().mean())


def main(tiny: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = make_data(512, 8, 32, seed=0)
    encoder = torch.nn.Sequential(
        torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 16)
    )
    loss_fn = otcl.losses.build("gca-uot")  # the paper's defaults; any registered name works
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    epochs, batch = (2, 128) if tiny else (20, 128)
    with torch.no_grad():
        before = nearest_centroid_accuracy(encoder(x), y)
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)  # a no-op for gca-uot; a loop calls it on any loss
        for idx in torch.randperm(len(x), generator=g).split(batch):
            x1, x2 = augment(x[idx], g), augment(x[idx], g)
            extra = loss_fn.prepare_inputs(encoder, x1)  # {} here; DMM's mixed inputs
            loss = loss_fn(encoder(x1), encoder(x2), **extra)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (epoch + 1) % 5 == 0 or tiny:
            print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    with torch.no_grad():
        after = nearest_centroid_accuracy(encoder(x), y)
        idx = torch.arange(batch)
        diag = otcl.diagnostics.batch_diagnostics(
            encoder(augment(x[idx], g)), encoder(augment(x[idx], g)), loss_fn
        )
    print(f"nearest-centroid accuracy: {before:.3f} before training, {after:.3f} after")
    print("diagnostics of a batch:", {k: round(float(v), 3) for k, v in diag.items()})
    return {"loss": loss.item(), "accuracy_before": before, "accuracy_after": after}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
