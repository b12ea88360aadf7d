r"""The domain-target sweep: its methods, how a run's numbers are read, the table and the plot.

A method is ``<loss>`` (the identity target) or ``<loss>@<alpha-beta>``, e.g. ``gca-uot@-0.25``:
the loss trained with the domain-block target of :math:`\alpha - \beta = \delta`, written as
:math:`\alpha = \max(\delta, 0)`, :math:`\beta = \max(-\delta, 0)` (so ``@+0.00`` is the
identity target again; ``target.scale`` says how a weight is read, ``block`` by default: the
mass of the block next to the positive's 1). The default sweep (:data:`METHODS`) runs GCA-INCE
and GCA-UOT at :math:`\delta \in \{-0.5, -0.25, 0, 0.25, 0.5\}` and InfoNCE as the reference.

Each run reports (:mod:`.evaluate`) class kNN and linear accuracy, domain accuracy and
leave-one-domain-out (LODO) class accuracy; :func:`format_table` gives mean ± std over seeds,
:func:`plot_sweep` draws accuracy against :math:`\alpha - \beta` with the seed spread, like GCA's
poster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..engine.rundir import SUMMARY
from ..plots import legend_outside, pm, spread_caption
from .config import Config
from .trainer import EVAL_FILE

__all__ = [
    "DELTAS",
    "METHODS",
    "METRICS",
    "parse_method",
    "method_config",
    "method_name",
    "record",
    "info",
    "format_table",
    "plot_sweep",
]

#: the alpha - beta values of the default sweep
DELTAS = (-0.5, -0.25, 0.0, 0.25, 0.5)
#: the losses swept (the reference is ``infonce`` with the identity target)
SWEPT = ("gca-ince", "gca-uot")
METHODS = ("infonce", *(f"{loss}@{d:+.2f}" for loss in SWEPT for d in DELTAS))
#: the metrics of the table and plot: (key, label)
METRICS = (
    ("knn", "class kNN"),
    ("linear", "class linear"),
    ("domain_knn", "domain kNN"),
    ("domain", "domain linear"),
    ("lodo", "leave-one-domain-out"),
)


def parse_method(method: str) -> tuple[str, float | None]:
    """``"gca-uot@-0.25"`` -> ``("gca-uot", -0.25)``; ``"infonce"`` -> ``("infonce", None)``."""
    from ...losses import available

    loss, sep, tail = method.partition("@")
    if loss not in available():
        raise ValueError(
            f"methods: unknown loss {loss!r} in {method!r}; expected <loss> or "
            f"<loss>@<alpha-beta> with a loss from: {', '.join(available())}"
        )
    if not sep:
        return loss, None
    try:
        delta = float(tail)
    except ValueError:
        raise ValueError(
            f"methods: expected <loss>@<alpha-beta> with a number after '@', got {method!r}"
        ) from None
    if not math.isfinite(delta):
        raise ValueError(f"methods: expected a finite alpha-beta, got {method!r}")
    return loss, delta


def method_config(
    cfg: Config,
    method: str,
    shared: Mapping[str, Any],
    per_loss: Mapping[str, Mapping[str, Any]],
) -> Config:
    """``cfg`` set up for ``method`` (its loss, loss parameters and target)."""
    loss, delta = parse_method(method)
    cfg.loss.name = loss
    cfg.loss.params = {**shared, **per_loss.get(loss, {})}
    d = 0.0 if delta is None else delta
    cfg.target.alpha, cfg.target.beta = max(d, 0.0), max(-d, 0.0)
    return cfg


def method_name(cfg: Config) -> str:
    """The method of a run's config (the inverse of :func:`method_config`)."""
    t = cfg.target
    if not (t.alpha or t.beta):
        return cfg.loss.name
    return f"{cfg.loss.name}@{t.alpha - t.beta:+.2f}"


def record(run_dir: str | Path) -> dict[str, float]:
    """A finished run's numbers: its probes (``eval.json``) and its speed (``summary.json``)."""
    run_dir = Path(run_dir)
    ev = json.loads((run_dir / EVAL_FILE).read_text())
    summary = json.loads((run_dir / SUMMARY).read_text())
    out = {k: ev[k] for k, _ in METRICS}
    out.update({f"lodo_{dom}": v for dom, v in ev["lodo_per_domain"].items()})
    out["seconds_per_epoch"] = summary.get("seconds_per_epoch")
    out["train_seconds"] = summary.get("train_seconds")
    return out


def info(cfg: Config, data: Any) -> dict[str, Any]:
    """What the table says about the setting."""
    return {
        "data": repr(data),
        "domains": list(data.domains),
        "arch": cfg.model.arch,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "scale": cfg.target.scale,
        "knn_k": cfg.eval.knn_k,
        "linear_epochs": cfg.eval.linear_epochs,
        "device": cfg.train.device,
    }


def _delta(method: str) -> float | None:
    return parse_method(method)[1]


def format_table(results: Mapping[str, Any]) -> str:
    """A Markdown table: method, alpha - beta, every metric as mean ± std (%) over seeds (the
    value alone over one seed)."""
    inf = results.get("info", {})
    head = (
        f"{inf.get('data', '')}; {inf.get('arch')}, {inf.get('epochs')} epochs, batch "
        f"{inf.get('batch_size')}, target scale {inf.get('scale')}; probes on the frozen "
        f"backbone (kNN k={inf.get('knn_k')}, linear {inf.get('linear_epochs')} epochs, final); "
        + spread_caption(max((len(r["seeds"]) for r in results["methods"].values()), default=0))
    )
    cols = " | ".join(f"{label} (%)" for _, label in METRICS)
    lines = [
        head,
        "",
        f"| loss | α − β | seeds | {cols} |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for m, row in results["methods"].items():
        loss, delta = parse_method(m)
        cells = []
        for k, _ in METRICS:
            st = row["metrics"].get(k)
            n = len(row["seeds"])
            cells.append("n/a" if st is None else pm(st["mean"], st["std"], n, 1, 100))
        dtxt = "identity" if delta is None else f"{delta:+.2f}"
        lines.append(f"| {loss} | {dtxt} | {len(row['seeds'])} | {' | '.join(cells)} |")
    chance = inf.get("domains")
    if chance:
        lines += ["", f"Domain accuracy at chance: {100 / len(chance):.1f}%."]
    return "\n".join(lines)


def plot_sweep(results: Mapping[str, Any], out: Path) -> list[Path]:
    """``sweep.png``: one panel per swept loss, accuracy (%) against alpha - beta for every
    metric, mean over seeds with a ± std band and each seed as a dot; dashed lines: the
    identity-target losses (InfoNCE), mean over seeds."""
    from ..compare import pyplot

    plt = pyplot()
    methods = results["methods"]
    swept: dict[str, list[tuple[float, str]]] = {}
    refs = []
    for m in methods:
        loss, delta = parse_method(m)
        if delta is None:
            refs.append(m)
        else:
            swept.setdefault(loss, []).append((delta, m))
    panels = sorted(swept) or ["(none)"]
    n_seeds = max((len(v["seeds"]) for v in methods.values()), default=0)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1.6, 4.2), squeeze=False)
    colors = {k: f"C{i}" for i, (k, _) in enumerate(METRICS)}
    for ax, loss in zip(axes[0], panels, strict=True):
        pts = sorted(swept.get(loss, []))
        for k, label in METRICS:
            xs, mean, lo, hi = [], [], [], []
            for delta, m in pts:
                st = methods[m]["metrics"].get(k)
                if st is None or st["mean"] != st["mean"]:
                    continue
                xs.append(delta)
                mean.append(100 * st["mean"])
                lo.append(100 * (st["mean"] - st["std"]))
                hi.append(100 * (st["mean"] + st["std"]))
                seeds = [100 * v for v in st["per_seed"] if v is not None]
                ax.scatter([delta] * len(seeds), seeds, s=9, color=colors[k], alpha=0.5)
            if xs:
                ax.plot(xs, mean, marker="o", color=colors[k], label=label)
                if n_seeds > 1:  # one seed: no spread to draw
                    ax.fill_between(xs, lo, hi, color=colors[k], alpha=0.15)
            for r in refs:
                st = methods[r]["metrics"].get(k)
                if st is not None and st["mean"] == st["mean"]:
                    ax.axhline(100 * st["mean"], color=colors[k], ls="--", lw=1, alpha=0.7)
        chance = results.get("info", {}).get("domains")
        if chance:
            ax.axhline(100 / len(chance), color="grey", ls=":", lw=1, label="domain chance")
        ax.set_title(f"{loss} with the domain-block target", fontsize=10)
        ax.set_xlabel("α − β  (same-domain minus cross-domain weight)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    legend_outside(axes[0][-1])
    ref_txt = f"; dashed: {', '.join(refs)} (identity target)" if refs else ""
    fig.suptitle(f"{spread_caption(n_seeds)}, dots: seeds{ref_txt}", fontsize=9)
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
