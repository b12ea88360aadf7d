"""Multi-domain folders: layout, domains and classes, a missing class, an empty domain, a file
that does not decode; directory and archive agree."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch

from otcl.pipelines.sources.images import DataError
from otcl.pipelines.sources.images.domains import load_domain_folder, split_by_domain

Image = pytest.importorskip("PIL.Image")

LAYOUT = {"photo": ("dog", "horse"), "sketch": ("dog", "horse"), "art": ("dog",)}


def _write(root, layout=LAYOUT, n=4, size=(5, 5)):
    rng = np.random.default_rng(0)
    for dom, classes in layout.items():
        (root / dom).mkdir(parents=True, exist_ok=True)
        for c in classes:
            (root / dom / c).mkdir()
            for i in range(n):
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / dom / c / f"{i}.png")
    return root


def test_layout_domains_classes_and_a_missing_class(tmp_path):
    d = load_domain_folder(_write(tmp_path / "pacs"))
    assert d.domains == ["art", "photo", "sketch"] and d.classes == ["dog", "horse"]
    assert d.missing == {"art": ["horse"]}  # kept, and said
    n = d.train_x.shape[0] + d.test_x.shape[0]
    assert n == 5 * 4 and d.train_x.shape[1:] == (3, 5, 5)
    # every (domain, class) group split 3/1 (test_fraction 0.25 of 4, rounded up)
    for x_d, x_y, per in ((d.train_d, d.train_y, 3), (d.test_d, d.test_y, 1)):
        groups = torch.bincount(x_d * 2 + x_y, minlength=6).tolist()
        assert groups == [per, 0, per, per, per, per]
    # the pixels of an image are those of its file, with its class and domain
    px = np.asarray(Image.open(tmp_path / "pacs" / "art" / "dog" / "0.png"))
    hits = [
        i
        for i in range(d.train_x.shape[0])
        if np.array_equal(d.train_x[i].permute(1, 2, 0).numpy(), px)
    ] + [
        -1 - i
        for i in range(d.test_x.shape[0])
        if np.array_equal(d.test_x[i].permute(1, 2, 0).numpy(), px)
    ]
    assert len(hits) == 1
    i = hits[0]
    dom, cls = (d.train_d[i], d.train_y[i]) if i >= 0 else (d.test_d[-1 - i], d.test_y[-1 - i])
    assert (d.domains[dom], d.classes[cls]) == ("art", "dog")


def test_directory_and_archive_agree(tmp_path):
    root = _write(tmp_path / "pacs")
    arc = tmp_path / "pacs.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(root, arcname="kfold")  # a common prefix is allowed
    a, b = load_domain_folder(root), load_domain_folder(arc)
    assert a.domains == b.domains and a.classes == b.classes
    for k in ("train_x", "train_y", "train_d", "test_x", "test_y", "test_d"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k


@pytest.mark.parametrize("archive", [False, True])
def test_an_empty_domain_is_refused_in_one_line(tmp_path, archive):
    root = _write(tmp_path / "pacs")
    (root / "cartoon" / "dog").mkdir(parents=True)  # a domain folder without images
    path = root
    if archive:
        path = tmp_path / "pacs.tar"
        with tarfile.open(path, "w") as tf:
            tf.add(root, arcname="pacs")
    with pytest.raises(DataError, match="domain 'cartoon'") as e:
        load_domain_folder(path)
    assert "\n" not in str(e.value)


def test_one_domain_is_refused(tmp_path):
    with pytest.raises(DataError, match="at least two"):
        load_domain_folder(_write(tmp_path / "one", {"photo": ("dog",)}))


@pytest.mark.parametrize("archive", [False, True])
def test_an_image_that_does_not_decode_names_the_file(tmp_path, archive):
    root = _write(tmp_path / "pacs")
    (root / "photo" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    path = root
    if archive:
        path = tmp_path / "pacs.tgz"
        with tarfile.open(path, "w:gz") as tf:
            tf.add(root, arcname="pacs")
    with pytest.raises(DataError, match="broken.jpg: cannot decode image") as e:
        load_domain_folder(path)
    assert "\n" not in str(e.value) and "skip_corrupt" in str(e.value)
    with pytest.warns(UserWarning, match="broken.jpg"):
        d = load_domain_folder(path, skip_corrupt=True)
    assert len(d.skipped) == 1 and d.skipped[0].endswith("broken.jpg")
    assert d.train_x.shape[0] + d.test_x.shape[0] == 20


def test_a_domain_of_only_unreadable_images_is_empty(tmp_path):
    root = _write(tmp_path / "pacs")
    (root / "cartoon" / "dog").mkdir(parents=True)
    (root / "cartoon" / "dog" / "x.jpg").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="domain 'cartoon'"):
        load_domain_folder(root, skip_corrupt=True)


def test_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="expected a <root>/<domain>"):
        load_domain_folder(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    (flat / "dog").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat / "dog" / "a.png")
    with pytest.raises(DataError, match="outside a <domain>/<class>/ folder"):
        load_domain_folder(flat)
    sizes = _write(tmp_path / "sizes")
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(sizes / "photo" / "dog" / "big.png")
    with pytest.raises(DataError, match="differs from"):
        load_domain_folder(sizes)
    assert load_domain_folder(sizes, image_size=6).train_x.shape[-2:] == (6, 6)


def test_split_is_stratified_deterministic_and_disjoint():
    y = torch.arange(40) % 4
    d = torch.arange(40) // 20
    x = torch.zeros(40, 1, 2, 2)
    tr, te = split_by_domain(x, y, d, test_fraction=0.2, seed=3)
    tr2, te2 = split_by_domain(x, y, d, test_fraction=0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    assert set(tr.tolist()).isdisjoint(te.tolist()) and len(tr) + len(te) == 40
    assert torch.bincount(d[te] * 4 + y[te]).tolist() == [1] * 8
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_domain(x, y, d, test_fraction=1.0, seed=0)
