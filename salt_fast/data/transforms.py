"""Clips to normalized tensors: training augmentation and evaluation views.

Input: uint8 clip [T, H, W, 3] (as decoded). Output: float32 [3, T, S, S] normalized with
ImageNet mean/std after scaling to [0, 1] (or [V, 3, T, S, S] for V evaluation views).

Cost: the crop is taken on the uint8 clip (a view, no copy), only the crop is converted
to float once and resized (bilinear, antialias) with ``torch.nn.functional.interpolate``
on a channels-last layout, and the normalization is one fused multiply-add. No
torchvision dependency.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Generator = torch.Generator | np.random.Generator | None


def _uniform(generator: Generator, low: float, high: float) -> float:
    if isinstance(generator, np.random.Generator):
        return float(generator.uniform(low, high))
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: Generator, high_inclusive: int) -> int:
    """Uniform integer in [0, high_inclusive]."""
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, high_inclusive + 1))
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator))


def sample_crop(
    height: int,
    width: int,
    generator: Generator = None,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (0.75, 1.35),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Random-resized-crop box, the RandomResizedCrop rule (Inception-style).

    Up to ``attempts`` times: area fraction ~ U(scale), aspect w/h ~ log-uniform(ratio);
    accept the first box that fits, at a uniform position. Otherwise fall back to the
    largest centred box whose aspect is clamped into ``ratio``.

    Args:
        height, width: frame size.
        generator: torch.Generator or numpy Generator (None: torch's global RNG).

    Returns:
        (top, left, h, w) with 1 <= h <= height, 1 <= w <= width.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * _uniform(generator, scale[0], scale[1])
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(generator, height - h)
            left = _randint(generator, width - w)
            return top, left, h, w
    # Fallback: centre crop, aspect clamped into the allowed range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _check_clip(clip: torch.Tensor) -> None:
    if clip.dim() != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected a clip [T, H, W, 3], got shape {tuple(clip.shape)}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 clip, got {clip.dtype}")


class _Normalize:
    """(x / 255 - mean) / std as one multiply-add: x * a + b, per channel."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        m = torch.tensor(mean, dtype=torch.float32)
        s = torch.tensor(std, dtype=torch.float32)
        self.a = (1.0 / (255.0 * s)).view(1, 3, 1, 1)
        self.b = (-m / s).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.b, x, self.a)


def _crop_resize(
    clip: torch.Tensor, top: int, left: int, h: int, w: int, size: int
) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, size, size] (values 0..255), crop then resize.

    The permute keeps the memory channels-last, which is the fast layout for CPU
    interpolate; float conversion touches only the cropped pixels.
    """
    crop = clip[:, top : top + h, left : left + w, :].permute(0, 3, 1, 2).float()
    if (h, w) == (size, size):
        return crop
    return F.interpolate(
        crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


class TrainTransform:
    """Random resized crop (same box for all frames) + horizontal flip + normalize.

    Args:
        size: output side S.
        scale: area fraction range of the crop.
        ratio: aspect (w/h) range, sampled log-uniformly.
        hflip: probability of mirroring the whole clip.

    Call: ``transform(clip uint8 [T, H, W, 3], generator=None) -> float32 [3, T, S, S]``.
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (0.75, 1.35),
        hflip: float = 0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip
        self.normalize = _Normalize(mean, std)

    def __call__(self, clip: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check_clip(clip)
        _, height, width, _ = clip.shape
        top, left, h, w = sample_crop(height, width, generator, self.scale, self.ratio)
        # Draw the flip even when hflip is 0/1 so the generator's stream does not depend on it.
        flip = _uniform(generator, 0.0, 1.0) < self.hflip
        x = _crop_resize(clip, top, left, h, w, self.size)
        if flip:
            x = x.flip(-1)
        x = self.normalize(x)  # [T, 3, S, S]
        return x.permute(1, 0, 2, 3).contiguous()  # [3, T, S, S]


class EvalTransform:
    """Deterministic evaluation views.

    Convention (V-JEPA 2 multi-view eval): the short side is resized to ``resize``
    (default ``size``), then ``size x size`` crops are taken: 1 centred crop, or 3 crops
    at the start/centre/end of the long side (left/centre/right for landscape,
    top/centre/bottom for portrait). To mimic the classic single-view "resize to 256,
    centre-crop 224", pass ``resize=int(size * 256 / 224)``.

    Implemented crop-first: each view's source box (side ``short * size / resize``) is cut
    from the uint8 clip and only that box is resized to ``size``.

    Call: ``transform(clip uint8 [T, H, W, 3]) -> float32 [3, T, S, S]`` (crops=1) or
    ``[crops, 3, T, S, S]`` (crops=3).
    """

    def __init__(
        self,
        size: int = 224,
        crops: int = 1,
        resize: int | None = None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ) -> None:
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 or 3, got {crops}")
        resize = size if resize is None else resize
        if resize < size:
            raise ValueError(f"resize ({resize}) must be >= size ({size})")
        self.size, self.crops, self.resize = size, crops, resize
        self.normalize = _Normalize(mean, std)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Source boxes (top, left, side, side) of the views, in source pixels."""
        short = min(height, width)
        side = max(1, min(short, round(short * self.size / self.resize)))
        centre = ((height - side) // 2, (width - side) // 2)
        if self.crops == 1:
            return [(centre[0], centre[1], side, side)]
        if width >= height:  # views along the width
            lefts = [0, (width - side) // 2, width - side]
            return [(centre[0], left, side, side) for left in lefts]
        tops = [0, (height - side) // 2, height - side]
        return [(top, centre[1], side, side) for top in tops]

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_clip(clip)
        _, height, width, _ = clip.shape
        views = []
        for top, left, h, w in self.boxes(height, width):
            x = self.normalize(_crop_resize(clip, top, left, h, w, self.size))
            views.append(x.permute(1, 0, 2, 3))
        if self.crops == 1:
            return views[0].contiguous()
        return torch.stack(views)
