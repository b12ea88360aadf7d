"""Plot and table helpers every pipeline's comparison shares, so that a reader can trust them.

* the spread over seeds is shown only where there is one: with one seed a table cell is the
  value alone (:func:`pm`: no "± 0.00"), a caption says "one seed" (:func:`spread_caption`)
  and bars get no error bars (:func:`error_bars`: no zero-size bars);
* epoch axes have integer ticks (:func:`integer_epochs`);
* legends sit outside the data (:func:`legend_outside`).

Plots use matplotlib on the Agg backend (:func:`otcl.pipelines.compare.pyplot`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["pm", "spread_caption", "error_bars", "integer_epochs", "legend_outside"]


def pm(mean: float, std: float, seeds: int, digits: int = 2, scale: float = 1.0) -> str:
    """``"12.34 ± 0.56"`` over several seeds; ``"12.34"`` over one (a spread of one value is
    not a measurement); ``"n/a"`` for NaN. ``scale`` multiplies both (100 for percent)."""
    if mean is None or math.isnan(mean):
        return "n/a"
    text = f"{scale * mean:.{digits}f}"
    if seeds > 1 and std is not None and not math.isnan(std):
        text += f" ± {scale * std:.{digits}f}"
    return text


def spread_caption(seeds: int) -> str:
    """``"mean ± std over 3 seeds"``, or ``"one seed (no spread)"``."""
    if seeds <= 1:
        return "one seed (no spread)"
    return f"mean ± std over {seeds} seeds"


def error_bars(stds: Sequence[float], seeds: int) -> list[float] | None:
    """The ``yerr`` of a bar plot: the seed std over several seeds, None (no bars) over one."""
    return None if seeds <= 1 else [0.0 if math.isnan(s) else s for s in stds]


def integer_epochs(ax: Any, label: str = "epoch") -> None:
    """Label ``ax``'s x axis as epochs, with integer ticks only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def legend_outside(ax: Any, **kw: Any) -> Any:
    """The legend of ``ax`` to the right of its axes (never over the data); call
    ``fig.tight_layout()`` after it so the figure makes room."""
    kw.setdefault("fontsize", 8)
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)
