r"""Top-k ranking metrics over all items, vectorised in user blocks on the model's device.

For each evaluated user :math:`u` the candidates are every item that is not excluded (the
user's training ratings, and items outside the evaluated set, e.g. the cold or the warm ones);
the model's scores are ranked, and with :math:`h_j \in \{0, 1\}` the relevance of the item at
rank :math:`j = 1..k` and :math:`R_u` the number of relevant test items of the user:

* Recall@k :math:`= \sum_{j \le k} h_j / R_u`;
* nDCG@k :math:`= \sum_{j \le k} h_j / \log_2(j+1) \,\big/\, \sum_{j \le \min(k, R_u)}
  1/\log_2(j+1)` (binary gains; equals scikit-learn's ``ndcg_score`` over the candidates);
* HitRatio@k :math:`= \mathbb 1[\sum_{j \le k} h_j > 0]`;
* MAP@k: :math:`\mathrm{AP@k} = \frac{1}{\min(k, R_u)} \sum_{j \le k} h_j\, \mathrm{P@j}` with
  :math:`\mathrm{P@j} = \frac1j \sum_{i \le j} h_i`.

Averaging (``users``): ``"positive"`` (default) averages over users with at least one relevant
test item; ``"all"`` is the convention of DMM's recommender code: every user with a test rating
counts, those without a relevant item with 0.

Each block computes the (b, n_items) scores, masks the excluded items to :math:`-\infty`, takes
``torch.topk`` of the largest k and gathers relevance from a dense (b, n_items) mask: no Python
loop over users.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["KS", "METRICS", "USER_CONVENTIONS", "rank_metrics", "metric_names", "CSR"]

KS = (1, 5, 10, 20)
METRICS = ("recall", "ndcg", "hr", "map")
USER_CONVENTIONS = ("positive", "all")


def metric_names(ks: Sequence[int] = KS) -> list[str]:
    return [f"{m}@{k}" for m in METRICS for k in ks]


class CSR:
    """Per-user item lists (user-sorted pairs) with offsets, for block look-ups.

    Args:
        user, item: (P,) pair arrays (any order); n_users, n_items: bounds, checked.
    """

    def __init__(
        self, user: np.ndarray, item: np.ndarray, n_users: int, n_items: int, *, name: str
    ) -> None:
        user = np.asarray(user, dtype=np.int64)
        item = np.asarray(item, dtype=np.int64)
        if user.shape != item.shape or user.ndim != 1:
            raise ValueError(f"{name}: expected two 1-D arrays of the same length")
        for what, x, n in (("user", user, n_users), ("item", item, n_items)):
            if len(x) and (x.min() < 0 or x.max() >= n):
                bad = x[(x < 0) | (x >= n)][0]
                raise ValueError(f"{name}: {what} id {int(bad)} out of range, expected 0..{n - 1}")
        order = np.argsort(user, kind="stable")
        self.item: torch.Tensor = torch.from_numpy(item[order])
        self.indptr: torch.Tensor = torch.from_numpy(
            np.r_[0, np.cumsum(np.bincount(user, minlength=n_users))].astype(np.int64)
        )
        self.n_users: int = n_users
        self.n_items: int = n_items

    def counts(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def block_mask(self, users: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(b, n_items) bool: True where (users[r], item) is a listed pair."""
        start, stop = self.indptr[users], self.indptr[users + 1]
        lens = stop - start
        rows = torch.repeat_interleave(torch.arange(len(users)), lens)
        offs = torch.arange(int(lens.sum())) - torch.repeat_interleave(
            torch.cumsum(lens, 0) - lens, lens
        )
        cols = self.item[torch.repeat_interleave(start, lens) + offs]
        mask = torch.zeros(len(users), self.n_items, dtype=torch.bool, device=device)
        mask[rows.to(device), cols.to(device)] = True
        return mask


def _check_ks(ks: Sequence[int], n_candidates: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks: expected integers >= 1, got {ks!r}")
    if max(ks) > n_candidates:
        raise ValueError(
            f"k: {max(ks)} is larger than the number of candidate items ({n_candidates})"
        )
    return ks


@torch.no_grad()
def rank_metrics(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    relevant: tuple[np.ndarray, np.ndarray],
    exclude: tuple[np.ndarray, np.ndarray],
    n_users: int,
    n_items: int,
    *,
    ks: Sequence[int] = KS,
    users: str = "positive",
    eval_users: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    block: int = 1024,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Recall, nDCG, HitRatio and MAP at every k of ``ks`` (see the module docstring).

    Args:
        score_fn: maps (b,) user indices (int64, on ``device``) to (b, n_items) scores, larger
            = more relevant.
        relevant: (users, items) relevant test pairs.
        exclude: (users, items) pairs never ranked (the training ratings).
        n_users, n_items: sizes.
        ks: cut-offs (default 1, 5, 10, 20); each must be <= the number of candidate items.
        users: ``"positive"`` (average over users with a relevant item) or ``"all"`` (every user
            of ``eval_users``, 0 for those without a relevant item; DMM's convention).
        eval_users: the users of the ``"all"`` convention (default: users with a relevant item).
        candidates: (n_items,) bool, items that may be recommended (default all).
        block: users per block (memory: block x n_items scores).
        device: where the scores are computed.
    Returns:
        ``{"recall@10": ..., ..., "users": number of users averaged}``.
    """
    if users not in USER_CONVENTIONS:
        raise ValueError(f"users: expected one of {', '.join(USER_CONVENTIONS)}, got {users!r}")
    if block < 1:
        raise ValueError(f"block: expected an integer >= 1, got {block!r}")
    device = torch.device(device)
    cand = None
    n_cand = n_items
    if candidates is not None:
        candidates = np.asarray(candidates, dtype=bool)
        if candidates.shape != (n_items,):
            raise ValueError(
                f"candidates: expected a bool mask of shape ({n_items},), got {candidates.shape}"
            )
        n_cand = int(candidates.sum())
        cand = torch.from_numpy(candidates).to(device)
    ks = _check_ks(ks, n_cand)
    rel = CSR(*relevant, n_users, n_items, name="relevant")
    exc = CSR(*exclude, n_users, n_items, name="exclude")
    n_rel = rel.counts()
    if int(n_rel.sum()) == 0:
        raise ValueError("relevant: the test set is empty (no relevant user-item pair)")
    pos_users = torch.nonzero(n_rel > 0).flatten()
    if users == "all" and eval_users is not None:
        ev = torch.as_tensor(np.asarray(eval_users, dtype=np.int64))
        all_users = torch.unique(torch.cat([ev, pos_users]))
    else:
        all_users = pos_users
    kmax = max(ks)
    sums = {name: 0.0 for name in metric_names(ks)}
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64, device=device))
    ideal = torch.cumsum(disc, 0)
    ranks = torch.arange(1, kmax + 1, dtype=torch.float64, device=device)
    for lo in range(0, len(pos_users), block):
        ub = pos_users[lo : lo + block]
        s = score_fn(ub.to(device)).float()
        if s.shape != (len(ub), n_items):
            raise ValueError(
                f"score_fn: expected scores of shape ({len(ub)}, {n_items}), got {tuple(s.shape)}"
            )
        s = s.masked_fill(exc.block_mask(ub, device), -math.inf)
        if cand is not None:
            s = s.masked_fill(~cand, -math.inf)
        top_val, top = torch.topk(s, kmax, dim=1)
        r = rel.block_mask(ub, device)
        hits = r.gather(1, top) & torch.isfinite(top_val)
        h = hits.double()
        nr = n_rel[ub].to(device).double()
        cum = torch.cumsum(h, 1)
        dcg = torch.cumsum(h * disc, 1)
        ap = torch.cumsum(h * cum / ranks, 1)
        for k in ks:
            denom = torch.clamp(nr, max=k)
            sums[f"recall@{k}"] += float((cum[:, k - 1] / nr).sum())
            idcg = ideal[(denom - 1).long()]
            sums[f"ndcg@{k}"] += float((dcg[:, k - 1] / idcg).sum())
            sums[f"hr@{k}"] += float((cum[:, k - 1] > 0).double().sum())
            sums[f"map@{k}"] += float((ap[:, k - 1] / denom).sum())
    n = len(all_users)
    out = {name: v / n for name, v in sums.items()}
    out["users"] = n
    return out
