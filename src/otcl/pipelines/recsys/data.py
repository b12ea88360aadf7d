r"""The splits and negatives of ``otcl recsys``, over the ratings that
:mod:`otcl.pipelines.sources.movielens` reads.

Splits (:func:`split`), all seeded and returning an immutable :class:`Split`:

* ``dmm`` (default; the protocol of DMM's recommender code): ratings >= ``threshold`` (4) are
  positives; a random 75/25 split over **all** ratings; the model trains on the positive training
  pairs; each user ranks every item without a training rating; relevant = test pairs rated >=
  ``threshold``.
* ``temporal``: per user, the latest positive rating (by timestamp, ties by position in the file)
  is the test item; every other rating of the user is training data. Users with fewer than two
  positives keep everything in training and are not evaluated.

Both carve a **validation split from the training positives only** (the test pairs are not
touched): ``dmm`` moves a seeded random fraction ``val_frac`` of each user's positive training
pairs (rounded; at least one training positive stays), ``temporal`` the second-to-last positive
of each user with at least three. Models are selected on it (:meth:`Split.validation`); the
validation pairs stay training ratings of the test ranking (excluded from it, as every other
rating the user gave before the test).

Either split can hold out a fraction of the items entirely (``cold_items``): their ratings are
removed from training and from the warm ranking, and kept as a cold-start test (users rank the
cold items only, from the items' features).

:class:`NegativeSampler` draws uniform negatives that exclude each user's positive training items.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..sources.ratings import Ratings

if TYPE_CHECKING:
    import torch

__all__ = ["SPLITS", "Split", "split", "NegativeSampler", "tail_items"]

SPLITS = ("dmm", "temporal")


@dataclass(frozen=True)
class Split:
    """One train/test split (index arrays; all int64).

    Attributes:
        protocol: ``dmm`` or ``temporal``.
        train_user, train_item: positive training pairs (what the models learn from).
        seen_user, seen_item: every training rating (excluded from the ranking).
        test_user, test_item: relevant test pairs (rated >= threshold) on warm items.
        test_users: users with at least one test rating on a warm item (the denominator of the
            ``users="all"`` convention).
        cold_items: items held out of training entirely (empty without ``cold_items``).
        cold_user, cold_item: relevant pairs on cold items.
        cold_users: users with at least one rating of a cold item.
        val_user, val_item: validation pairs, positive training ratings held out of
            ``train_*`` (still in ``seen_*``: the test ranking excludes them).
    """

    protocol: str
    n_users: int
    n_items: int
    train_user: np.ndarray
    train_item: np.ndarray
    seen_user: np.ndarray
    seen_item: np.ndarray
    test_user: np.ndarray
    test_item: np.ndarray
    test_users: np.ndarray
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_user: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_item: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_user: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_item: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def validation(self) -> Split:
        """The validation problem as a split: the validation pairs are the test pairs, the
        training ratings without them are the excluded (seen) ones; training pairs unchanged."""
        if len(self.val_user) == 0:
            raise ValueError("split: no validation pairs (every user has too few positives)")
        n = self.n_items
        val_keys = np.unique(self.val_user * n + self.val_item)
        seen_keys = self.seen_user * n + self.seen_item
        keep = ~np.isin(seen_keys, val_keys)
        return replace(
            self,
            seen_user=self.seen_user[keep],
            seen_item=self.seen_item[keep],
            test_user=self.val_user,
            test_item=self.val_item,
            test_users=_unique_users(self.val_user),
            cold_user=np.zeros(0, dtype=np.int64),
            cold_item=np.zeros(0, dtype=np.int64),
            cold_users=np.zeros(0, dtype=np.int64),
            val_user=np.zeros(0, dtype=np.int64),
            val_item=np.zeros(0, dtype=np.int64),
        )

    @property
    def warm_items(self) -> np.ndarray:
        """(n_items,) bool: items that are not held out."""
        mask = np.ones(self.n_items, dtype=bool)
        mask[self.cold_items] = False
        return mask

    def __repr__(self) -> str:
        return (
            f"Split({self.protocol}: {len(self.train_user):,} train positives, "
            f"{len(self.val_user):,} validation positives, {len(self.test_user):,} test positives, "
            f"{len(self.cold_items):,} cold items)"
        )


# -- splits ----------------------------------------------------------------------------------
def _unique_users(u: np.ndarray) -> np.ndarray:
    return np.unique(u).astype(np.int64)


def split(
    data: Ratings,
    protocol: str = "dmm",
    *,
    seed: int = 1000,
    test_frac: float = 0.25,
    threshold: float = 4.0,
    cold_items: float = 0.0,
    val_frac: float = 0.1,
) -> Split:
    """Train/test split of ``data`` (see the module docstring for the protocols).

    Args:
        protocol: ``dmm`` (random split over all ratings) or ``temporal`` (leave-last-out).
        seed: seed of the random split and of the cold-item draw (DMM's code: 1000).
        test_frac: test fraction of the ``dmm`` split (0.25).
        threshold: ratings >= threshold are positives (4).
        cold_items: fraction of items held out of training entirely, in [0, 1).
        val_frac: ``dmm``: the fraction of each user's positive training pairs held out for
            validation, in (0, 1) (0.1); ``temporal`` holds out the second-to-last positive.
    Returns:
        :class:`Split`.
    """
    if protocol not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {protocol!r}")
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac: expected a fraction in (0, 1), got {test_frac!r}")
    if not 0.0 <= cold_items < 1.0:
        raise ValueError(f"cold_items: expected a fraction in [0, 1), got {cold_items!r}")
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"val_frac: expected a fraction in (0, 1), got {val_frac!r}")
    rng = np.random.default_rng(seed)
    n_r = len(data.user)
    pos = data.rating >= threshold
    if protocol == "dmm":
        is_test = np.zeros(n_r, dtype=bool)
        is_test[rng.permutation(n_r)[: int(round(test_frac * n_r))]] = True
    else:
        if data.timestamp is None:
            raise ValueError("split: temporal needs timestamps; the ratings have none")
        is_test = np.zeros(n_r, dtype=bool)
        idx = np.flatnonzero(pos)
        # latest positive per user: sort by (user, time, position), take each user's last
        order = np.lexsort((idx, data.timestamp[idx], data.user[idx]))
        su = data.user[idx][order]
        last = np.flatnonzero(np.r_[su[1:] != su[:-1], True])
        first = np.r_[0, last[:-1] + 1]
        keep = (last - first) >= 1  # at least two positives: one to train on
        is_test[idx[order][last[keep]]] = True
    cold = np.zeros(0, dtype=np.int64)
    is_cold = np.zeros(n_r, dtype=bool)
    if cold_items > 0:
        n_cold = int(round(cold_items * data.n_items))
        cold = np.sort(rng.permutation(data.n_items)[:n_cold]).astype(np.int64)
        cold_mask = np.zeros(data.n_items, dtype=bool)
        cold_mask[cold] = True
        is_cold = cold_mask[data.item]
    train = ~is_test & ~is_cold
    test = is_test & ~is_cold
    is_val = _validation(data, train & pos, protocol, val_frac, seed)
    out = Split(
        protocol=protocol,
        n_users=data.n_users,
        n_items=data.n_items,
        train_user=data.user[train & pos & ~is_val],
        train_item=data.item[train & pos & ~is_val],
        seen_user=data.user[train],
        seen_item=data.item[train],
        test_user=data.user[test & pos],
        test_item=data.item[test & pos],
        test_users=_unique_users(data.user[test]),
        cold_items=cold,
        cold_user=data.user[is_cold & pos],
        cold_item=data.item[is_cold & pos],
        cold_users=_unique_users(data.user[is_cold]),
        val_user=data.user[is_val],
        val_item=data.item[is_val],
    )
    if len(out.train_user) == 0:
        raise ValueError(
            f"data: no positive training pairs (ratings >= {threshold}) in {data.name}"
        )
    if len(out.test_user) == 0:
        raise ValueError(
            f"data: the test set of {data.name} is empty (no test rating >= {threshold} "
            f"under the {protocol} split)"
        )
    return out


def _validation(
    data: Ratings, candidates: np.ndarray, protocol: str, val_frac: float, seed: int
) -> np.ndarray:
    """(n_ratings,) bool: the validation pairs among the ``candidates`` (the positive training
    ratings), by the rule of the module docstring. Its own generator: the test split and the
    cold items are those of the same seed without validation."""
    is_val = np.zeros(len(candidates), dtype=bool)
    idx = np.flatnonzero(candidates)
    if len(idx) == 0:
        return is_val
    if protocol == "dmm":
        rng = np.random.default_rng([seed, 1])
        order = np.lexsort((rng.random(len(idx)), data.user[idx]))  # users, shuffled within
    else:
        stamp = data.timestamp
        assert stamp is not None  # split() refuses the temporal protocol without timestamps
        order = np.lexsort((idx, stamp[idx], data.user[idx]))  # users, by time
    su = data.user[idx][order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    counts = np.diff(np.r_[starts, len(su)])
    if protocol == "dmm":
        take = np.minimum(np.rint(val_frac * counts).astype(np.int64), counts - 1)
        first = starts  # the first ``take`` of each user's shuffled pairs
    else:
        take = (counts >= 2).astype(np.int64)  # the latest training positive: 2nd-to-last
        first = starts + counts - 1
    pick = np.repeat(first, take) + (
        np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
    )
    is_val[idx[order[pick]]] = True
    return is_val


def tail_items(s: Split, head: float = 0.2) -> np.ndarray:
    """(n_items,) bool: the long tail, the warm items outside the ``head`` fraction (20 %) with
    the most positive training pairs (ties: the smaller item index is in the head)."""
    if not 0.0 < head < 1.0:
        raise ValueError(f"head: expected a fraction in (0, 1), got {head!r}")
    warm = np.flatnonzero(s.warm_items)
    counts = np.bincount(s.train_item, minlength=s.n_items)[warm]
    order = warm[np.lexsort((warm, -counts))]  # most popular first
    tail = np.zeros(s.n_items, dtype=bool)
    tail[order[int(round(head * len(warm))) :]] = True
    return tail


# -- negative sampling -------------------------------------------------------------------------
class NegativeSampler:
    """Uniform negatives per user that exclude the user's positive training items.

    Membership is a binary search of ``user * n_items + item`` in the sorted positive keys;
    rejected draws are redrawn (vectorised) until none is left.

    Args:
        user, item: (P,) positive training pairs.
        n_items: number of items; ``allowed`` (n_items,) bool restricts the draws (e.g. to the
            warm items).
    """

    def __init__(
        self,
        user: np.ndarray,
        item: np.ndarray,
        n_items: int,
        allowed: np.ndarray | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.n_items: int = int(n_items)
        #: the (user, item) positives as sorted keys ``user * n_items + item``
        self.keys: torch.Tensor = torch.from_numpy(
            np.unique(np.asarray(user, dtype=np.int64) * self.n_items + np.asarray(item))
        )
        pool = np.arange(self.n_items) if allowed is None else np.flatnonzero(allowed)
        self.pool: torch.Tensor = torch.from_numpy(pool.astype(np.int64))
        counts = np.bincount(np.asarray(user, dtype=np.int64))
        if len(counts) and counts.max() >= len(pool):
            u = int(np.argmax(counts))
            raise ValueError(
                f"negatives: user {u} has a positive for every candidate item; nothing to sample"
            )

    def __call__(
        self,
        users: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        max_rounds: int = 100,
    ) -> torch.Tensor:
        """(B,) user indices -> (B, k) item indices that are not positives of each user."""
        torch = self._torch
        draw = torch.randint(len(self.pool), (users.shape[0], k), generator=generator)
        items = self.pool[draw]
        base = users.unsqueeze(1) * self.n_items
        for _ in range(max_rounds):
            key = base + items
            pos = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
            bad = self.keys[pos] == key
            n_bad = int(bad.sum())
            if n_bad == 0:
                return items
            redraw = torch.randint(len(self.pool), (n_bad,), generator=generator)
            items[bad] = self.pool[redraw]
        raise RuntimeError("negatives: rejection sampling did not finish")  # pragma: no cover
