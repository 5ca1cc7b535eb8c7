"""Clips to normalized tensors: training augmentation and evaluation views.

Input: uint8 clip [T, H, W, 3] (as decoded). Output: float32 [3, T, S, S] normalized with
ImageNet mean/std after scaling to [0, 1] (or [V, 3, T, S, S] for V evaluation views).

Cost: everything up to the normalisation stays in uint8. The crop is a view of the clip,
it is resized in uint8 by ``torch.nn.functional.interpolate`` (bilinear with
``antialias=True``: a triangle filter widened by the scale factor when shrinking, as PIL
does; plain bilinear when enlarging; torch's vectorised channels-last uint8 kernel, ~20x
faster than the same resize in float), then flipped and laid out as ``[3, T, S, S]`` in
one copy of the bytes. Only then are floats made (``Normalize``: x * a + b per channel),
inside the loader straight into the batch tensor. The rounding to uint8 after the resize
costs at most 0.5/255 per pixel. No torchvision dependency.
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


class Normalize:
    """uint8 pixels ``[..., 3, T, S, S]`` -> float32 ``(x / 255 - mean) / std`` = x * a + b per
    channel, optionally written into ``out`` (for example a slot of a batch tensor, so no
    per-clip float copy exists)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        m = torch.tensor(mean, dtype=torch.float32)
        s = torch.tensor(std, dtype=torch.float32)
        self.a = (1.0 / (255.0 * s)).view(3, 1, 1, 1)
        self.b = (-m / s).view(3, 1, 1, 1)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            out = torch.empty(x.shape, dtype=torch.float32)
        # A uint8 -> float copy, then two in-place passes: ~3x faster than one mixed-dtype addcmul.
        return out.copy_(x).mul_(self.a).add_(self.b)


def _crop_resize(clip: torch.Tensor, top: int, left: int, h: int, w: int, size: int, flip: bool = False) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [3, T, size, size] contiguous: crop, resize, flip.

    The crop is a view; the resize reads it in place (antialiased bilinear, see the module
    docstring) and the layout change (and the flip) is one copy of the bytes.
    """
    x = clip[:, top : top + h, left : left + w, :].permute(0, 3, 1, 2)
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.permute(1, 0, 2, 3)
    return (x.flip(-1) if flip else x).contiguous()


class TrainTransform:
    """Random resized crop (same box for all frames) + horizontal flip + normalize.

    Args:
        size: output side S.
        scale: area fraction range of the crop.
        ratio: aspect (w/h) range, sampled log-uniformly.
        hflip: probability of mirroring the whole clip.

    Call: ``transform(clip uint8 [T, H, W, 3], generator=None) -> float32 [3, T, S, S]``,
    which is ``normalize(pixels(clip, generator))``: ``pixels`` gives the augmented uint8
    ``[3, T, S, S]`` and :class:`Normalize` ``normalize`` the floats (the loader applies it
    when it assembles the batch).
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
        self.normalize = Normalize(mean, std)

    def pixels(self, clip: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """The augmented clip before normalisation: uint8 ``[3, T, S, S]``."""
        _check_clip(clip)
        _, height, width, _ = clip.shape
        top, left, h, w = sample_crop(height, width, generator, self.scale, self.ratio)
        # Draw the flip even when hflip is 0/1 so the generator's stream does not depend on it.
        flip = _uniform(generator, 0.0, 1.0) < self.hflip
        return _crop_resize(clip, top, left, h, w, self.size, flip)

    def __call__(self, clip: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return self.normalize(self.pixels(clip, generator))  # [3, T, S, S]


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
        self.normalize = Normalize(mean, std)

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

    def pixels(self, clip: torch.Tensor) -> torch.Tensor:
        """The views before normalisation: uint8 ``[3, T, S, S]`` or ``[crops, 3, T, S, S]``."""
        _check_clip(clip)
        _, height, width, _ = clip.shape
        views = [_crop_resize(clip, top, left, h, w, self.size) for top, left, h, w in self.boxes(height, width)]
        return views[0] if self.crops == 1 else torch.stack(views)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.pixels(clip))
