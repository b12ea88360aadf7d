"""Datasets: digits, ImageFolder directories and archives, torchvision, the decoded cache."""

from __future__ import annotations

import tarfile
import warnings

import numpy as np
import pytest
import torch

from otcl.pipelines.sources.images import DataError, load_dataset, load_image_folder

Image = pytest.importorskip("PIL.Image")


# -- datasets ------------------------------------------------------------------------------
def test_digits_split():
    d = load_dataset("digits")
    assert d.train_x.shape == (1347, 1, 8, 8) and d.test_x.shape == (450, 1, 8, 8)
    assert d.train_x.dtype == torch.uint8 and int(d.train_x.max()) == 255
    assert d.num_classes == 10
    # stratified: every class in both splits, in proportion
    counts = torch.bincount(d.test_y, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47
    again = load_dataset("digits")
    assert torch.equal(again.train_y, d.train_y)  # a fixed split


def _write_folder(root, size=(6, 6), n=3, classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_image_folder_directory_and_tar_agree(tmp_path):
    root = _write_folder(tmp_path / "data")
    d = load_image_folder(root, cache_dir="none")
    assert d.train_x.shape == (6, 3, 6, 6) and d.test_x.shape == (6, 3, 6, 6)
    assert d.classes == ["cat", "dog"]
    assert torch.equal(torch.bincount(d.train_y), torch.tensor([3, 3]))
    px = np.asarray(Image.open(root / "train" / "cat" / "0.png"))
    assert np.array_equal(d.train_x[0].permute(1, 2, 0).numpy(), px)  # lossless PNG
    arc = tmp_path / "data.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(root, arcname="data")
    t = load_image_folder(arc, cache_dir="none")
    assert torch.equal(t.train_x, d.train_x) and torch.equal(t.test_y, d.test_y)


def test_image_folder_cache_roundtrip(tmp_path):
    root = _write_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    a = load_image_folder(root, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    b = load_image_folder(root, cache_dir=cache)
    assert torch.equal(a.train_x, b.train_x) and a.classes == b.classes


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = _write_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image_folder(root, cache_dir="none")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = load_image_folder(root, cache_dir="none", skip_corrupt=True)
    assert d.train_x.shape[0] == 6 and any("broken.jpg" in str(x.message) for x in w)
    assert d.skipped == [str(bad)]


def test_mixed_sizes_need_image_size(tmp_path):
    root = _write_folder(tmp_path / "data")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "test" / "cat" / "big.png")
    with pytest.raises(DataError, match="image_size"):
        load_image_folder(root, cache_dir="none")
    d = load_image_folder(root, cache_dir="none", image_size=8)
    assert d.train_x.shape[-2:] == (8, 8) and d.test_x.shape[0] == 7


def test_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="data_dir"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="train/<class>"):
        load_image_folder(tmp_path / "flat", cache_dir="none")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="junk.tar.gz"):
        load_image_folder(junk, cache_dir="none")
    with pytest.raises(DataError, match="dataset: expected one of"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="imagefolder"):
        load_dataset("imagefolder")


def test_torchvision_datasets_are_converted(monkeypatch):
    """CIFAR (N, H, W, C) arrays and SVHN/STL (N, C, H, W) arrays become uint8 (N, C, H, W)."""
    import sys
    import types

    rng = np.random.default_rng(0)

    class CIFAR10:
        classes = ["a", "b"]

        def __init__(self, root, train, download):
            n = 5 if train else 3
            self.data = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
            self.targets = [i % 2 for i in range(n)]

    class SVHN:
        def __init__(self, root, split, download):
            self.data = rng.integers(0, 256, (4, 3, 4, 4), dtype=np.uint8)
            self.labels = np.arange(4) % 10

    class STL10(SVHN):
        classes = [str(i) for i in range(10)]

    fake = types.ModuleType("torchvision.datasets")
    fake.CIFAR10, fake.CIFAR100, fake.SVHN, fake.STL10 = CIFAR10, CIFAR10, SVHN, STL10
    pkg = types.ModuleType("torchvision")
    pkg.datasets = fake
    monkeypatch.setitem(sys.modules, "torchvision", pkg)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    c = load_dataset("cifar10", download=False)
    assert c.train_x.shape == (5, 3, 4, 4) and c.test_x.shape == (3, 3, 4, 4)
    assert c.train_x.dtype == torch.uint8 and c.train_y.tolist() == [0, 1, 0, 1, 0]
    assert c.classes == ["a", "b"] and c.mean == (0.4914, 0.4822, 0.4465)
    s = load_dataset("svhn")
    assert s.train_x.shape == (4, 3, 4, 4) and s.num_classes == 10
    stl = load_dataset("stl10", unlabeled=True)
    assert stl.extra_x.shape == (4, 3, 4, 4) and stl.ssl_images().shape[0] == 8


def test_torchvision_missing_names_the_alternatives(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match=r"otcl\[vision\].*--data-dir"):
        load_dataset("cifar100")


@pytest.mark.parametrize("off", ["none", "off", "false", "no", ""])
def test_cache_dir_none_or_off_writes_no_cache(tmp_path, monkeypatch, off):
    """`--set data.cache_dir=none` used to write the default cache, `=off` a folder `False/`."""
    from otcl.pipelines.config import apply_overrides
    from otcl.pipelines.ssl.config import Config

    root = _write_folder(tmp_path / "data")
    default_cache = tmp_path / "default-cache"
    monkeypatch.setenv("OTCL_CACHE", str(default_cache))
    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(Config(), [f"data.cache_dir={off}"])
    assert cfg.data.cache_dir == off  # the text as typed, not None or False
    load_image_folder(root, cache_dir=cfg.data.cache_dir)
    assert not default_cache.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no `False/`, `off/`
    load_image_folder(root, cache_dir=None)  # None = the default location
    assert len(list(default_cache.glob("*.npz"))) == 1


def test_missing_data_dir_file_is_named(tmp_path):
    """--dataset cifar10 --data-dir missing.tar.gz blamed a missing torchvision."""
    missing = tmp_path / "missing.tar.gz"
    with pytest.raises(DataError, match=r"data_dir: '.*missing.tar.gz' does not exist"):
        load_dataset("cifar10", missing)
    with pytest.raises(DataError, match=r"does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere", download=False)
