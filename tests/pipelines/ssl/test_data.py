"""Datasets (digits, ImageFolder directories and archives) and the batched augmentations."""

from __future__ import annotations

import colorsys
import tarfile
import warnings

import numpy as np
import pytest
import torch

from otcl.pipelines.ssl.data import (
    Augment,
    DataError,
    grayscale,
    hsv_to_rgb,
    load_dataset,
    load_image_folder,
    rgb_to_hsv,
)

Image = pytest.importorskip("PIL.Image")


# -- augmentations -------------------------------------------------------------------------
def _batch(b=6, c=3, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)


def test_hsv_roundtrip_and_colorsys_reference():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    hsv = rgb_to_hsv(x)
    ref = np.array(
        [colorsys.rgb_to_hsv(*x[0, :, i, j].tolist()) for i in range(5) for j in range(5)]
    )
    ours = hsv[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    torch.testing.assert_close(hsv_to_rgb(hsv), x, atol=1e-6, rtol=0)


def test_identity_augmentation_equals_plain_view():
    x = _batch()
    aug = Augment(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter=(0, 0, 0, 0), gray_p=0)
    out = aug(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, aug.plain(x), atol=1e-5, rtol=0)


def test_flip_probability_one_is_a_horizontal_flip():
    x = _batch()
    aug = Augment(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=1.0, jitter=(0, 0, 0, 0), gray_p=0)
    out = aug(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, aug.plain(x).flip(-1), atol=1e-5, rtol=0)


def test_grayscale_probability_one_gives_equal_channels():
    x = _batch()
    aug = Augment(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter=(0, 0, 0, 0), gray_p=1.0,
                  mean=(0,), std=(1,))  # fmt: skip
    out = aug(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 0], out[:, 2])
    torch.testing.assert_close(out[:, :1], grayscale(x.float() / 255), atol=1e-5, rtol=0)


def test_brightness_jitter_stays_in_range_and_scales_pixels():
    x = torch.full((64, 3, 4, 4), 100, dtype=torch.uint8)
    aug = Augment(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter=(0.4, 0, 0, 0),
                  jitter_p=1.0, gray_p=0, mean=(0,), std=(1,))  # fmt: skip
    out = aug(x, torch.Generator().manual_seed(0))
    factors = out[:, 0, 0, 0] / (100 / 255)
    assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5
    assert factors.std() > 0.1  # really random per image
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))  # one factor per image


def test_augment_is_reproducible_and_shapes():
    x = _batch()
    aug = Augment(size=12)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 12, 12) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_single_channel_images_skip_colour_ops():
    x = _batch(c=1, s=8)
    out = Augment(rotate=15.0, mean=(0.3,), std=(0.4,))(x, torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_ratio": (0, 1)}, "crop_ratio"),
        ({"jitter": (0.4, 0.4, 0.4)}, "jitter"),
        ({"jitter": (0.4, 0.4, 0.4, 0.6)}, "jitter"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"gray_p": -0.1}, "gray_p"),
        ({"std": (0.0,)}, "std"),
        ({"erase_p": 1.2}, "erase_p"),
        ({"erase_scale": (0.0, 0.3)}, "erase_scale"),
        ({"erase_scale": (0.5, 0.2)}, "erase_scale"),
        ({"erase_ratio": (-1, 2)}, "erase_ratio"),
        ({"erase_value": float("nan")}, "erase_value"),
    ],
)
def test_augment_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Augment(**kwargs)


_NO_NOISE = dict(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter=(0, 0, 0, 0), gray_p=0)


def test_erasing_off_draws_nothing_and_changes_nothing():
    """erase_p=0 (every preset) leaves the views, and the generator's stream, as before."""
    x = _batch()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = Augment(size=12)(x, g1)
    b = Augment(size=12, erase_p=0.0, erase_scale=(0.5, 0.5))(x, g2)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_erasing_one_rectangle_of_the_drawn_area_at_the_value():
    """p=1: each image has exactly one axis-aligned rectangle set to erase_value, of the drawn
    area (to pixel rounding), and every other pixel equals the un-erased view."""
    x = _batch(b=64, s=32, seed=3)
    base = Augment(**_NO_NOISE)
    aug = Augment(**_NO_NOISE, erase_p=1.0, erase_scale=(0.25, 0.25), erase_ratio=(1, 1),
                  erase_value=-7.0)  # fmt: skip
    out, ref = aug(x, torch.Generator().manual_seed(0)), base(x, torch.Generator().manual_seed(0))
    erased = (out == -7.0).all(1)  # (B, H, W)
    for i in range(64):
        rows, cols = erased[i].any(1).nonzero().flatten(), erased[i].any(0).nonzero().flatten()
        box = erased[i, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and int(erased[i].sum()) == box.numel()  # one filled rectangle
        assert abs(len(rows) - 16) <= 1 and abs(len(cols) - 16) <= 1  # side sqrt(0.25) * 32
    keep = ~erased.unsqueeze(1).expand_as(out)
    torch.testing.assert_close(out[keep], ref[keep], atol=0, rtol=0)


def test_erasing_probability_and_area_range():
    x = torch.full((2000, 1, 16, 16), 128, dtype=torch.uint8)
    aug = Augment(**_NO_NOISE, erase_p=0.5, erase_scale=(0.1, 0.4), mean=(0,), std=(1,),
                  erase_value=-1.0)  # fmt: skip
    out = aug(x, torch.Generator().manual_seed(1))
    frac = (out == -1.0).flatten(1).float().mean(1)
    hit = frac > 0
    assert abs(hit.float().mean().item() - 0.5) < 0.05  # binomial sd 0.011
    # drawn areas in [0.1, 0.4]; pixel rounding of each side moves them by up to ~2/16 of it
    assert frac[hit].min() >= 0.1 * 0.7 and frac[hit].max() <= 0.4 * 1.3
    assert frac[hit].std() > 0.05  # really drawn per image


def test_augment_bad_input_rank():
    with pytest.raises(ValueError, match="x: expected a batch"):
        Augment()(torch.zeros(3, 8, 8, dtype=torch.uint8))


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
