"""The one word hasher (ids and bag of words) and the optional sentence encoder."""

from __future__ import annotations

import hashlib
import sys
import types
import zlib

import numpy as np
import pytest
import torch

from otcl.pipelines.sources import text
from otcl.pipelines.sources.common import DataError
from otcl.pipelines.sources.text import hash_tokens, hashed_bag_of_words, tokenize, word_bucket


# -- hashed words ----------------------------------------------------------------------------
def test_words_are_lower_case_alphanumeric_runs():
    assert tokenize("Se7en (1995)") == ["se7en", "1995"]
    assert tokenize("City of Lost Children, The") == ["city", "of", "lost", "children", "the"]
    assert tokenize("Café!") == ["caf"]  # non-ASCII letters split a word
    assert tokenize("") == []


def test_word_bucket_is_crc32():
    """CRC-32 is stable across processes and platforms (Python's ``hash`` is salted)."""
    assert word_bucket("story", 1024) == zlib.crc32(b"story") % 1024
    assert word_bucket("story", 1) == 0


def test_hashed_titles_are_stable():
    ids = hash_tokens(["The Matrix", "matrix!", ""], buckets=50, max_len=3)
    assert ids[0, 1] == ids[1, 0] and ids[0, 2] == 0 and (ids[2] == 0).all()
    assert ids.max() <= 50 and ids[0, 0] >= 1


def test_hashed_bag_of_words_is_stable_and_normalised():
    h = hashed_bag_of_words(["Toy Story", "toy  STORY!", "", "a b c d"], 32)
    torch.testing.assert_close(h[0], h[1])
    assert float(h[2].abs().sum()) == 0.0
    torch.testing.assert_close(h[[0, 3]].norm(dim=1), torch.ones(2))
    assert int(hashed_bag_of_words(["story"], 1024)[0].argmax()) == zlib.crc32(b"story") % 1024


def test_the_two_views_share_one_hash():
    """The bag of words counts exactly the buckets of the ids (minus the padding offset)."""
    titles = ["The Matrix Reloaded", "Matrix, The", "Toy Story 2", "a a a b"]
    ids = hash_tokens(titles, buckets=64, max_len=8)
    counts = torch.zeros(len(titles), 64)
    for n, row in enumerate(ids):
        for k in row[row > 0]:
            counts[n, k - 1] += 1
    bag = hashed_bag_of_words(titles, 64)
    torch.testing.assert_close(bag, counts / counts.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bucket_counts_are_checked(bad):
    with pytest.raises(ValueError, match="buckets: expected a number of hash buckets >= 1"):
        hash_tokens(["a"], buckets=bad)
    with pytest.raises(ValueError, match="dim: expected a number of hash buckets >= 1"):
        hashed_bag_of_words(["a"], bad)


# -- sentence encoder ------------------------------------------------------------------------
def test_missing_extra_is_one_error_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    for setting in ("model.text", "data.text"):
        with pytest.raises(DataError, match=rf"{setting}: minilm needs .*otcl\[recsys-text\]"):
            text.encode_sentences(["Toy Story"], setting=setting)
    # a local model folder needs sentence-transformers too
    with pytest.raises(DataError, match=r"pip install 'otcl\[recsys-text\]'"):
        text.encode_sentences(["Toy Story"], model="somewhere")


def test_cached_embeddings_are_read_back(monkeypatch, tmp_path):
    """A second encoding of the same texts reads the cache (no model is loaded)."""
    monkeypatch.setenv("OTCL_CACHE", str(tmp_path))
    monkeypatch.setattr(text, "sentence_encoder_available", lambda model=None: True)
    titles = ["Toy Story", "GoldenEye"]
    key = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / f"all-MiniLM-L6-v2-titles-{key}.npy", emb)
    np.testing.assert_array_equal(text.encode_sentences(titles), emb)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from otcl.pipelines.sources.common import cache_root

    monkeypatch.setenv("OTCL_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.setenv("OTCL_CACHE", "")
    assert cache_root() == tmp_path / "x" / "otcl"
    monkeypatch.delenv("OTCL_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert cache_root() == tmp_path / "h" / ".cache" / "otcl"


class _FakeEncoder:
    loaded: list[str] = []

    def __init__(self, path, device):
        _FakeEncoder.loaded.append(path)

    def encode(self, texts, batch_size, normalize_embeddings, show_progress_bar):
        assert normalize_embeddings and not show_progress_bar
        return np.ones((len(texts), 3), dtype=np.float64) / 3**0.5


def test_a_local_model_folder_is_encoded_and_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("OTCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        sys.modules,
        "sentence_transformers",
        types.SimpleNamespace(SentenceTransformer=_FakeEncoder),
    )
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: object())
    _FakeEncoder.loaded.clear()
    out = text.encode_sentences(["a", "b"], model=tmp_path)
    assert out.shape == (2, 3) and out.dtype == np.float32
    assert _FakeEncoder.loaded == [str(tmp_path)]
    assert not (tmp_path / "cache").exists()
    with pytest.raises(
        DataError, match=r"data.text: the sentence model .*nowhere.* is not a folder"
    ):
        text.encode_sentences(["a"], model=tmp_path / "nowhere", setting="data.text")


def test_the_packaged_model_is_unpacked_once_and_its_embeddings_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("OTCL_CACHE", str(tmp_path))
    extracted = []

    def extract_model(root):
        extracted.append(root)
        d = tmp_path / "all-MiniLM-L6-v2"
        d.mkdir()
        (d / "config.json").write_text("{}")
        return str(d)

    monkeypatch.setitem(
        sys.modules, "all_minilm_l6_v2", types.SimpleNamespace(extract_model=extract_model)
    )
    monkeypatch.setitem(
        sys.modules,
        "sentence_transformers",
        types.SimpleNamespace(SentenceTransformer=_FakeEncoder),
    )
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: object())
    _FakeEncoder.loaded.clear()
    a = text.encode_sentences(["x", "y"])
    b = text.encode_sentences(["x", "z"])  # other texts: encoded, the weights not unpacked again
    c = text.encode_sentences(["x", "y"])  # read back from the cache
    assert extracted == [str(tmp_path)]
    assert _FakeEncoder.loaded == [str(tmp_path / "all-MiniLM-L6-v2")] * 2
    np.testing.assert_array_equal(a, c)
    assert a.dtype == b.dtype == np.float32
