"""Training and evaluation transforms: shapes, statistics, crop law, flips, views."""

import math

import numpy as np
import pytest
import torch

from salt_fast.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    sample_crop,
)


def _random_clip(t=4, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g)


def _denorm(x):
    """[3, T, S, S] normalized -> [3, T, S, S] in 0..255."""
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (x * s + m) * 255


def test_train_shapes_dtype():
    out = TrainTransform(size=32)(_random_clip(), torch.Generator().manual_seed(1))
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous()


def test_mean_colour_maps_to_zero():
    colour = torch.tensor([round(m * 255) for m in IMAGENET_MEAN], dtype=torch.uint8)
    clip = colour.view(1, 1, 1, 3).expand(3, 40, 50, 3).contiguous()
    for out in (TrainTransform(size=24)(clip), EvalTransform(size=24, crops=3)(clip)):
        # Rounding the mean to a byte costs at most 0.5/255/std ~ 0.009.
        assert out.abs().max() < 0.01


def test_uniform_noise_statistics():
    # Identity-size eval crop: no interpolation, so the statistics are exact.
    clip = _random_clip(t=8, h=64, w=64, seed=3)
    out = EvalTransform(size=64)(clip)
    for c in range(3):
        # U{0..255}/255 has mean 0.5 and std ~0.2898.
        mean = (0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        std = math.sqrt((256**2 - 1) / 12) / 255 / IMAGENET_STD[c]
        assert out[c].mean().item() == pytest.approx(mean, abs=0.02)
        assert out[c].std().item() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("hw", [(240, 320), (320, 240), (224, 224), (100, 400)])
def test_crop_law(hw):
    height, width = hw
    g = torch.Generator().manual_seed(0)
    fracs, logr = [], []
    for _ in range(2000):
        top, left, h, w = sample_crop(height, width, g)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        fracs.append(h * w / (height * width))
        logr.append(math.log(w / h))
    fracs, logr = np.array(fracs), np.array(logr)
    # Rounding each side to an integer moves area and aspect by < 1%.
    tol = 0.02
    if (height, width) != (100, 400):
        assert fracs.min() >= 0.3 - tol and fracs.max() <= 1.0 + tol
        assert logr.min() >= math.log(0.75) - tol and logr.max() <= math.log(1.35) + tol
        # The whole range is used, not just a corner of it.
        assert fracs.min() < 0.35 and fracs.max() > 0.8
    else:
        # 4:1 frame: large areas cannot fit, so fallback crops (full height) appear.
        assert (logr <= math.log(1.35) + tol).all()


def test_crop_fallback_clamps_ratio():
    # A 1000:1 frame never fits an attempt: centre box, aspect clamped to 1.35.
    top, left, h, w = sample_crop(2, 2000, torch.Generator().manual_seed(0))
    assert (top, h) == (0, 2) and w == round(2 * 1.35) and left == (2000 - w) // 2


def test_sample_crop_numpy_generator():
    a = sample_crop(240, 320, np.random.default_rng(5))
    b = sample_crop(240, 320, np.random.default_rng(5))
    assert a == b


def test_flip_mirrors():
    clip = _random_clip(t=2, h=32, w=32, seed=4)
    # Full-frame crop at the output size: no resampling, so flips are exact.
    no = TrainTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)(clip)
    yes = TrainTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)(clip)
    torch.testing.assert_close(yes, no.flip(-1))
    torch.testing.assert_close(
        _denorm(no), clip.permute(3, 0, 1, 2).float(), atol=1e-3, rtol=0
    )


def test_same_crop_for_every_frame():
    # Every frame equals frame 0 plus a per-frame constant: the outputs must differ by that
    # constant only, which holds iff all frames were cropped and resized the same way.
    base = _random_clip(t=1, h=60, w=80, seed=5).clamp(max=200)
    clip = torch.cat([base + 10 * k for k in range(5)])
    out = _denorm(TrainTransform(size=28)(clip, torch.Generator().manual_seed(7)))
    for k in range(1, 5):
        torch.testing.assert_close(
            out[:, k] - out[:, 0],
            torch.full_like(out[:, 0], 10.0 * k),
            atol=1e-2,
            rtol=0,
        )


def test_train_deterministic_with_seed():
    clip = _random_clip(h=60, w=90)
    t = TrainTransform(size=32)
    a = t(clip, torch.Generator().manual_seed(11))
    b = t(clip, torch.Generator().manual_seed(11))
    c = t(clip, torch.Generator().manual_seed(12))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)


def test_eval_single_view_is_centre():
    clip = _random_clip(t=2, h=40, w=60, seed=6)
    out = EvalTransform(size=40)(clip)
    assert out.shape == (3, 2, 40, 40)
    # Short side already equals size: the centre crop is an exact pixel copy.
    torch.testing.assert_close(
        _denorm(out), clip[:, :, 10:50].permute(3, 0, 1, 2).float(), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("hw", [(40, 100), (100, 40)])
def test_eval_three_views_cover_edges(hw):
    height, width = hw
    clip = _random_clip(t=2, h=height, w=width, seed=7)
    out = EvalTransform(size=40, crops=3)(clip)
    assert out.shape == (3, 3, 2, 40, 40) and out.dtype == torch.float32
    src = clip.permute(3, 0, 1, 2).float()  # [3, T, H, W]
    if width > height:
        first, last = src[..., :, :40], src[..., :, -40:]
    else:
        first, last = src[..., :40, :], src[..., -40:, :]
    torch.testing.assert_close(_denorm(out[0]), first, atol=1e-3, rtol=0)
    torch.testing.assert_close(_denorm(out[2]), last, atol=1e-3, rtol=0)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


def test_eval_resize_shrinks_source_box():
    t = EvalTransform(size=224, resize=256)
    ((top, left, h, w),) = t.boxes(256, 340)
    assert h == w == 224 and top == 16 and left == (340 - 224) // 2
    out = t(_random_clip(t=1, h=256, w=340))
    assert out.shape == (3, 1, 224, 224)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        TrainTransform()(torch.zeros(2, 8, 8, 3))  # float, not uint8
    with pytest.raises(ValueError):
        EvalTransform()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))  # channels first
    with pytest.raises(ValueError):
        EvalTransform(crops=2)


@pytest.mark.parametrize("hw", [(240, 320), (90, 120)])  # shrinking and enlarging to 64
def test_uint8_resize_matches_the_float_antialiased_resize(hw):
    # The crop is resized in uint8 (antialiased bilinear); against the same resize in float
    # (what the transform did before) it differs only by the rounding to a byte.
    g = torch.Generator().manual_seed(2)
    coarse = torch.randint(0, 256, (2, 3, hw[0] // 8, hw[1] // 8), generator=g, dtype=torch.float32)
    clip = torch.nn.functional.interpolate(coarse, size=hw, mode="bicubic").clamp(0, 255).round().to(torch.uint8)
    clip = clip.permute(0, 2, 3, 1).contiguous()  # [T, H, W, 3], smooth with detail
    t = TrainTransform(size=64, scale=(1.0, 1.0), ratio=(hw[1] / hw[0],) * 2, hflip=0.0)
    got = t.pixels(clip, torch.Generator().manual_seed(0)).float()  # the whole frame: a pure resize
    ref = torch.nn.functional.interpolate(
        clip.permute(0, 3, 1, 2).float(), size=(64, 64), mode="bilinear", antialias=True, align_corners=False
    ).permute(1, 0, 2, 3)
    assert (got - ref).abs().max() <= 1.0
    torch.testing.assert_close(_denorm(t(clip, torch.Generator().manual_seed(0))), got, atol=1e-3, rtol=0)
