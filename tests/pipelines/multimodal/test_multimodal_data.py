"""Multimodal loaders: patches, MovieLens, the MOSI/MOSEI pickle, .npz; their bad-input errors."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from otcl.pipelines.multimodal.data import (
    DataError,
    MultimodalData,
    load_affect,
    load_movielens,
    load_multimodal,
    load_npz,
    load_split_images,
    patch_grid,
    split_patches,
)
from otcl.pipelines.sources.text import hashed_bag_of_words


# -- patches -------------------------------------------------------------------------------
def test_patches_tile_the_image_exactly():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    for k, grid in ((2, (1, 2)), (4, (2, 2)), (8, (2, 4)), (16, (4, 4))):
        assert patch_grid(k, 8, 8) == grid
        p = split_patches(x, k)
        assert len(p) == k
        rows = [torch.cat([p[f"r{i}c{j}"] for j in range(grid[1])], dim=3) for i in range(grid[0])]
        torch.testing.assert_close(torch.cat(rows, dim=2), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="patches: 3 patches make a 1 x 3 grid"):
        patch_grid(3, 8, 8)
    with pytest.raises(ValueError, match="patches: expected an integer >= 2"):
        patch_grid(1, 8, 8)


def test_digits_in_four_quadrants():
    pytest.importorskip("sklearn")
    d = load_split_images("digits", patches=4)
    assert d.modalities == ("r0c0", "r0c1", "r1c0", "r1c1")
    assert d.shape("r0c0") == (1, 4, 4) and d.kinds["r1c1"] == "image"
    assert (d.num_train, d.num_test, d.num_classes) == (1347, 450, 10)
    assert d.task == "classification" and d.train_y.dtype == torch.int64
    # standardised pixels: (x / 255 - 0.3) / 0.4 takes values in [-0.75, 1.75]
    allx = torch.cat([v.flatten() for v in d.train.values()])
    assert allx.min() >= -0.75 - 1e-6 and allx.max() <= 1.75 + 1e-6
    with pytest.raises(TypeError):
        d.train["r0c0"] = torch.zeros(1)  # read-only mapping: data objects are immutable


# -- MovieLens -----------------------------------------------------------------------------
def _write_movielens(root, items, ratings):
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for iid, title, date, genres in items:
        flags = ["1" if g in genres else "0" for g in range(19)]
        lines.append("|".join([str(iid), title, date, "", "http://x", *flags]))
    (root / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t0\n" for u, i, r in ratings))


def test_movielens_items_as_three_modalities(tmp_path):
    items = [
        (1, "Toy Story (1995)", "01-Jan-1997", {3, 4}),  # a re-release date: not the year
        (2, "GoldenEye (1995)", "01-Jan-1995", {1}),
        (3, "Café Society (1996)", "", {8}),  # latin-1 title, missing date
        (4, "Toy Soldiers (1991)", "01-Jan-1991", {1, 3}),
        (5, "Nobody Liked It (1990)", "01-Jan-1990", {8}),
        (6, "Heat (1995)", "01-Jan-1995", {1}),
        (7, "Clerks (1994)", "01-Jan-1994", {5}),
        (8, "Fargo (1996)", "01-Jan-1996", {5, 6}),
        (9, "unknown", "", {0}),  # no year
    ]
    ratings = [(u, i, 5) for i in (1, 2, 3, 4, 6, 7, 8, 9) for u in (1, 2, i + 2)]
    ratings += [(1, 5, 2), (3, 5, 3)]  # item 5: rated, never liked (rating < 4) -> dropped
    _write_movielens(tmp_path / "ml", items, ratings)
    d = load_movielens(tmp_path / "ml", text_dim=64, test_fraction=0.3, seed=1)
    assert d.modalities == ("title", "genre", "audience") and d.task is None
    assert d.num_train + d.num_test == 8
    assert d.shape("title") == (64,) and d.shape("genre") == (21,) and d.shape("audience") == (10,)
    assert sorted(d.info["train_items"] + d.info["test_items"]) == [1, 2, 3, 4, 6, 7, 8, 9]
    all_users = sorted({u for u, _, _ in ratings})  # user 7 never rated: 10 users
    for split in ("train", "test"):
        x = d.train if split == "train" else d.test
        for r, i in enumerate(d.info[f"{split}_items"]):  # every row against its raw data
            _, title, date, genres = items[i - 1]
            expect = torch.zeros(10)
            expect[[all_users.index(u) for u in (1, 2, i + 2)]] = 1 / 3**0.5
            torch.testing.assert_close(x["audience"][r], expect)
            expect = hashed_bag_of_words([title.rsplit(" (", 1)[0]], 64)[0]
            torch.testing.assert_close(x["title"][r], expect)
            # the year of the title (not the date column), or the flag of an unknown year
            year = [(int(title[-5:-1]) - 1900) / 100, 0.0] if title[-1] == ")" else [0.0, 1.0]
            expect = torch.tensor([float(g in genres) for g in range(19)] + year)
            torch.testing.assert_close(x["genre"][r], expect)
    with pytest.raises(DataError, match="u.item is missing"):
        load_movielens(tmp_path)


def test_movielens_minilm_titles_go_through_the_shared_encoder(tmp_path, monkeypatch):
    items = [(i, f"Film {i} (1995)", "", {1}) for i in range(1, 6)]
    _write_movielens(tmp_path / "ml", items, [(u, i, 5) for u in (1, 2) for i in range(1, 6)])
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(DataError, match=r"data.text: minilm needs .*otcl\[recsys-text\]"):
        load_movielens(tmp_path / "ml", text="minilm")


# -- CMU-MOSI / MOSEI pickle ---------------------------------------------------------------
def _affect(n=6, t=5, seed=0):
    rng = np.random.default_rng(seed)
    split = {
        "text": rng.normal(size=(n, t, 7)).astype(np.float32),
        "audio": rng.normal(size=(n, t, 4)).astype(np.float32),
        "vision": rng.normal(size=(n, t, 3)).astype(np.float32),
        "labels": rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float32),
        "id": np.array([["vid", str(i), "0"] for i in range(n)]),
    }
    return split


def test_affect_pickle_in_the_gmc_mult_format(tmp_path):
    raw = {"train": _affect(8, seed=0), "valid": _affect(3, seed=1), "test": _affect(5, seed=2)}
    raw["train"]["audio"][
        2, 1, 0
    ] = -np.inf  # COVAREP on silence: zeroed as the reference code does
    path = tmp_path / "mosei_senti_data.pkl"
    path.write_bytes(pickle.dumps(raw))
    d = load_multimodal("mosei", tmp_path)  # a folder: the file name is GMC's
    assert d.modalities == ("text", "audio", "vision") and d.task == "regression"
    assert d.shape("text") == (5, 7) and d.kinds["audio"] == "sequence"
    assert d.train["audio"][2, 1, 0] == 0.0
    np.testing.assert_array_equal(d.test_y.numpy(), raw["test"]["labels"].reshape(-1))
    np.testing.assert_array_equal(d.train["vision"].numpy(), raw["train"]["vision"])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: r["train"].__setitem__("audio", r["train"]["audio"][:-1]), "different lengths"),
        (
            lambda r: r["test"]["vision"].__setitem__((1, 2, 0), np.nan),
            r"'vision' \(test\) holds 1 NaN/Inf value\(s\) \(first in row 1\)",
        ),
        (lambda r: r["train"].pop("vision"), "array train/vision is missing"),
        (lambda r: r.pop("test"), "split 'test' is missing"),
    ],
)
def test_affect_bad_input_names_file_and_array(tmp_path, edit, match):
    raw = {"train": _affect(8), "valid": _affect(3), "test": _affect(5)}
    edit(raw)
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=match) as e:
        load_affect(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# -- .npz ----------------------------------------------------------------------------------
def test_npz_single_file_split_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    video, text = rng.normal(size=(20, 6)), rng.normal(size=(20, 3, 4))
    labels = np.arange(20) % 4
    np.savez(tmp_path / "f.npz", video=video, text=text, labels=labels)
    d = load_npz(tmp_path / "f.npz", test_fraction=0.25, seed=3)
    assert d.modalities == ("video", "text") and d.kinds == {"video": "vector", "text": "sequence"}
    assert (
        (d.num_train, d.num_test) == (15, 5) and d.task == "classification" and d.num_classes == 4
    )
    # rows stay aligned: recover each test row's index from the video array
    idx = [int(np.argmin(np.abs(video - v.numpy()).sum(1))) for v in d.test["video"]]
    np.testing.assert_allclose(d.test["text"].numpy(), text[idx], rtol=1e-6)
    np.testing.assert_array_equal(d.test_y.numpy(), labels[idx])
    # a chosen subset of arrays, real-valued labels from a folder with train.npz / test.npz
    (tmp_path / "dir").mkdir()
    for s, n in (("train", 10), ("test", 4)):
        np.savez(
            tmp_path / "dir" / f"{s}.npz",
            a=rng.normal(size=(n, 2)),
            b=rng.normal(size=(n, 2)),
            c=rng.normal(size=(n, 2)),
            labels=rng.normal(size=n),
        )
    d2 = load_multimodal("npz", tmp_path / "dir", modalities=["a", "c"])
    assert d2.modalities == ("a", "c") and d2.task == "regression" and d2.num_test == 4


def test_npz_bad_input(tmp_path):
    np.savez(tmp_path / "f.npz", video=np.zeros((5, 2)), text=np.zeros((4, 2)))
    with pytest.raises(DataError, match="f.npz: array 'audio' is missing") as e:
        load_npz(tmp_path / "f.npz", ["video", "audio"])
    assert "\n" not in str(e.value)
    with pytest.raises(
        DataError,
        match=r"f.npz: modalities have different lengths .* 'text' has 4 rows, 'video' has 5",
    ):
        load_npz(tmp_path / "f.npz")
    bad = np.zeros((6, 2))
    bad[4, 1] = np.inf
    np.savez(tmp_path / "g.npz", video=bad, text=np.zeros((6, 2)))
    with pytest.raises(
        DataError,
        match=r"g.npz: array 'video' \(file\) holds 1 NaN/Inf value\(s\) \(first in row 4\)",
    ):
        load_npz(tmp_path / "g.npz")
    with pytest.raises(DataError, match="expected at least 2 modalities"):
        load_npz(tmp_path / "g.npz", ["video"])
    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="dataset: expected one of"):
        load_multimodal("nope")
    with pytest.raises(DataError, match="pass --data-dir"):
        load_multimodal("npz")


def test_npz_labels_need_one_value_per_sample(tmp_path):
    x = {"a": np.zeros((8, 2)), "b": np.ones((8, 3))}
    np.savez(tmp_path / "two.npz", **x, labels=np.zeros((8, 2), dtype=np.int64))
    with pytest.raises(
        DataError, match=r"two.npz: array 'labels' has shape \(8, 2\), expected one label per"
    ):
        load_npz(tmp_path / "two.npz")
    np.savez(tmp_path / "col.npz", **x, labels=(np.arange(8) % 2)[:, None])  # (N, 1) is fine
    d = load_npz(tmp_path / "col.npz", test_fraction=0.5)
    assert d.num_classes == 2 and d.train_y.shape == (4,)


def test_npz_modality_without_features_is_refused(tmp_path):
    np.savez(tmp_path / "f.npz", a=np.zeros((8, 0)), b=np.ones((8, 3)))
    with pytest.raises(
        DataError, match=r"f.npz: array 'a' \(file\) has shape \(8, 0\): no features"
    ):
        load_npz(tmp_path / "f.npz")


def test_npz_class_ids_are_renumbered_over_both_splits(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "d").mkdir()
    # sparse ids: never a range(max + 1) of classes; one class only in test
    for s, y in (("train", [0, 3, 3, 0, 5]), ("test", [5, 7, 0, 3])):
        ys = np.asarray(y, dtype=np.int64) * 1_000_000_000
        np.savez(tmp_path / "d" / f"{s}.npz", a=rng.normal(size=(len(y), 2)),
                 b=rng.normal(size=(len(y), 2)), labels=ys)  # fmt: skip
    d = load_npz(tmp_path / "d")
    assert d.classes == ("0", "3000000000", "5000000000", "7000000000")
    assert d.train_y.tolist() == [0, 1, 1, 0, 2] and d.test_y.tolist() == [2, 3, 0, 1]
    # text labels: classes in sorted order, the same ids in both splits
    for s, y in (
        ("train", ["dog", "cat", "dog", "bird", "cat"]),
        ("test", ["cat", "bird", "eel", "dog"]),
    ):
        np.savez(tmp_path / "d" / f"{s}.npz", a=rng.normal(size=(len(y), 2)),
                 b=rng.normal(size=(len(y), 2)), labels=np.asarray(y))  # fmt: skip
    d = load_npz(tmp_path / "d")
    assert d.task == "classification" and d.classes == ("bird", "cat", "dog", "eel")
    assert d.train_y.tolist() == [2, 1, 2, 0, 1] and d.test_y.tolist() == [1, 0, 3, 2]
    np.savez(
        tmp_path / "f.npz", a=np.zeros((6, 2)), b=np.ones((6, 2)), labels=np.array([1, -1] * 3)
    )
    with pytest.raises(DataError, match="f.npz: array 'labels' holds negative class ids"):
        load_npz(tmp_path / "f.npz")


def test_npz_that_is_not_an_archive_of_numbers_is_named(tmp_path):
    (tmp_path / "t.npz").write_text("video,text,labels\n0.1,0.2,1\n")
    with pytest.raises(
        DataError,
        match=r"t.npz: is a text file, not an .npz archive \(it starts with 'video,text,labels'\)",
    ):
        load_npz(tmp_path / "t.npz")
    np.save(tmp_path / "one.npy", np.zeros((4, 2)))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(DataError, match=r"one.npz: is a single .npy array, not an .npz archive"):
        load_npz(tmp_path / "one.npz")
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"e.npz: is an empty file"):
        load_npz(tmp_path / "e.npz")
    (tmp_path / "b.npz").write_bytes(bytes(range(128, 256)))
    with pytest.raises(DataError, match=r"b.npz: is not an .npz archive \(no zip header"):
        load_npz(tmp_path / "b.npz")
    obj = np.empty(6, dtype=object)
    obj[:] = [{"k": i} for i in range(6)]
    np.savez(tmp_path / "o.npz", a=np.zeros((6, 2)), b=np.ones((6, 2)), labels=obj)
    with pytest.raises(
        DataError, match=r"o.npz: array 'labels' is an array of Python objects"
    ) as e:
        load_npz(tmp_path / "o.npz")
    assert "\n" not in str(e.value)
    np.savez(tmp_path / "o2.npz", a=obj, b=np.ones((6, 2)))
    with pytest.raises(DataError, match=r"o2.npz: array 'a' is an array of Python objects"):
        load_npz(tmp_path / "o2.npz")


def test_dataset_object_checks(make_data):
    d = make_data()
    with pytest.raises(DataError, match="different modalities"):
        MultimodalData("x", dict(d.train), {"vec": d.test["vec"], "seq": d.test["seq"]}, d.kinds)
    with pytest.raises(DataError, match="labels \\(train\\) have 47 rows"):
        MultimodalData(
            "x", dict(d.train), dict(d.test), d.kinds, d.train_y[:-1], d.test_y, "classification"
        )
