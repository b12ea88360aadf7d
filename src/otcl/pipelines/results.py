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
(:func:`otcl.pipelines.compare.mean_std`); ``per_seed`` follows ``seeds``. A delta pairs
``<m>+dmm`` with ``<m>`` seed by seed (:func:`otcl.pipelines.compare.paired_delta`) for the
spec's ``delta_metrics``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .compare import mean_std, paired_delta
from .spec import Pipeline, split_dmm

__all__ = ["RESULTS", "SCHEMA", "aggregate", "per_seed"]

RESULTS = "results.json"
SCHEMA = "otcl-results/1"


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
