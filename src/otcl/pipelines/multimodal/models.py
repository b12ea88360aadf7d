r"""One encoder per modality into a shared space, and a joint representation of the present ones.

.. code-block:: text

    x_m (B, ...) --encoder_m--> h_m (B, hidden) --shared head--> z_m = normalize(.) (B, latent)
    joint = normalize( sum_{m present} w_m z_m ),   w_m = 1/|present|  (fusion="mean", GMC)
                                                    w = softmax_m(a(z_m))  (fusion="attention")

Encoders by modality kind: ``vector`` -> :class:`MLPEncoder`, ``sequence`` ->
:class:`SequenceEncoder` (GRU, GMC's MOSEI processors, or a 1-D convolution), ``image`` ->
:class:`PatchEncoder` (the shared small CNN, :class:`otcl.pipelines.sources.backbones.SmallCNN`, and a linear
layer; or an MLP of the pixels for tiny patches). The shared head
(GMC's "common encoder") maps every modality into one latent space.

A missing modality is ``None`` (or absent) in the input dict: it is **dropped**, so the joint
representation is built from the present modalities only (GMC's test-time rule). Zero-filling
instead (encoding a zero input) is the caller's choice (:mod:`.robustness`, ``missing="zero"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..sources.backbones import SmallCNN

__all__ = [
    "MLPEncoder",
    "SequenceEncoder",
    "PatchEncoder",
    "MultimodalModel",
    "build_model",
    "FUSIONS",
    "SEQ_ARCHS",
    "IMAGE_ARCHS",
]

FUSIONS = ("mean", "attention")
SEQ_ARCHS = ("gru", "conv")
IMAGE_ARCHS = ("cnn", "mlp")


class MLPEncoder(nn.Module):
    """(B, D) -> (B, out): ``Linear -> ReLU -> Linear``."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.net: nn.Sequential = nn.Sequential(
            nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, dim_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SequenceEncoder(nn.Module):
    """(B, T, D) -> (B, out).

    ``arch="gru"``: a one-layer GRU, its last hidden state through a linear layer (GMC's MOSEI
    processors: GRU hidden 30). ``arch="conv"``: two 1-D convolutions (kernel 3) with ReLU, mean
    over time, a linear layer.
    """

    def __init__(self, dim_in: int, hidden: int, dim_out: int, arch: str = "gru") -> None:
        super().__init__()
        if arch not in SEQ_ARCHS:
            raise ValueError(f"seq_arch: expected one of {', '.join(SEQ_ARCHS)}, got {arch!r}")
        self.arch = arch
        if arch == "gru":
            self.rnn: nn.GRU = nn.GRU(dim_in, hidden, batch_first=True)
        else:
            self.conv: nn.Sequential = nn.Sequential(
                nn.Conv1d(dim_in, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv1d(hidden, hidden, 3, padding=1),
                nn.ReLU(),
            )
        self.out: nn.Linear = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "gru":
            _, h = self.rnn(x)
            return self.out(h[-1])
        return self.out(self.conv(x.transpose(1, 2)).mean(dim=2))


class PatchEncoder(nn.Module):
    """(B, C, H, W) -> (B, out): the shared :class:`~otcl.pipelines.sources.backbones.SmallCNN` + linear,
    or (``arch="mlp"``) an :class:`MLPEncoder` of the flattened pixels (for tiny patches such as
    digits' 4 x 4 quadrants, where it is about 10x faster on a CPU than the CNN)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        hidden: int,
        dim_out: int,
        width: int = 16,
        arch: str = "cnn",
    ) -> None:
        super().__init__()
        if arch not in IMAGE_ARCHS:
            raise ValueError(f"image_arch: expected one of {', '.join(IMAGE_ARCHS)}, got {arch!r}")
        self.arch = arch
        if arch == "cnn":
            cnn = SmallCNN(shape[0], width)
            self.net: nn.Module = nn.Sequential(cnn, nn.Linear(cnn.feature_dim, dim_out))
        else:
            c, h, w = shape
            self.net = nn.Sequential(nn.Flatten(), MLPEncoder(c * h * w, hidden, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultimodalModel(nn.Module):
    """Per-modality encoders, a shared head and a fusion of the present modalities.

    Args:
        encoders: modality name -> module mapping its input (B, ...) to (B, hidden).
        hidden: output width of the encoders.
        latent: width d of the shared space.
        fusion: ``"mean"`` (mean of the present unit latents, GMC) or ``"attention"`` (a learned
            softmax weighting over the present modalities).

    Call:
        ``model(x)`` with ``x`` a dict modality -> (B, ...) tensor or ``None`` (missing): the
        joint representation (B, latent), unit norm. :meth:`encode` gives the unimodal latents.
    """

    def __init__(
        self, encoders: Mapping[str, nn.Module], hidden: int, latent: int, fusion: str = "mean"
    ) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"encoders: expected at least 2 modalities, got {list(encoders)}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.modalities: tuple[str, ...] = tuple(encoders)
        self.encoders: nn.ModuleDict = nn.ModuleDict(dict(encoders))
        self.head: nn.Sequential = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, latent)
        )
        self.fusion = fusion
        self.attention: nn.Module | None = None
        if fusion == "attention":
            self.attention = nn.Sequential(
                nn.Linear(latent, latent), nn.Tanh(), nn.Linear(latent, 1)
            )
        self.latent_dim = latent

    def _present(self, x: Any) -> dict[str, torch.Tensor]:
        if not isinstance(x, Mapping):
            raise ValueError(
                f"x: expected a dict modality -> tensor (or None), got {type(x).__name__}"
            )
        unknown = [k for k in x if k not in self.encoders]
        if unknown:
            raise ValueError(
                f"x: unknown modality {unknown[0]!r}; the model has {', '.join(self.modalities)}"
            )
        present = {m: x[m] for m in self.modalities if x.get(m) is not None}
        if not present:
            raise ValueError("x: every modality is missing; expected at least one tensor")
        sizes = {m: int(v.shape[0]) for m, v in present.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"x: modalities have different batch sizes {sizes}")
        return present

    def encode(self, x: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Unit-norm latents (B, latent) of the present modalities, in the model's order."""
        return {
            m: F.normalize(self.head(self.encoders[m](v)), dim=-1)
            for m, v in self._present(x).items()
        }

    def fuse(self, latents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Joint representation (B, latent) of the given unit latents (see the module doc)."""
        zs = torch.stack(list(latents.values()), dim=1)  # (B, M', d)
        if self.attention is None:
            joint = zs.mean(dim=1)
        else:
            w = torch.softmax(self.attention(zs).squeeze(-1), dim=1)  # (B, M')
            joint = (w.unsqueeze(-1) * zs).sum(dim=1)
        return F.normalize(joint, dim=-1)

    def forward(self, x: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
        return self.fuse(self.encode(x))


def build_model(
    shapes: Mapping[str, tuple[int, ...]],
    kinds: Mapping[str, str],
    *,
    hidden: int = 64,
    latent: int = 32,
    fusion: str = "mean",
    seq_arch: str = "gru",
    image_arch: str = "cnn",
    width: int = 16,
) -> MultimodalModel:
    """A :class:`MultimodalModel` with one encoder per modality, chosen by its kind.

    Args:
        shapes: modality -> per-sample input shape (D,), (T, D) or (C, H, W).
        kinds: modality -> ``vector`` | ``sequence`` | ``image``.
        hidden: encoder output and shared-head width; latent: shared-space width d.
        seq_arch: ``gru`` or ``conv`` for sequences.
        image_arch: ``cnn`` or ``mlp`` for images; width: channels of the image CNN.
    """
    for name, v in (("hidden", hidden), ("latent", latent), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"model.{name}: expected a positive integer, got {v!r}")
    enc: dict[str, nn.Module] = {}
    for m, shape in shapes.items():
        kind = kinds[m]
        if kind == "vector":
            enc[m] = MLPEncoder(shape[0], hidden, hidden)
        elif kind == "sequence":
            enc[m] = SequenceEncoder(shape[-1], hidden, hidden, seq_arch)
        elif kind == "image":
            enc[m] = PatchEncoder(shape, hidden, hidden, width, image_arch)  # type: ignore[arg-type]
        else:
            raise ValueError(f"kinds[{m!r}]: expected vector, sequence or image, got {kind!r}")
    return MultimodalModel(enc, hidden, latent, fusion)
