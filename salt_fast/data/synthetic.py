"""Synthetic videos: real encoded files for the quickstart, tests and probe tasks.

Each clip shows one shape (circle, square, triangle, cross) in a random colour moving at
constant speed in one of four directions over a static textured background. Three probe
tasks come from the same videos:

- ``motion``: label = direction index. A single frame cannot tell it (the start position
  is random and shapes are drawn with no orientation cue), so it needs temporal modelling.
- ``shape``: label = shape index; answerable from any single frame (appearance).
- ``colour``: label = index of the shape's colour in :data:`COLOURS` (appearance, easy;
  drawn at random, so not balanced).

:func:`write_video` is the shared helper other modules use to make video fixtures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "SHAPES",
    "SyntheticClips",
    "clip_labels",
    "make_synthetic_dataset",
    "pixel_speed",
    "render_clip",
    "write_video",
]

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "checker")
# Saturated colours, distinct from the muted backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 210, 40),
    "blue": (40, 60, 235),
    "yellow": (240, 225, 20),
    "cyan": (20, 225, 230),
    "magenta": (230, 30, 220),
    "white": (250, 250, 250),
}

# (encoder, pixel format, allowed container suffixes, encoder options).
# Options are picked for near-lossless output at real-time encoding speed.
_CODECS: dict[str, tuple[str, str, tuple[str, ...], dict[str, str]]] = {
    # VP9: constant quality (crf with b=0); realtime/cpu-used 8 is ~10x faster than
    # "good" and still gives < 2/255 mean error on the synthetic clips.
    "vp9": (
        "libvpx-vp9",
        "yuv420p",
        (".webm", ".mkv"),
        {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    ),
    "h264": (
        "libx264",
        "yuv420p",
        (".mp4", ".mkv"),
        {"crf": "12", "preset": "veryfast"},
    ),
    # MJPEG has no crf; bounding the quantiser gives high-quality JPEG frames.
    "mjpeg": ("mjpeg", "yuvj420p", (".avi", ".mkv"), {"qmin": "1", "qmax": "2"}),
}

# The moving shape: its radius as a fraction of the shorter side, and how far it travels over a
# video, as a fraction of the free span along its axis (drawn uniformly in this range).
RADIUS_FRACTION = 0.12
TRAVEL_FRACTION = (0.35, 0.6)

_DEFAULT_SUFFIX = {"vp9": ".webm", "h264": ".mp4", "mjpeg": ".avi"}
_TASKS = ("motion", "shape", "colour")


def write_video(
    path: str | Path,
    frames: np.ndarray | torch.Tensor,
    fps: float = 30,
    codec: str = "vp9",
) -> Path:
    """Encode RGB ``frames`` uint8 [T, H, W, 3] to ``path`` with PyAV; returns the path.

    ``codec``: "vp9" (.webm/.mkv, libvpx-vp9, yuv420p), "h264" (.mp4/.mkv, libx264,
    yuv420p) or "mjpeg" (.avi/.mkv, yuvj420p). A path without a suffix gets the codec's
    default one. H and W must be even (4:2:0 chroma subsampling). The parent folder is
    created if needed.
    """
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    encoder, pix_fmt, suffixes, options = _CODECS[codec]
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(_DEFAULT_SUFFIX[codec])
    if path.suffix.lower() not in suffixes:
        raise ValueError(
            f"codec {codec!r} needs a {'/'.join(suffixes)} file, got {path.name!r}"
        )
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise TypeError(f"frames must be uint8, got {frames.dtype}")
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be [T, H, W, 3], got shape {tuple(frames.shape)}"
        )
    t, h, w, _ = frames.shape
    if t < 1 or h < 2 or w < 2:
        raise ValueError(f"frames must be non-empty, got shape {tuple(frames.shape)}")
    if h % 2 or w % 2:
        raise ValueError(f"{pix_fmt} needs even height and width, got {h}x{w}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")

    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(
        1001
    )  # exact for 30, 25, 29.97 (30000/1001)...
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = dict(options)
        for frame in np.ascontiguousarray(frames):
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(frame, format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode(None):  # flush delayed frames
            container.mux(packet)
    return path


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: int
) -> np.ndarray:
    """Bilinearly upsampled random colour grid, float [H, W, 3] in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1, 3))

    def interp_matrix(n: int) -> np.ndarray:
        # Row i holds the linear-interpolation weights of output pixel i on the grid.
        pos = np.linspace(0, cells, n)
        lo = np.minimum(np.floor(pos).astype(int), cells - 1)
        frac = pos - lo
        m = np.zeros((n, cells + 1))
        m[np.arange(n), lo] = 1 - frac
        m[np.arange(n), lo + 1] = frac
        return m

    return np.einsum(
        "hi,ijc,wj->hwc", interp_matrix(height), grid, interp_matrix(width)
    )


def _background(
    rng: np.random.Generator, kind: str, height: int, width: int
) -> np.ndarray:
    """A static, non-flat, muted background, float [H, W, 3] in [0, 255]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if kind == "noise":
        tex = _smooth_noise(rng, height, width, cells=int(rng.integers(3, 7)))
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(12, 32)  # not finer: 4:2:0 chroma would blur it
        wave = np.sin(
            2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
            + rng.uniform(0, 2 * np.pi)
        )
        tint_a, tint_b = rng.random(3), rng.random(3)
        tex = (
            0.5 * (1 + wave)[..., None] * tint_a + 0.5 * (1 - wave)[..., None] * tint_b
        )
    elif kind == "checker":
        cell = rng.uniform(10, 24)
        oy, ox = rng.uniform(0, 2 * cell, size=2)
        # Soft-edged checker (a clipped product of sines): hard colour edges cost
        # several levels of error after 4:2:0 chroma subsampling.
        prod = np.sin(np.pi * (yy + oy) / cell) * np.sin(np.pi * (xx + ox) / cell)
        parity = np.clip(0.5 + 2.0 * prod, 0.0, 1.0)[..., None]
        tex = parity * rng.random(3) + (1 - parity) * rng.random(3)
    elif kind == "plain":
        tex = np.broadcast_to(rng.random(3), (height, width, 3))
    else:
        raise ValueError(
            f"background must be one of {BACKGROUNDS}, 'plain' or 'random', got {kind!r}"
        )
    # Muted range [40, 160] so saturated shapes stay visible on every background.
    return 40 + 120 * tex


def _shape_mask(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> np.ndarray:
    """Boolean [H, W] mask of ``shape`` centred at (cy, cx), within the box +-r."""
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        s = r / np.sqrt(2) * 1.15  # slightly larger than inscribed; still within r
        return (np.abs(dy) <= s) & (np.abs(dx) <= s)
    if shape == "triangle":
        # Upward-pointing isosceles triangle; fixed orientation, so it leaks no motion cue.
        top, bottom = -r, r * 0.75
        half_base = r * 0.95
        inside_y = (dy >= top) & (dy <= bottom)
        half_width = half_base * (dy - top) / (bottom - top)
        return inside_y & (np.abs(dx) <= half_width)
    if shape == "cross":
        arm = r * 0.32
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r * 0.95)) | (
            (np.abs(dx) <= arm) & (np.abs(dy) <= r * 0.95)
        )
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _coverage(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> np.ndarray:
    """Anti-aliased mask, float [H, W] in [0, 1]: 2x2 supersampled pixel coverage.

    Soft edges keep sub-pixel motion smooth and the codecs' error low; pixels fully
    inside the shape get exactly the shape colour.
    """
    cover = np.zeros(yy.shape)
    for oy in (-0.25, 0.25):
        for ox in (-0.25, 0.25):
            cover += _shape_mask(shape, yy + oy, xx + ox, cy, cx, r)
    return cover / 4


def render_clip(
    rng: np.random.Generator,
    num_frames: int,
    height: int,
    width: int,
    shape: str,
    colour: tuple[int, int, int] | str,
    direction: str,
    background: str = "random",
    distractor: bool = False,
    radius: float | None = None,
) -> np.ndarray:
    """A shape moving at constant velocity over a static texture: uint8 [T, H, W, 3].

    ``shape`` in :data:`SHAPES`, ``direction`` in :data:`DIRECTIONS`, ``colour`` an RGB
    triple or a :data:`COLOURS` name, ``background`` in :data:`BACKGROUNDS`, "random" (one of
    them) or "plain" (one flat muted colour).
    The start position is random and the shape stays fully inside every frame; over the
    clip it travels 35-60% of the free span (at least ~16 px at 64x64), so the direction
    is visible from any two distant frames. One frame at an unknown time gives no cue:
    pooled over time, the position along the motion axis (uniform start plus uniform
    fraction of the travel) has the same symmetric distribution for opposite
    directions; only the first or last frame, if known to be one, hints. ``distractor``
    adds a smaller static shape of another colour (no motion, so it cannot be confused
    with the label). ``radius`` defaults to 12% of the shorter side. Deterministic given
    the state of ``rng``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if num_frames < 2:
        raise ValueError(f"need at least 2 frames to show motion, got {num_frames}")
    if isinstance(colour, str):
        if colour not in COLOURS:
            raise ValueError(f"colour must be an RGB triple or one of {list(COLOURS)}")
        colour = COLOURS[colour]
    rgb = np.asarray(colour, dtype=np.float64)
    if rgb.shape != (3,) or np.any(rgb < 0) or np.any(rgb > 255):
        raise ValueError(f"colour must be 3 values in [0, 255], got {colour!r}")
    r = RADIUS_FRACTION * min(height, width) if radius is None else float(radius)
    margin = r + 1.0  # the shape (inside radius r) never touches the frame border
    axis_len = width if direction in ("left", "right") else height
    free = axis_len - 2 * margin
    if r < 2 or free < 8 or min(height, width) - 2 * margin < 0:
        raise ValueError(
            f"frame {height}x{width} too small for a moving shape of radius {r:.1f}"
        )

    bg_kind = (
        BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        if background == "random"
        else background
    )
    frame0 = _background(rng, bg_kind, height, width)

    # Travel along the motion axis, start so that the whole path stays inside.
    travel = rng.uniform(*TRAVEL_FRACTION) * free
    start = margin + rng.uniform(0, free - travel)
    sign = 1.0 if direction in ("right", "down") else -1.0
    if sign < 0:
        start += travel  # moving towards smaller coordinates: start at the far end
    other_len = height if direction in ("left", "right") else width
    other = rng.uniform(margin, other_len - margin)
    along = start + sign * travel * np.arange(num_frames) / (num_frames - 1)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if distractor:
        names = [n for n, c in COLOURS.items() if not np.allclose(c, rgb)]
        d_rgb = np.asarray(
            COLOURS[names[int(rng.integers(len(names)))]], dtype=np.float64
        )
        d_shape = SHAPES[int(rng.integers(len(SHAPES)))]
        d_r = 0.6 * r
        d_cy = rng.uniform(d_r + 1, height - d_r - 1)
        d_cx = rng.uniform(d_r + 1, width - d_r - 1)
        d_cover = _coverage(d_shape, yy, xx, d_cy, d_cx, d_r)[..., None]
        frame0 = frame0 * (1 - d_cover) + d_rgb * d_cover

    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t, a in enumerate(along):
        cy, cx = (other, a) if direction in ("left", "right") else (a, other)
        cover = _coverage(shape, yy, xx, cy, cx, r)[..., None]
        out[t] = np.clip(np.rint(frame0 * (1 - cover) + rgb * cover), 0, 255)
    return out


def pixel_speed(size: int, video_frames: int = 32, frame_step: int = 1) -> tuple[float, float]:
    """The (slowest, fastest) speed of the shape, in pixels per sampled frame, in square synthetic
    videos of side ``size`` and ``video_frames`` frames, sampled every ``frame_step`` frames.

    :func:`render_clip` moves the shape by ``TRAVEL_FRACTION`` of the free span over the video;
    a clip that samples every ``frame_step``-th frame sees ``frame_step`` times the per-frame
    displacement (64 px, 32 frames, step 4, as ``benchmarks/reproduce_small.py`` trains:
    2.1-3.6 px per training frame).
    """
    if video_frames < 2 or frame_step < 1:
        raise ValueError(f"need video_frames >= 2 and frame_step >= 1, got {video_frames} and {frame_step}")
    free = size - 2 * (RADIUS_FRACTION * size + 1.0)
    return tuple(f * free / (video_frames - 1) * frame_step for f in TRAVEL_FRACTION)


def clip_labels(index: int) -> tuple[int, int]:
    """``(direction index, shape index)`` of sample ``index`` in a synthetic dataset.

    A Latin square: every 4 consecutive indices cover all directions and all shapes, and
    every 16 cover all direction x shape pairs, so labels stay balanced (and the two tasks
    independent) for any multiple of 4 samples.
    """
    return index % 4, (index + index // 4) % 4


def _render_sample(
    seed: int, index: int, frames: int, height: int, width: int, background: str = "random"
) -> tuple[np.ndarray, int, int, int]:
    """``(clip, direction, shape, colour)`` of sample ``index``; the colour is drawn, not balanced."""
    direction, shape = clip_labels(index)
    rng = np.random.default_rng([seed, index])
    colour = int(rng.integers(len(COLOURS)))
    clip = render_clip(
        rng, frames, height, width, SHAPES[shape], COLOURS[list(COLOURS)[colour]], DIRECTIONS[direction], background
    )
    return clip, direction, shape, colour


def make_synthetic_dataset(
    root: str | Path,
    num_videos: int = 64,
    frames: int = 32,
    height: int = 128,
    width: int = 128,
    fps: float = 30,
    codec: str = "vp9",
    seed: int = 0,
    val_fraction: float = 0.25,
    background: str = "random",
) -> dict[str, Path]:
    """Write ``num_videos`` synthetic clips and their list files under ``root``.

    Layout: ``root/videos/vid_00000.webm ...``, the list files ``motion_train.txt``,
    ``motion_val.txt`` (label = direction index), ``shape_train.txt``, ``shape_val.txt``
    (label = shape index), ``colour_train.txt``, ``colour_val.txt`` (colour index), in
    ``path label`` format with paths relative to ``root``, and ``labels.json`` (class names
    and generation settings). Train and val share no video; all tasks use the same split.
    Motion and shape labels are balanced exactly when ``num_videos`` and the
    val count ``round(num_videos * val_fraction)`` are multiples of 4. Deterministic given
    ``seed``. ``background``: "random" (a textured background per video) or any kind
    :func:`render_clip` accepts ("plain": one flat colour). Returns ``{"motion_train",
    "motion_val", "shape_train", "shape_val", "colour_train", "colour_val", "labels",
    "videos"}`` -> paths.
    """
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_val = round(num_videos * val_fraction)
    if num_val < 1 or num_videos - num_val < 1:
        raise ValueError(
            f"{num_videos} videos with val_fraction={val_fraction} leave an empty split"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(root)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)

    rows: list[tuple[str, int, int, int]] = []
    for i in range(num_videos):
        clip, direction, shape, colour = _render_sample(seed, i, frames, height, width, background)
        out = write_video(
            videos / f"vid_{i:05d}{_DEFAULT_SUFFIX[codec]}", clip, fps, codec
        )
        rows.append((out.relative_to(root).as_posix(), direction, shape, colour))

    # The first num_val indices (balanced by the Latin square) are val; list order is
    # shuffled so that files are not sorted by label.
    order = np.random.default_rng([seed, num_videos, 1]).permutation(num_videos)
    splits = {
        "val": [i for i in order if i < num_val],
        "train": [i for i in order if i >= num_val],
    }
    result: dict[str, Path] = {}
    for task, col in (("motion", 1), ("shape", 2), ("colour", 3)):
        for split, ids in splits.items():
            p = root / f"{task}_{split}.txt"
            p.write_text(
                "".join(f"{rows[i][0]} {rows[i][col]}\n" for i in ids), encoding="utf-8"
            )
            result[f"{task}_{split}"] = p
    meta = {
        "motion": list(DIRECTIONS),
        "shape": list(SHAPES),
        "colour": list(COLOURS),
        "num_videos": num_videos,
        "num_val": num_val,
        "frames": frames,
        "height": height,
        "width": width,
        "fps": fps,
        "codec": codec,
        "seed": seed,
        "background": background,
    }
    labels = root / "labels.json"
    labels.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    result["labels"] = labels
    result["videos"] = videos
    return result


class SyntheticClips(Dataset):
    """In-memory synthetic clips for fast tests: ``ds[i] -> (uint8 [T, H, W, 3], label)``.

    Rendered on the fly with :func:`render_clip`, deterministic per ``(seed, index)``;
    the same sample as video ``index`` of ``make_synthetic_dataset`` with equal settings
    (before encoding). ``task="motion"``: label = direction index; ``"shape"``: shape;
    ``"colour"``: colour index.
    """

    def __init__(
        self,
        num_samples: int,
        frames: int = 16,
        height: int = 64,
        width: int = 64,
        task: str = "motion",
        seed: int = 0,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples, self.frames, self.height, self.width = (
            num_samples,
            frames,
            height,
            width,
        )
        self.task, self.seed = task, seed
        self.classes: Sequence[str] = (DIRECTIONS, SHAPES, tuple(COLOURS))[_TASKS.index(task)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(
                f"index {index} out of range for {self.num_samples} samples"
            )
        index %= self.num_samples
        clip, *labels = _render_sample(
            self.seed, index, self.frames, self.height, self.width
        )
        return torch.from_numpy(clip), labels[_TASKS.index(self.task)]
