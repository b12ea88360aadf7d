r"""Multimodal datasets: M >= 2 aligned modalities per sample, as float tensors.

Every loader returns a :class:`MultimodalData`: for the train and the test split one float32
tensor per modality with aligned rows (row i of every modality is the same sample), optional
labels (classes for a probe, or real-valued targets as CMU-MOSEI's sentiment), and the *kind* of
each modality, which picks its encoder (:mod:`.models`):

* ``vector``: (N, D), an MLP;
* ``sequence``: (N, T, D), a GRU or a 1-D convolution;
* ``image``: (N, C, H, W), a small CNN.

Loaders:

* :func:`~.patches.load_split_images` (in :mod:`.patches`) -- an image dataset cut into ``k`` patches, each patch a modality
  (the embedded default: scikit-learn's digits, 8x8, in four 4x4 quadrants; MNIST/CIFAR through
  the image pipeline's datasets, via torchvision or a local ImageFolder copy);
* :func:`load_movielens` -- MovieLens 100K items (GroupLens' ``u.item`` / ``u.data``) as three
  modalities: the title's words, the genres + release year, and the audience (which users liked
  the item); retrieving an item's audience from its title is cold-start recommendation;
* :func:`load_affect` -- CMU-MOSI / CMU-MOSEI from the processed pickle that GMC and MulT use
  (``{"train"|"valid"|"test": {"text", "audio", "vision", "labels", ...}}``);
* :func:`load_npz` -- paired precomputed features, one ``.npz`` array per modality.

Bad input raises :class:`DataError` (a ``ValueError``) in one line naming the file, the array
and what was expected: modalities of different lengths, NaN/Inf features, missing arrays.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..sources.common import DataError
from ..sources.movielens import load_movielens_dir
from ..sources.text import encode_sentences, hashed_bag_of_words
from .dataset import KIND_BY_NDIM, KINDS, MultimodalData, check_modalities, split_rows
from .patches import load_split_images, patch_grid, split_patches

__all__ = [
    "DataError",
    "MultimodalData",
    "KINDS",
    "DATASETS",
    "load_multimodal",
    "load_split_images",
    "split_patches",
    "patch_grid",
    "load_movielens",
    "load_affect",
    "load_npz",
    "check_modalities",
    "split_rows",
]

#: names accepted by :func:`load_multimodal`
DATASETS = (
    "digits",
    "mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "imagefolder",
    "movielens",
    "mosi",
    "mosei",
    "npz",
)


def load_movielens(
    data_dir: str | os.PathLike[str],
    *,
    text: str = "hash",
    text_dim: int = 1024,
    text_model: str | None = None,
    like_threshold: float = 4.0,
    min_likes: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MultimodalData:
    r"""MovieLens 100K items as three modalities (rows = items; no labels).

    * ``title``: the title without its year, as a hashed bag of words (``text="hash"``,
      ``text_dim`` buckets) or a sentence-transformer embedding (``text="minilm"``);
    * ``genre``: the 19 genre flags + the release year, ``(year - 1900) / 100``, and a flag for an
      unknown year (the year of the title, read by the reader every pipeline shares:
      :func:`otcl.pipelines.sources.movielens.title_year`);
    * ``audience``: which users liked the item (rating >= ``like_threshold``), a multi-hot row
      over all users, L2-normalised.

    Items liked by fewer than ``min_likes`` users are dropped (an empty audience cannot be
    retrieved). Items are split at random into train/test (``test_fraction``, ``seed``): test
    items are unseen at training time, so title -> audience retrieval on them is cold-start
    recommendation.
    """
    root = Path(data_dir)
    item_path, data_path = root / "u.item", root / "u.data"
    for p in (item_path, data_path):
        if not p.is_file():
            raise DataError(
                f"data_dir: expected MovieLens 100K files (u.item, u.data) in {str(root)!r}; "
                f"{p.name} is missing"
            )
    r = load_movielens_dir(root, users=False)  # items sorted by id, users = those who rated
    itf = r.item_features
    assert itf is not None  # a MovieLens folder always has its items' features
    ids = [int(i) for i in r.item_ids]
    titles = list(itf.titles)
    known = itf.year > 0
    genres = np.concatenate(
        [itf.genres, np.where(known, (itf.year - 1900.0) / 100.0, 0.0)[:, None], ~known[:, None]],
        axis=1,
    )
    liked = r.rating >= like_threshold
    aud = torch.zeros(r.n_items, r.n_users)
    aud[torch.from_numpy(r.item[liked]), torch.from_numpy(r.user[liked])] = 1.0
    keep = (aud.sum(1) >= min_likes).nonzero().flatten()
    if keep.numel() < 4:
        raise DataError(f"{data_path}: fewer than 4 items have >= {min_likes} like(s)")
    if text == "hash":
        title = hashed_bag_of_words(titles, text_dim)
    elif text == "minilm":
        title = torch.as_tensor(encode_sentences(titles, model=text_model, setting="data.text"))
    else:
        raise ValueError(f"text: expected 'hash' or 'minilm', got {text!r}")
    feats = {
        "title": title[keep],
        "genre": torch.as_tensor(genres, dtype=torch.float32)[keep],
        "audience": (aud / aud.norm(dim=1, keepdim=True).clamp_min(1e-12))[keep],
    }
    tr, te = split_rows(keep.numel(), test_fraction, seed)
    return MultimodalData(
        name="movielens",
        train={k: v[tr] for k, v in feats.items()},
        test={k: v[te] for k, v in feats.items()},
        kinds={k: "vector" for k in feats},
        source=str(root),
        info={
            "train_items": [ids[i] for i in keep[tr].tolist()],
            "test_items": [ids[i] for i in keep[te].tolist()],
            "users": r.n_users,
        },
    )


# -- CMU-MOSI / MOSEI (the processed pickle of GMC / MulT) ---------------------------------
_AFFECT_FILES = {"mosi": "mosi_data.pkl", "mosei": "mosei_senti_data.pkl"}
AFFECT_MODALITIES = ("text", "audio", "vision")


def load_affect(
    path: str | os.PathLike[str], name: str = "mosei", *, unaligned: bool = False
) -> MultimodalData:
    r"""CMU-MOSI / CMU-MOSEI from the processed pickle of GMC and MulT (sentiment regression).

    The file holds ``{"train", "valid", "test"}`` dicts with ``text`` (N, T, 300 GloVe),
    ``audio`` (N, T, 74 COVAREP), ``vision`` (N, T, 35 Facet) and ``labels`` (N, 1, 1) in
    [-3, 3]; ``path`` is the file or the folder holding ``mosei_senti_data.pkl`` /
    ``mosi_data.pkl`` (``*_noalign.pkl`` with ``unaligned=True``). As in the reference loaders,
    ``-inf`` audio entries (COVAREP on silence) become 0; any other NaN/Inf is an error. The
    ``valid`` split is not used (no model selection on it here).

    Only unpickle files you trust (pickle can run code).
    """
    if name not in _AFFECT_FILES:
        raise ValueError(f"name: expected 'mosi' or 'mosei', got {name!r}")
    p = Path(path)
    if p.is_dir():
        fname = _AFFECT_FILES[name]
        if unaligned:
            fname = fname.replace("_data.pkl", "_data_noalign.pkl")
        p = p / fname
    if not p.is_file():
        raise DataError(f"data_dir: expected the processed {name} pickle, {str(p)!r} not found")
    try:
        with open(p, "rb") as fh:
            raw = pickle.load(fh)
    except Exception as e:
        raise DataError(f"{p}: cannot unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(raw, Mapping):
        raise DataError(
            f"{p}: expected a dict with 'train' and 'test' splits, got {type(raw).__name__}"
        )

    def split(s: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if s not in raw or not isinstance(raw[s], Mapping):
            raise DataError(f"{p}: split {s!r} is missing (expected keys train, valid, test)")
        d = raw[s]
        out = {}
        for m in (*AFFECT_MODALITIES, "labels"):
            if m not in d:
                raise DataError(f"{p}: array {s}/{m} is missing")
            try:
                a = np.asarray(d[m], dtype=np.float32).copy()
            except (TypeError, ValueError):
                raise DataError(f"{p}: array {s}/{m} is not numeric") from None
            if m == "audio":
                a[a == -np.inf] = 0.0
            out[m] = torch.from_numpy(a)
        for m in AFFECT_MODALITIES:
            if out[m].dim() != 3:
                raise DataError(
                    f"{p}: array {s}/{m} has shape {tuple(out[m].shape)}, expected (N, T, D)"
                )
        lab, n = out.pop("labels"), out["text"].shape[0]
        if lab.numel() != n:
            raise DataError(
                f"{p}: array {s}/labels has shape {tuple(lab.shape)}, expected one sentiment "
                f"score per sample, (N, 1, 1) with N = {n}"
            )
        return out, lab.reshape(n)

    (xtr, ytr), (xte, yte) = split("train"), split("test")
    return MultimodalData(
        name=name,
        train=xtr,
        test=xte,
        kinds={m: "sequence" for m in AFFECT_MODALITIES},
        train_y=ytr,
        test_y=yte,
        task="regression",
        source=str(p),
    )


# -- paired features in .npz -----------------------------------------------------------------
def load_npz(
    path: str | os.PathLike[str],
    modalities: Sequence[str] | None = None,
    *,
    labels: str | None = "labels",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MultimodalData:
    """Paired precomputed features: one array per modality, rows aligned, optional labels.

    ``path`` is one ``.npz`` file (split at random into train/test by ``test_fraction`` and
    ``seed``) or a folder with ``train.npz`` and ``test.npz``. ``modalities`` names the arrays
    (default: every array except ``labels``); each is (N, D), (N, T, D) or (N, C, H, W), with no
    axis of length 0. The ``labels`` array, if present, holds one label per sample ((N,) or
    (N, 1)): real-valued targets, or classes (integers >= 0, booleans or strings), renumbered
    ``0..K-1`` over both splits in sorted order (``classes`` keeps the original values).
    A file that is not an .npz archive (a text file, a single ``.npy``), or an array of Python
    objects, is one :class:`DataError` naming the file and what it is.
    """
    p = Path(path)
    if p.is_dir():
        files = {"train": p / "train.npz", "test": p / "test.npz"}
        for f in files.values():
            if not f.is_file():
                raise DataError(
                    f"data_dir: expected train.npz and test.npz in {str(p)!r}; {f.name} is missing"
                )
        parts = {s: _read_npz(f, modalities, labels) for s, f in files.items()}
        (xtr, ytr_raw, src), (xte, yte_raw, _) = parts["train"], parts["test"]
        if (ytr_raw is None) != (yte_raw is None):
            raise DataError(f"{p}: array {labels!r} is in only one of train.npz / test.npz")
        task, classes, ys = _targets([ytr_raw, yte_raw], f"{p}: array {labels!r}")
        ytr, yte = ys
    else:
        x, y_raw, src = _read_npz(p, modalities, labels)
        task, classes, (y,) = _targets([y_raw], f"{src}: array {labels!r}")
        n = check_modalities(x, source=src, split_name="file", labels=y)
        tr, te = split_rows(n, test_fraction, seed)
        xtr, xte = {k: v[tr] for k, v in x.items()}, {k: v[te] for k, v in x.items()}
        ytr, yte = (None, None) if y is None else (y[tr], y[te])
    kinds = {}
    for k, v in xtr.items():
        if v.dim() not in KIND_BY_NDIM:
            raise DataError(
                f"{src}: array {k!r} has shape {tuple(v.shape)}, expected (N, D), (N, T, D) or "
                "(N, C, H, W)"
            )
        kinds[k] = KIND_BY_NDIM[v.dim()]
    return MultimodalData(
        name="npz",
        train=xtr,
        test=xte,
        kinds=kinds,
        train_y=ytr,
        test_y=yte,
        task=task,
        classes=classes,
        source=src,
    )


def _targets(
    raw: list[np.ndarray | None], what: str
) -> tuple[str | None, tuple[str, ...], list[torch.Tensor | None]]:
    """(task, class names, labels as tensors) of the label arrays of the splits (all or none).

    Real numbers are regression targets (float32). Integers, booleans and strings are classes,
    renumbered ``0..K-1`` in sorted order over every split (sparse ids such as ``7e9`` never size
    anything by their value); the names keep the original values. Negative integers are refused
    (often a mark for "no label").
    """
    if raw[0] is None:
        return None, (), [None] * len(raw)
    arrays = cast(list[np.ndarray], raw)  # all or none (the callers check): all here
    kinds = {a.dtype.kind for a in arrays}
    if kinds <= {"f"}:
        return "regression", (), [torch.from_numpy(a.astype(np.float32)) for a in arrays]
    if kinds & {"U", "S"} and not kinds <= {"U", "S"}:
        raise DataError(f"{what} holds text in one split and numbers in another")
    if kinds & {"f"}:
        raise DataError(f"{what} holds real numbers in one split and integers in another")
    if not kinds & {"U", "S"} and min((int(a.min()) for a in arrays if a.size), default=0) < 0:
        raise DataError(f"{what} holds negative class ids")
    names = np.unique(np.concatenate(arrays))
    ids: list[torch.Tensor | None] = [
        torch.from_numpy(np.searchsorted(names, a).astype(np.int64)) for a in arrays
    ]
    text = [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in names.tolist()
    ]
    return "classification", tuple(text), ids


def _not_an_npz(path: Path) -> str | None:
    """What ``path`` is when it is not an .npz (zip) archive, else None."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array, not an .npz archive of named arrays (save with numpy.savez)"
    try:
        first = head.decode("utf-8").splitlines()[0] if head.strip() else ""
    except UnicodeDecodeError:
        return "not an .npz archive (no zip header; save the arrays with numpy.savez)"
    return (
        f"a text file, not an .npz archive (it starts with {first[:40]!r}); save the arrays with "
        "numpy.savez"
    )


def _array(z: Any, path: Path, name: str) -> np.ndarray:
    try:
        return z[name]
    except ValueError:  # object arrays need pickle, which is never allowed here
        raise DataError(
            f"{path}: array {name!r} is an array of Python objects, expected numbers (or "
            "strings for labels); save it with a numeric dtype"
        ) from None


def _read_npz(
    path: Path, modalities: Sequence[str] | None, labels: str | None
) -> tuple[dict[str, torch.Tensor], np.ndarray | None, str]:
    if not path.is_file():
        raise DataError(f"data_dir: expected an .npz file, {str(path)!r} not found")
    what = _not_an_npz(path)
    if what is not None:
        raise DataError(f"{path}: is {what}")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from None
    with z:
        names = list(modalities) if modalities else [k for k in z.files if k != labels]
        for k in names:
            if k not in z.files:
                raise DataError(
                    f"{path}: array {k!r} is missing (the file holds {', '.join(z.files) or 'nothing'})"
                )
        x = {}
        for k in names:
            a = _array(z, path, k)
            if a.dtype.kind not in "fiub":
                raise DataError(f"{path}: array {k!r} has dtype {a.dtype}, expected numbers")
            x[k] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        y = None
        if labels is not None and labels in z.files:
            y = _array(z, path, labels)
            if y.ndim == 0 or y.size != y.shape[0]:
                raise DataError(
                    f"{path}: array {labels!r} has shape {y.shape}, expected one label per "
                    "sample: (N,) or (N, 1)"
                )
            if y.dtype.kind not in "iubfUS":
                raise DataError(
                    f"{path}: array {labels!r} has dtype {y.dtype}, expected numbers or strings"
                )
            y = np.ascontiguousarray(y.reshape(y.shape[0]))
    return x, y, str(path)


# -- by name -------------------------------------------------------------------------------
def load_multimodal(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> MultimodalData:
    """Load a multimodal dataset by name (:data:`DATASETS`); ``options`` go to the loader.

    ``digits`` / ``mnist`` / ``cifar10`` / ``cifar100`` / ``svhn`` / ``imagefolder``:
    :func:`load_split_images`; ``movielens``: :func:`load_movielens`; ``mosi`` / ``mosei``:
    :func:`load_affect`; ``npz``: :func:`load_npz`.
    """
    if dataset not in DATASETS:
        raise DataError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset in ("movielens", "mosi", "mosei", "npz"):
        if data_dir is None:
            raise DataError(f"data_dir: dataset {dataset!r} is read from a path; pass --data-dir")
        if dataset == "movielens":
            return load_movielens(data_dir, **options)
        if dataset in ("mosi", "mosei"):
            return load_affect(data_dir, dataset, **options)
        return load_npz(data_dir, **options)
    return load_split_images(dataset, data_dir, **options)
