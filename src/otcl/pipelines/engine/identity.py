"""What a run *is*: its configuration, less the settings of where and how it executes.

One list decides it for every reader: a trainer's ``volatile`` settings
(``EpochTrainer.volatile``: :data:`VOLATILE` plus a pipeline's own). An entry names one setting
(``"train.device"``) or a whole section (``"eval"``). Such a setting may differ

* when a run is resumed (``--resume``: :func:`check_resume`),
* when a comparison meets a run it made before (``compare``: reused or resumed),
* when a time-budgeted benchmark meets its saved protocol,

and every other difference is refused by all three.

Some of them do not change the training but do change the numbers a run reports (an image
run's ``eval`` section): a trainer also names them in ``measures``. A resume measures the run
again at its end, so it may change them; a comparison and a benchmark keep numbers already
measured, so they refuse a difference there (:func:`unmeasured`: the entries they ignore).

Example:
    >>> saved = {"train": {"seed": 0, "device": "cpu"}, "eval": {"k": 20}}
    >>> now = {"train": {"seed": 0, "device": "cuda"}, "eval": {"k": 50}}
    >>> changed(saved, now, ("train.device",))
    ['eval.k']
    >>> changed(saved, now, ("train.device", "eval"))
    []
    >>> comparable(now, ("train.device", "eval"))
    {'train': {'seed': 0}}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "VOLATILE",
    "flat",
    "covered",
    "changed",
    "comparable",
    "unmeasured",
    "check_resume",
]

#: the settings of every run that may change without changing what the run is: where it runs
#: and how it reports and checkpoints (a pipeline adds its own: ``EpochTrainer.volatile``)
VOLATILE: tuple[str, ...] = (
    "train.out",
    "train.progress",
    "train.device",
    "train.threads",
    "train.log_every",
    "train.checkpoint_every",
    "train.compile",
    "train.deterministic",
    "train.log",
)


def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def covered(key: str, entries: Iterable[str]) -> bool:
    """Whether the flat setting ``key`` is one of ``entries`` or inside a section of them."""
    return any(key == e or key.startswith(e + ".") for e in entries)


def changed(saved: Mapping[str, Any], now: Mapping[str, Any], volatile: Iterable[str]) -> list[str]:
    """The flat settings (sorted) in which the config dicts ``saved`` and ``now`` differ,
    outside ``volatile``."""
    volatile = tuple(volatile)
    a, b = flat(saved), flat(now)
    return sorted(
        k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not covered(k, volatile)
    )


def comparable(cfg: Mapping[str, Any], volatile: Iterable[str] = VOLATILE) -> dict[str, Any]:
    """A copy of the config dict ``cfg`` without the ``volatile`` settings and sections: two
    configs describe the same run exactly when these are equal."""
    d = copy.deepcopy(dict(cfg))
    for key in volatile:
        *path, name = key.split(".")
        node: Any = d
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return d


def unmeasured(volatile: Iterable[str], measures: Iterable[str]) -> tuple[str, ...]:
    """The entries of ``volatile`` that change neither a run nor its reported numbers (those
    not in ``measures``): what a store of results may ignore."""
    measures = tuple(measures)
    return tuple(v for v in volatile if v not in measures)


def check_resume(
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    volatile: Iterable[str],
    *,
    extend: bool,
    run_dir: str,
    log: Callable[[str], None],
) -> None:
    """Refuse a resume whose settings ``now`` would change what the saved run is (``saved``:
    its config dict, resolved as today). ``train.epochs`` only grows, and only with ``extend``
    (then logged).

    Raises:
        ValueError: naming every changed setting with its old and new value.
    """
    diffs = changed(saved, now, volatile)
    old, new = flat(saved).get("train.epochs"), flat(now).get("train.epochs")
    if extend and not (isinstance(old, int) and isinstance(new, int) and new > old):
        raise ValueError(
            f"--extend: expected --epochs larger than the run's {old} epochs, got {new}"
        )
    if "train.epochs" in diffs and extend:
        diffs.remove("train.epochs")
        log(
            f"{run_dir}: extending the run from {old} to {new} epochs; the learning-rate "
            "schedule is recomputed for the new length (recorded in config.yaml)"
        )
    if diffs == ["train.epochs"]:
        raise ValueError(
            f"train.epochs: the run in {run_dir!r} is set up for {old} epochs, got "
            f"{new}; to train it longer pass --extend with --epochs N (N > {old})"
        )
    if diffs:
        a, b = flat(saved), flat(now)
        text = "; ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in diffs)
        raise ValueError(
            f"resume: these settings differ from the run in {run_dir!r} and would "
            f"change what it is: {text}; drop them, or start a new run with another --out"
        )
