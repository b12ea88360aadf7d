"""Plots and tables a reader can trust: no spread with one seed, integer epoch ticks, legends
outside the data, labelled axes (the shared helpers and every pipeline's table/plot hooks)."""

from __future__ import annotations

import json

import pytest

from otcl.pipelines import plots
from otcl.pipelines.engine.rundir import METRICS

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures a plot hook made, kept open (its plt.close is disabled) and drawn."""
    monkeypatch.setattr(plt, "close", lambda *a, **k: None)
    before = set(plt.get_fignums())

    def made():
        figs = [plt.figure(n) for n in plt.get_fignums() if n not in before]
        for f in figs:
            f.canvas.draw()
        return figs

    yield made
    monkeypatch.undo()
    for n in plt.get_fignums():
        if n not in before:
            plt.close(n)


def stat(mean: float, std: float, seeds: int) -> dict:
    return {"mean": mean, "std": std, "per_seed": [mean + (i - 0.5) * std for i in range(seeds)]}


def _legends_outside(fig) -> int:
    n = 0
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            assert leg.get_window_extent().x0 >= ax.get_window_extent().x1 - 1, ax.get_title()
            n += 1
    return n


def _bars(ax) -> list:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _error_bars(ax) -> int:
    """The bar groups of ``ax`` that carry error bars."""
    return sum(c.errorbar is not None for c in _bars(ax))


# -- the helpers -----------------------------------------------------------------------------
def test_pm_shows_a_spread_only_over_several_seeds():
    assert plots.pm(0.9123, 0.0, 1, 2, 100) == "91.23"
    assert plots.pm(0.9123, 0.0123, 2, 2, 100) == "91.23 ± 1.23"
    assert plots.pm(float("nan"), 0.1, 3) == "n/a"
    assert plots.spread_caption(1) == "one seed (no spread)"
    assert plots.spread_caption(3) == "mean ± std over 3 seeds"
    assert plots.error_bars([0.0, 0.0], 1) is None and plots.error_bars([0.1], 2) == [0.1]


def test_integer_epochs_sets_an_integer_locator():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.5, 0.4, 0.3])
    plots.integer_epochs(ax)
    loc = ax.xaxis.get_major_locator()
    assert isinstance(loc, MaxNLocator) and loc._integer
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert ax.get_xlabel() == "epoch"
    plt.close(fig)


# -- the image pipeline ----------------------------------------------------------------------
def _ssl_results(tmp_path, seeds: int) -> dict:
    methods, runs = {}, []
    for j, name in enumerate(["infonce", "gca-uot", "gca-rince"]):
        methods[name] = {
            "seeds": list(range(seeds)),
            "metrics": {
                "knn": stat(0.8 + 0.01 * j, 0.01, seeds),
                "linear": stat(0.85, 0.02, seeds),
                "seconds_per_epoch": stat(1.0, 0.1, seeds),
            },
        }
        for s in range(seeds):
            d = tmp_path / name / f"seed{s}"
            d.mkdir(parents=True)
            recs = [{"epoch": e, "loss": 5.0 - e + j, "knn": 0.5 + 0.1 * e} for e in (1, 2, 3)]
            (d / METRICS).write_text("".join(json.dumps(r) + "\n" for r in recs))
            runs.append({"method": name, "seed": s, "dir": str(d)})
    info = {"dataset": "digits", "arch": "small-cnn", "epochs": 3, "batch_size": 32,
            "knn_k": 20, "knn_t": 0.1, "linear_epochs": 3, "device": "cpu"}  # fmt: skip
    return {"methods": methods, "runs": runs, "info": info}


@pytest.mark.parametrize("seeds", [1, 2])
def test_ssl_table_and_plots(tmp_path, figures, seeds):
    from otcl.pipelines.ssl.compare import format_table, plot_results

    res = _ssl_results(tmp_path, seeds)
    table = format_table(res)
    assert ("±" in table) == (seeds > 1)
    if seeds == 1:
        assert "| infonce | 1 | 80.00 | 85.00 |" in table
    paths = plot_results(res, tmp_path)
    assert [p.name for p in paths] == ["accuracy.png", "curves.png"]
    acc, curves = figures()
    (ax,) = acc.axes
    assert _error_bars(ax) == (2 if seeds > 1 else 0)  # kNN and linear bars
    assert _legends_outside(acc) == 1
    assert ("±" in ax.get_title()) == (seeds > 1)
    epoch_axes = [a for a in curves.axes if a.get_xlabel() == "epoch" or a.get_title()]
    loss_panels = [a for a in curves.axes if a.get_title() in res["methods"]]
    assert len(loss_panels) == 3  # one panel per method: curves never hide each other
    for a in epoch_axes:
        loc = a.xaxis.get_major_locator()
        assert isinstance(loc, MaxNLocator) and loc._integer, a.get_title()
    assert _legends_outside(curves) == 1


# -- recsys ------------------------------------------------------------------------------------
def _recsys_results(seeds: int) -> dict:
    from otcl.pipelines.recsys.compare import TABLE_METRICS

    methods = {}
    for j, name in enumerate(["pop", "two-tower", "two-tower+dmm"]):
        m = {f"warm/{c}": stat(0.1 + 0.01 * j, 0.005, seeds) for c in TABLE_METRICS}
        m["train_seconds"] = stat(2.0, 0.1, seeds)
        if name != "pop":
            for v in ("no-title", "no-genres", "no-text-genres", "cold"):
                m[f"{v}/ndcg@10"] = stat(0.05, 0.004, seeds)
        methods[name] = {"seeds": list(range(seeds)), "metrics": m}
    d = {"delta": 0.01, "delta_std": 0.002, "relative": 0.1}
    deltas = {"two-tower+dmm": {"metrics": {"warm/recall@10": d, "warm/ndcg@10": d}}}
    return {"methods": methods, "deltas": deltas, "info": {"dataset": "ml-100k", "k": 10}}


@pytest.mark.parametrize("seeds", [1, 2])
def test_recsys_table_and_plot(tmp_path, figures, seeds):
    from otcl.pipelines.recsys.compare import format_table, plot_results

    res = _recsys_results(seeds)
    assert ("±" in format_table(res)) == (seeds > 1)
    plot_results(res, tmp_path)
    (fig,) = figures()
    axes = [a for a in fig.axes if a.get_title()]
    assert len(axes) == 4 and any("cold" in a.get_title() for a in axes)
    for a in axes:
        assert a.get_xlabel() and a.get_ylabel(), a.get_title()
        assert _error_bars(a) == (len(_bars(a)) if seeds > 1 else 0), a.get_title()
    assert _legends_outside(fig) == 1  # the feature-removal panel's


# -- multimodal --------------------------------------------------------------------------------
def _mm_results(seeds: int) -> dict:
    methods = {}
    for name in ("infonce", "gca-uot"):
        m = {k: stat(0.5, 0.02, seeds) for k in ("full_accuracy", "missing_accuracy", "R@1",
             "R@10", "medR", "seconds_per_epoch", "pairwise/R@1", "pairwise/R@5",
             "pairwise/R@10")}  # fmt: skip
        for sub in ("a", "b", "a+b"):
            m[f"subset/{sub}/accuracy"] = stat(0.6, 0.03, seeds)
        methods[name] = {"seeds": list(range(seeds)), "metrics": m}
    info = {"data": "synthetic", "dataset": "synthetic", "objective": "joint", "epochs": 2,
            "batch_size": 16, "probe": "knn", "missing": "drop", "device": "cpu",
            "primary_metric": "accuracy"}  # fmt: skip
    return {"methods": methods, "info": info}


@pytest.mark.parametrize("seeds", [1, 2])
def test_multimodal_tables_and_plots(tmp_path, figures, seeds):
    from otcl.pipelines.multimodal.compare import format_tables, plot_results

    res = _mm_results(seeds)
    assert ("±" in format_tables(res)) == (seeds > 1)
    plot_results(res, tmp_path)
    figs = figures()
    assert len(figs) == 2
    for fig in figs:
        (ax,) = fig.axes
        assert _error_bars(ax) == (len(_bars(ax)) if seeds > 1 else 0)
        assert _legends_outside(fig) == 1


# -- domains -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", [1, 2])
def test_domains_table_and_sweep(tmp_path, figures, seeds):
    from otcl.pipelines.domains.compare import METRICS, format_table, plot_sweep

    methods = {
        m: {"seeds": list(range(seeds)), "metrics": {k: stat(0.6, 0.02, seeds) for k, _ in METRICS}}
        for m in ("infonce", "gca-uot@-0.5", "gca-uot@0", "gca-uot@0.5")
    }
    res = {"methods": methods, "info": {"domains": ["a", "b"], "epochs": 2}}
    assert ("±" in format_table(res)) == (seeds > 1)
    plot_sweep(res, tmp_path)
    (fig,) = figures()
    (ax,) = [a for a in fig.axes if a.get_title()]
    bands = [c for c in ax.collections if "Poly" in type(c).__name__]  # fill_between
    assert bool(bands) == (seeds > 1)  # a ± std band only where there is a spread
    assert _legends_outside(fig) == 1
