"""The style-domain stand-in: deterministic, disjoint stratified sources, visibly different styles."""

from __future__ import annotations

import pytest
import torch

from otcl.pipelines.sources.images import load_dataset
from otcl.pipelines.sources.images.styles import (
    STYLES,
    save_domain_grids,
    style_domains,
    stylize,
)


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    return torch.cat([d.train_x, d.test_x]), torch.cat([d.train_y, d.test_y]), d.classes


@pytest.fixture(scope="module")
def styled(digits):
    x, y, classes = digits
    return style_domains(x, y, classes, size=16, seed=0)


def test_deterministic(digits, styled):
    x, y, classes = digits
    again = style_domains(x, y, classes, size=16, seed=0)
    for k in ("train_x", "train_y", "train_d", "test_x", "test_y", "test_d", "source"):
        assert torch.equal(getattr(styled, k), getattr(again, k)), k
    other = style_domains(x, y, classes, size=16, seed=1)
    assert not torch.equal(other.source, styled.source)


def test_domains_draw_disjoint_stratified_subsets(digits, styled):
    x, y, _ = digits
    src = styled.source
    assert src.numel() == x.shape[0] == src.unique().numel()  # every image once, in one domain
    d = torch.cat([styled.train_d, styled.test_d])
    labels = torch.cat([styled.train_y, styled.test_y])
    assert torch.equal(labels, y[src])  # each image keeps its source's class
    per = [set(src[d == j].tolist()) for j in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert per[i].isdisjoint(per[j])
    counts = torch.stack([torch.bincount(labels[d == j], minlength=10) for j in range(4)])
    assert (counts.max(0).values - counts.min(0).values).max() <= 1  # classes dealt evenly
    assert styled.domains == list(STYLES) and styled.image_shape == (3, 16, 16)


def test_per_domain_caps_each_domain(digits):
    x, y, classes = digits
    d = style_domains(x, y, classes, per_domain=100, seed=0)
    sizes = torch.bincount(torch.cat([d.train_d, d.test_d]))
    assert (
        sizes.min() >= 95 and sizes.max() <= 110 and d.source.unique().numel() == d.source.numel()
    )
    with pytest.raises(ValueError, match="per_domain"):
        style_domains(x, y, classes, per_domain=0)


def test_styles_differ_visibly(digits):
    x = digits[0][:200]
    imgs = {s: stylize(x, s, seed=0, size=16).float() / 255 for s in STYLES}
    sat = {s: (v.amax(1) - v.amin(1)).mean().item() for s, v in imgs.items()}
    bright = {s: v.mean().item() for s, v in imgs.items()}
    assert sat["photo"] == 0 and sat["sketch"] == 0  # grey
    assert sat["cartoon"] > 0.15 and sat["painting"] > 0.15  # coloured
    assert bright["sketch"] > bright["photo"] + 0.1  # dark lines on paper vs bright strokes
    # the cartoon is flat: at most 4 levels per channel off the black outlines
    assert (imgs["cartoon"] * 3).sub((imgs["cartoon"] * 3).round()).abs().max() < 1e-2
    # the same pixels in another style are far apart
    for a in STYLES:
        for b in STYLES:
            if a < b:
                assert (imgs[a] - imgs[b]).abs().mean() > 0.1, (a, b)


def test_colour_source_and_bad_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 12, 12), generator=g, dtype=torch.uint8)
    for s in STYLES:
        out = stylize(x, s, seed=0)
        assert out.shape == (5, 3, 12, 12) and out.dtype == torch.uint8
    assert torch.equal(stylize(x, "photo", seed=0), x)
    with pytest.raises(ValueError, match="style: expected one of"):
        stylize(x, "oil", seed=0)
    with pytest.raises(ValueError, match="images: expected uint8"):
        stylize(x.float(), "photo", seed=0)


def test_grids(tmp_path, styled):
    pytest.importorskip("PIL")
    paths = save_domain_grids(styled, tmp_path, n=16)
    assert [p.name for p in paths] == [f"domain-{s}.png" for s in STYLES]
    from PIL import Image

    with Image.open(paths[0]) as im:
        assert im.size == (3 * (8 * 17 + 1), 3 * (2 * 17 + 1))
