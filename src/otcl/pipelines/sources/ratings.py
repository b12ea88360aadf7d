r"""Ratings as every pipeline reads them: contiguous ids, side features, and the CSV reader.

:class:`Ratings` holds all ratings of a data set with ids re-indexed to ``0..n-1``
(``user_ids`` / ``item_ids`` keep the original ones) and, for MovieLens, the side features of
users (:class:`UserFeatures`: age bucket, gender, occupation) and items (:class:`ItemFeatures`:
genres multi-hot, release year, title). :func:`load_ratings_csv` reads a CSV file
``user_id,item_id,rating[,timestamp]`` (Amazon-review style, header optional, ids any strings),
without side features; :mod:`.movielens` reads GroupLens's folders.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import DataError

__all__ = ["Ratings", "UserFeatures", "ItemFeatures", "load_ratings_csv"]


@dataclass(frozen=True)
class UserFeatures:
    """Categorical user features, one code per user (0 = unknown).

    Attributes:
        age: (n_users,) age bucket in ``1..len(AGE_BUCKETS)``.
        gender: (n_users,) 1 = F, 2 = M.
        occupation: (n_users,) occupation code in ``1..n_occupations``.
        vocab: number of codes of each field (including the 0 = unknown code).
    """

    age: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray
    vocab: dict[str, int]

    def codes(self) -> dict[str, np.ndarray]:
        return {"age": self.age, "gender": self.gender, "occupation": self.occupation}


@dataclass(frozen=True)
class ItemFeatures:
    """Item side information.

    Attributes:
        genres: (n_items, G) float32 multi-hot.
        genre_names: the G genre names.
        year: (n_items,) release year (0 = unknown).
        titles: the n_items titles (without the trailing ``(year)``).
    """

    genres: np.ndarray
    genre_names: tuple[str, ...]
    year: np.ndarray
    titles: tuple[str, ...]


@dataclass(frozen=True)
class Ratings:
    """All ratings of a data set, with contiguous ids.

    Attributes:
        name: ``ml-100k``, ``ml-1m`` or the CSV file name.
        user, item: (R,) int64 indices in ``[0, n_users)`` / ``[0, n_items)``.
        rating: (R,) float32.
        timestamp: (R,) int64 or None (CSV without a timestamp column).
        user_ids, item_ids: original id of each index (strings).
        user_features, item_features: side information (MovieLens) or None.
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray | None
    n_users: int
    n_items: int
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    user_features: UserFeatures | None = None
    item_features: ItemFeatures | None = None

    def __repr__(self) -> str:
        return (
            f"Ratings({self.name}: {len(self.user):,} ratings, {self.n_users:,} users, "
            f"{self.n_items:,} items)"
        )


def _reindex(raw: list[str], name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    keys, idx = np.unique(np.asarray(raw, dtype=object).astype(str), return_inverse=True)
    return idx.astype(np.int64), tuple(keys.tolist())


def check_ratings(rating: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(rating)):
        raise DataError(f"data: {str(path)!r} holds non-finite ratings")


def load_ratings_csv(path: str | os.PathLike[str], *, name: str | None = None) -> Ratings:
    """Read ``user_id,item_id,rating[,timestamp]`` rows (a header line is detected and skipped)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data: ratings file {str(p)!r} not found")
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    with open(p, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        for lineno, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) not in (3, 4):
                raise DataError(
                    f"data: {str(p)!r} line {lineno}: expected user_id,item_id,rating"
                    f"[,timestamp], got {len(row)} field(s)"
                )
            try:
                r = float(row[2])
                t = int(float(row[3])) if len(row) == 4 else None
            except ValueError:
                if lineno == 1 and not users:  # header
                    continue
                raise DataError(
                    f"data: {str(p)!r} line {lineno}: rating/timestamp is not a number: {row!r}"
                ) from None
            if (t is None) != (not stamps) and users:
                raise DataError(
                    f"data: {str(p)!r} line {lineno}: some rows have a timestamp and some not"
                )
            users.append(row[0].strip())
            items.append(row[1].strip())
            ratings.append(r)
            if t is not None:
                stamps.append(t)
    if not users:
        raise DataError(f"data: {str(p)!r} holds no ratings")
    u, uids = _reindex(users, "user")
    i, iids = _reindex(items, "item")
    rating = np.asarray(ratings, dtype=np.float32)
    check_ratings(rating, p)
    return Ratings(
        name=name or p.stem,
        user=u,
        item=i,
        rating=rating,
        timestamp=np.asarray(stamps, dtype=np.int64) if stamps else None,
        n_users=len(uids),
        n_items=len(iids),
        user_ids=uids,
        item_ids=iids,
    )
