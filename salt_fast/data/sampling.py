"""Which frames of a video form a clip.

A clip is ``clip_frames`` frames taken every ``frame_step`` frames, so it spans
``span = (clip_frames - 1) * frame_step + 1`` source frames (16 x 4 -> 61 frames, about
2 s at 30 fps).

Short-video rule (as V-JEPA / V-JEPA 2 pad short videos): when ``num_frames < span`` the
step is *not* reduced; the clip starts at frame 0, runs with the same step, and every
index past the last frame is replaced by the last frame (``num_frames - 1``). The clip
therefore keeps its temporal scale and ends in a freeze-frame. The same clamp applies to
an explicit ``start`` whose clip would run past the end.
"""

from __future__ import annotations

import math

import numpy as np


def clip_span(clip_frames: int, frame_step: int) -> int:
    """Number of source frames covered by one clip: (clip_frames - 1) * frame_step + 1."""
    return (clip_frames - 1) * frame_step + 1


def _check(num_frames: int, clip_frames: int, frame_step: int) -> None:
    if num_frames <= 0:
        raise ValueError(f"video has no frames (num_frames={num_frames})")
    if clip_frames <= 0:
        raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
    if frame_step <= 0:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")


def clip_indices(
    num_frames: int,
    clip_frames: int = 16,
    frame_step: int = 4,
    *,
    start: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices of one clip.

    Args:
        num_frames: frames in the video (> 0).
        clip_frames: frames in the clip.
        frame_step: distance between consecutive clip frames (>= 1).
        start: first frame (evaluation). ``None`` (training): uniform over the valid starts
            ``0 .. num_frames - span``, drawn from ``rng`` (a fresh default generator if
            None); a short video always starts at 0.
        rng: numpy generator for the random start.

    Returns:
        int64 array [clip_frames], non-decreasing, every value in [0, num_frames - 1];
        see the module docstring for the short-video rule (repeat the last frame).

    Raises:
        ValueError: ``num_frames <= 0``, bad sizes, or ``start`` outside [0, num_frames - 1].
    """
    _check(num_frames, clip_frames, frame_step)
    span = clip_span(clip_frames, frame_step)
    if start is None:
        max_start = num_frames - span
        if max_start <= 0:
            start = 0
        else:
            rng = rng if rng is not None else np.random.default_rng()
            start = int(rng.integers(0, max_start + 1))  # inclusive of max_start
    elif not 0 <= start < num_frames:
        raise ValueError(
            f"start={start} outside the video's frames [0, {num_frames - 1}]"
        )
    idx = start + frame_step * np.arange(clip_frames, dtype=np.int64)
    return np.minimum(idx, num_frames - 1)


def frame_step_for_fps(video_fps: float, target_fps: float) -> int:
    """Frame step that resamples a ``video_fps`` video to about ``target_fps``: max(1, round(ratio)).

    E.g. 30 fps -> 7.5 fps gives 4 (the recipe's step); a video slower than the target
    gets step 1 (never upsample by repeating frames).
    """
    if not (math.isfinite(video_fps) and video_fps > 0):
        raise ValueError(f"video_fps must be positive and finite, got {video_fps}")
    if not (math.isfinite(target_fps) and target_fps > 0):
        raise ValueError(f"target_fps must be positive and finite, got {target_fps}")
    return max(1, round(video_fps / target_fps))


def eval_clip_starts(
    num_frames: int, clip_frames: int, frame_step: int, num_clips: int
) -> list[int]:
    """Evenly spaced clip starts covering the video, for multi-clip evaluation.

    With ``max_start = max(0, num_frames - span)``: one clip is centred
    (``max_start // 2``); ``k > 1`` clips start at ``round(linspace(0, max_start, k))``, so
    the first clip begins at frame 0 and the last one ends on the last frame. A short
    video gives ``k`` zeros (identical clips; the caller may deduplicate).
    """
    _check(num_frames, clip_frames, frame_step)
    if num_clips <= 0:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    max_start = max(0, num_frames - clip_span(clip_frames, frame_step))
    if num_clips == 1:
        return [max_start // 2]
    return [
        int(s) for s in np.round(np.linspace(0, max_start, num_clips)).astype(np.int64)
    ]
