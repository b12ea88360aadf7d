r"""Robustness of a trained multimodal model: missing modalities and noisy modalities.

Protocol (GMC's): the model is trained with every modality; a probe is fitted on the **frozen**
joint representation of the training set with every modality present; at test time each subset
of modalities is present and the others are

* dropped (``missing="drop"``, default): the joint representation is the fusion of the present
  latents only (GMC's test-time rule), or
* zero-filled (``missing="zero"``): a zero input is encoded in place of each missing modality
  and fused with the others.

For every non-empty subset S the probe's metric on the test joint :math:`z_J(S)` is reported
(accuracy for classes; MAE, correlation, binary accuracy and F1 for sentiment), and for every
proper subset the retrieval of the rest from S, :math:`z_J(S) \to z_J(\bar S)`. The pairwise
unimodal retrieval (every pair, both directions) uses the clean test latents.

**Noise**: Gaussian noise of a given signal-to-noise ratio on one modality (or all) at a time,

.. math::

    \tilde x_i = x_i + \sigma_i \varepsilon,\quad
    \sigma_i^2 = \frac{\operatorname{mean}(x_i^2)}{10^{\mathrm{SNR}/10}}

(per sample, over all its features), then the probe's metric of the joint representation and
the mean R@1 of the pairs involving the noisy modality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from typing import Any

import torch

from .data import MultimodalData
from .metrics import accuracy, cross_modal_retrieval, retrieval_metrics, sentiment_metrics
from .models import MultimodalModel

__all__ = [
    "subsets",
    "subset_name",
    "add_noise",
    "encode_all",
    "joint_of",
    "ridge_probe",
    "predictor_probe",
    "evaluate_robustness",
    "MISSING",
    "Scorer",
    "ProbeFactory",
]

MISSING = ("drop", "zero")
#: test features (M, d) -> metrics
Scorer = Callable[[torch.Tensor], dict[str, float]]
#: (train features (N, d), train labels (N,), test labels (M,)) -> scorer of test features
ProbeFactory = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Scorer]
Predictor = Callable[[torch.Tensor], torch.Tensor]


def subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, by size then in the modalities' order (the full set last)."""
    mods = tuple(modalities)
    return [s for k in range(1, len(mods) + 1) for s in combinations(mods, k)]


def subset_name(subset: Sequence[str]) -> str:
    """``("text", "audio")`` -> ``"text+audio"``."""
    return "+".join(subset)


def add_noise(
    x: torch.Tensor, snr_db: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian noise at ``snr_db`` decibels, relative to each sample's mean power (see above)."""
    if not isinstance(snr_db, (int, float)) or snr_db != snr_db:
        raise ValueError(f"snr_db: expected a number (decibels), got {snr_db!r}")
    power = x.pow(2).reshape(x.shape[0], -1).mean(1)
    sigma = (power / 10.0 ** (float(snr_db) / 10.0)).sqrt().view(-1, *([1] * (x.dim() - 1)))
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + sigma * eps


@torch.no_grad()
def encode_all(
    model: MultimodalModel,
    x: Mapping[str, torch.Tensor],
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Unit latents (N, d) of every modality in ``x``, each encoded alone, in eval mode (CPU)."""
    was = model.training
    model.eval()
    try:
        out: dict[str, list[torch.Tensor]] = {m: [] for m in x}
        n = int(next(iter(x.values())).shape[0])
        for s in range(0, n, batch_size):
            for m, v in x.items():
                z = model.encode({m: v[s : s + batch_size].to(device)})[m]
                out[m].append(z.float().cpu())
    finally:
        model.train(was)
    return {m: torch.cat(v) for m, v in out.items()}


@torch.no_grad()
def joint_of(
    model: MultimodalModel,
    latents: Mapping[str, torch.Tensor],
    present: Sequence[str],
    *,
    zero_latents: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Joint representation (N, d) from the latents of ``present`` (+ zero-filled others)."""
    use = {m: latents[m] for m in model.modalities if m in present}
    if zero_latents is not None:
        use = {
            m: latents[m] if m in present else zero_latents[m]
            for m in model.modalities
            if m in latents
        }
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return model.fuse({m: v.to(dev) for m, v in use.items()}).float().cpu()
    finally:
        model.train(was)


def ridge_probe(
    train_features: torch.Tensor, train_targets: torch.Tensor, alpha: float = 1.0
) -> Predictor:
    r"""Ridge regression on standardised features: :math:`w = (X^\top X + \alpha I)^{-1} X^\top y`.

    Returns the prediction function (N, d) -> (N,). Solved in float64 in closed form.
    """
    if not alpha >= 0:
        raise ValueError(f"alpha: expected a ridge penalty >= 0, got {alpha!r}")
    x = train_features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    y = train_targets.double()
    ym = y.mean()
    a = xs.T @ xs + alpha * torch.eye(xs.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(a, xs.T @ (y - ym))

    def predict(f: torch.Tensor) -> torch.Tensor:
        return (((f.double() - mean) / std) @ w + ym).float()

    return predict


def predictor_probe(
    fit: Callable[[torch.Tensor, torch.Tensor], Predictor], task: str
) -> ProbeFactory:
    """A :data:`ProbeFactory` from ``fit(train_features, train_y) -> predict``.

    The scorer reports ``{"accuracy"}`` of predicted classes (``task="classification"``) or
    :func:`~.metrics.sentiment_metrics` of predicted values (``"regression"``).
    """

    def factory(ftr: torch.Tensor, ytr: torch.Tensor, yte: torch.Tensor) -> Scorer:
        predict = fit(ftr, ytr)
        if task == "classification":
            return lambda f: {"accuracy": accuracy(predict(f).cpu(), yte.cpu())}
        return lambda f: sentiment_metrics(predict(f), yte)

    return factory


def evaluate_robustness(
    model: MultimodalModel,
    data: MultimodalData,
    probe: ProbeFactory | None,
    *,
    missing: str = "drop",
    snr_db: Sequence[float] = (),
    noise_seed: int = 0,
    batch_size: int = 1024,
    full_only: bool = False,
) -> dict[str, Any]:
    """Probe metrics per missing-modality subset, retrieval, and noise (see the module doc).

    Args:
        model: the trained model (its device is used; it is left in its mode).
        data: the dataset; labels are needed for the probe metrics (none: retrieval only).
        probe: ``probe(train_joint, train_y, test_y) -> scorer``, the scorer mapping test joint
            features (M, d) to metrics (:func:`predictor_probe` makes one from a predictor);
            ``None`` (or a dataset without labels) skips the probe metrics.
        missing: ``"drop"`` or ``"zero"``.
        snr_db: signal-to-noise ratios (dB) of the noise evaluation; empty = none.
        full_only: only the probe with every modality present (a quick monitor).
    Returns:
        ``{"subsets": [{"present", "metrics", "retrieval"?}], "retrieval": {"a->b": ...},
        "noise": [{"snr_db", "noisy", "metrics", "mean_R@1"}], "missing": missing}``.
    """
    if missing not in MISSING:
        raise ValueError(f"missing: expected one of {', '.join(MISSING)}, got {missing!r}")
    dev = next(model.parameters()).device
    mods = model.modalities
    if tuple(data.modalities) != mods:
        raise ValueError(f"data: modalities {data.modalities} differ from the model's {mods}")

    def encode(x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return encode_all(model, x, batch_size=batch_size, device=dev)

    ztr = encode(dict(data.train))
    zte = encode(dict(data.test))
    zero = None
    if missing == "zero":
        zero = encode({m: torch.zeros_like(v) for m, v in data.test.items()})
    scorer: Scorer | None = None
    if probe is not None and data.task is not None:
        ytr, yte = data.train_y, data.test_y
        assert ytr is not None and yte is not None  # a task has labels (MultimodalData checks)
        scorer = probe(joint_of(model, ztr, mods), ytr, yte)

    def metrics_of(joint: torch.Tensor) -> dict[str, float]:
        return {} if scorer is None else scorer(joint)

    if full_only:
        return {
            "missing": missing,
            "task": data.task,
            "subsets": [
                {
                    "present": list(mods),
                    "name": subset_name(mods),
                    "metrics": metrics_of(joint_of(model, zte, mods)),
                }
            ],
        }
    rows = []
    joints = {s: joint_of(model, zte, s, zero_latents=zero) for s in subsets(mods)}
    for s, joint in joints.items():
        row: dict[str, Any] = {"present": list(s), "name": subset_name(s)}
        row["metrics"] = metrics_of(joint)
        rest = tuple(m for m in mods if m not in s)
        if rest:  # retrieve what is missing from what is present
            row["retrieval"] = retrieval_metrics(joint, joints[rest])
        rows.append(row)
    noise = []
    gen = torch.Generator().manual_seed(int(noise_seed))
    for snr in snr_db:
        for noisy in (*mods, "all"):
            which = mods if noisy == "all" else (noisy,)
            zn = dict(zte)
            zn.update(encode({m: add_noise(data.test[m], snr, gen) for m in which}))
            r1 = [
                retrieval_metrics(zn[a], zn[b])["R@1"]
                for a in mods
                for b in mods
                if a != b and (a in which or b in which)
            ]
            noise.append(
                {
                    "snr_db": float(snr),
                    "noisy": noisy,
                    "metrics": metrics_of(joint_of(model, zn, mods)),
                    "mean_R@1": sum(r1) / len(r1),
                }
            )
    return {
        "missing": missing,
        "task": data.task,
        "subsets": rows,
        "retrieval": cross_modal_retrieval(zte),
        "noise": noise,
    }
