"""The batched on-device augmentations: colour space, flips, jitter, erasing, bad arguments."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from otcl.pipelines.sources.images import Augment, grayscale, hsv_to_rgb, rgb_to_hsv


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
