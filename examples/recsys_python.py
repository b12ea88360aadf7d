"""Recommendation from Python: a ratings CSV, CML with and without DMM, ranking metrics.

Shows the recommendation pipeline through the Python API: a ``RecsysConfig`` read from a
ratings file (``user_id,item_id,rating[,timestamp]``; here a small generated one with taste
groups: each user rates the items of its group high), ``otcl.pipelines.train("recsys",
cfg)`` for collaborative metric learning (CML) with and without DMM, and each run's ranking
metrics over all items (NDCG and recall at k of the held-out positives) from its ``Run``.
Real data: ``cfg.data.data_dir`` a MovieLens folder (``dataset = "ml-100k"``).

    python examples/recsys_python.py           # ~1 minute on a CPU
    python examples/recsys_python.py --tiny    # what the tests run
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import otcl.pipelines
from otcl.pipelines.recsys.config import RecsysConfig


def write_ratings(path: Path, users: int, items: int, groups: int, seed: int = 0) -> Path:
    """A ratings CSV: users and items fall in ``groups`` taste groups; a user rates 5 items of
    its own group (rating 4-5) and 2 others (rating 1-2)."""
    rng = np.random.default_rng(seed)
    rows = ["user_id,item_id,rating"]
    item_group = np.arange(items) % groups
    for u in range(users):
        own = rng.choice(np.flatnonzero(item_group == u % groups), 5, replace=False)
        other = rng.choice(np.flatnonzero(item_group != u % groups), 2, replace=False)
        rows += [f"u{u},i{i},{rng.integers(4, 6)}" for i in own]
        rows += [f"u{u},i{i},{rng.integers(1, 3)}" for i in other]
    path.write_text("\n".join(rows) + "\n")
    return path


def main(tiny: bool = False, out: str | None = None) -> dict[str, dict[str, float]]:
    out_dir = Path(out or tempfile.mkdtemp(prefix="otcl-example-"))
    ratings = write_ratings(out_dir / "ratings.csv", users=120, items=60, groups=4)
    results = {}
    for dmm in (False, True):
        cfg = RecsysConfig()
        cfg.data.dataset, cfg.data.data_dir = "csv", str(ratings)
        cfg.model.kind, cfg.model.dim = "cml", 16
        cfg.dmm.enabled = dmm
        cfg.train.epochs = 2 if tiny else 30
        cfg.train.batch_size, cfg.train.progress = 64, False
        cfg.eval.ks = (5, 10)
        # 5 positives a user, about 4 of them for training: hold one of those out for validation
        cfg.data.val_frac = 0.25
        run = otcl.pipelines.train("recsys", cfg, out=out_dir / ("cml+dmm" if dmm else "cml"))
        s = run.summary
        results[run.method] = {k: float(s[k]) for k in ("warm/ndcg@10", "warm/recall@10")}
        print(
            f"{run.method:8s}: NDCG@10 {s['warm/ndcg@10']:.3f}, recall@10 {s['warm/recall@10']:.3f}"
        )
    return results


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
