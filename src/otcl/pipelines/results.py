"""The one ``results.json`` schema of every comparison (method x seed x metric).

::

    {
      "schema": "otcl-results/1",
      "pipeline": "ssl",
      "methods": {                                   # in table order
        "infonce": {
          "seeds": [0, 1, 2],
          "metrics": {"knn": {"mean": m, "std": s, "n": 3, "per_seed": [a, b, c]}, ...}
        }, ...
      },
      "runs": [{"method": "infonce", "seed": 0, "dir": "...", "metrics": {"knn": a, ...}}, ...],
      "deltas": {"infonce+dmm": {"base": "infonce",
                                 "metrics": {"knn": {"delta", "delta_std", "relative",
                                                     "per_seed"}}}},
      "skipped": {"implicit-als": "the optional package implicit is not installed"},
      "info": {...},                                 # the pipeline's setting (dataset, device)
      "config": {...},                               # the shared (resolved) configuration
      "versions": {"otcl": "...", "torch": "...", "python": "..."},
      "date": "...", "wall_seconds": 12.3
    }

``std`` is the sample standard deviation over seeds (n - 1; 0 for one seed), NaN values left out
(:func:`mean_std`); ``per_seed`` follows ``seeds``. A delta pairs ``<m>+dmm`` with ``<m>``
seed by seed (:func:`paired_delta`) for the spec's ``delta_metrics``.

Example:
    >>> mean_std([0.5, 0.7, None, float("nan")])
    (0.6, 0.14142135623730948)
    >>> paired_delta([0.5, 0.6], [0.55, 0.7])["per_seed"]
    [0.050000000000000044, 0.09999999999999998]
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .spec import Pipeline, split_dmm

__all__ = [
    "RESULTS",
    "SCHEMA",
    "aggregate",
    "per_seed",
    "mean_std",
    "seed_stats",
    "paired_delta",
]

RESULTS = "results.json"
SCHEMA = "otcl-results/1"


# -- statistics over seeds ----------------------------------------------------------
def mean_std(xs: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of ``xs``, None and NaN left out; the std of
    one value is 0, and both are NaN without any value."""
    v = [x for x in xs if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def seed_stats(xs: Iterable[float | None]) -> dict[str, float]:
    """:func:`mean_std` as ``{"mean": ..., "std": ...}``."""
    mean, std = mean_std(xs)
    return {"mean": mean, "std": std}


def paired_delta(base: Sequence[float | None], other: Sequence[float | None]) -> dict[str, Any]:
    r"""The change from ``base`` to ``other``, paired by seed (position).

    Returns:
        ``per_seed``: :math:`d_s = o_s - b_s` for the seeds where both exist; ``delta`` and
        ``delta_std``: :func:`mean_std` of them (the spread of the paired differences, smaller
        than that of either side when seeds share their data); ``relative``: ``delta`` over the
        mean of ``base`` (NaN when that is 0).
    """
    diffs = [o - b for b, o in zip(base, other, strict=False) if b is not None and o is not None]
    delta, std = mean_std(diffs)
    ref = mean_std(base)[0]
    return {
        "delta": delta,
        "delta_std": std,
        "relative": delta / ref if ref else float("nan"),
        "per_seed": diffs,
    }


def per_seed(results: Mapping[str, Any], method: str, metric: str) -> list[float | None]:
    """The values of ``metric`` of ``method``, one per seed (None where a run lacks it)."""
    st = results["methods"][method]["metrics"].get(metric)
    return list(st["per_seed"]) if st else [None] * len(results["methods"][method]["seeds"])


def aggregate(
    spec: Pipeline,
    cfg: Any,
    methods: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    skipped: Mapping[str, str],
    info: Mapping[str, Any],
    delta_metrics: Sequence[str] = (),
) -> dict[str, Any]:
    """``results.json`` of the runs ``records`` (``{"method", "seed", "dir", "metrics"}``)."""
    import torch

    from .. import __version__

    table: dict[str, Any] = {}
    for m in methods:
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"])
        names: list[str] = []
        for r in rs:
            names += [k for k in r["metrics"] if k not in names]
        stats = {}
        for k in names:
            vals = [_number(r["metrics"].get(k)) for r in rs]
            mean, std = mean_std(vals)
            n = sum(v is not None and v == v for v in vals)
            stats[k] = {"mean": mean, "std": std, "n": n, "per_seed": vals}
        table[m] = {"seeds": [r["seed"] for r in rs], "metrics": stats}
    deltas: dict[str, Any] = {}
    for m in methods:
        base, dmm = split_dmm(m)
        if not dmm or base not in table:
            continue
        common = sorted(set(table[m]["seeds"]) & set(table[base]["seeds"]))
        if not common:
            continue
        d = {}
        for k in delta_metrics:
            if k in table[m]["metrics"] and k in table[base]["metrics"]:
                d[k] = paired_delta(_at(table, base, k, common), _at(table, m, k, common))
        deltas[m] = {"base": base, "seeds": common, "metrics": d}
    return {
        "schema": SCHEMA,
        "pipeline": spec.name,
        "methods": table,
        "runs": [dict(r) for r in records],
        "deltas": deltas,
        "skipped": dict(skipped),
        "info": dict(info),
        "config": cfg.to_dict(),
        "versions": {
            "otcl": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _at(table: Mapping[str, Any], m: str, k: str, seeds: Sequence[int]) -> list[float | None]:
    st = table[m]
    return [st["metrics"][k]["per_seed"][st["seeds"].index(s)] for s in seeds]
