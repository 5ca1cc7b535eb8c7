"""CPU video decoding with errors that name the file.

The production path is PyAV (bundled FFmpeg, decodes every codec we meet, and every bad
file surfaces as a Python exception we can wrap). ``backend="torchcodec"`` and
``backend="decord"`` are optional alternatives used by the benchmark; PyAV was chosen by
measurement (see ``benchmarks/data.py``): on 224x224 clips the three are within ~1.5x of
each other, and only PyAV handles all the bad-file cases without crashing the process.

Frame numbering: frame ``i`` is the ``i``-th frame in presentation order, counting from
0. On the sequential path frames are counted; on the seek path (used when the first
wanted frame is far into the video) a frame's number comes from its timestamp,
``round((pts - start_time) * time_base * fps)``, which is the same number for
constant-frame-rate video. If the seek lands after the wanted frame, or timestamps are
missing, we fall back to decoding sequentially from the start.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .lists import IMAGE_EXTENSIONS, is_image  # noqa: F401  (re-exported: decoding decides by it)

# Seek only when the first wanted frame is at least this far in: below it, decoding from
# frame 0 costs about as much as the seek plus the decode forward from the keyframe.
SEEK_MIN_FRAME = 32


class VideoDecodeError(Exception):
    """A video (or image) could not be probed or decoded.

    Attributes:
        path: the file that failed.
        reason: what went wrong, precise enough to act on.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(
        self,
    ):  # picklable, so errors cross DataLoader worker boundaries intact
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """Basic stream facts. Images report ``num_frames=1`` and ``fps=0.0``."""

    num_frames: int
    fps: float
    height: int
    width: int


def _check_file(path: Path) -> None:
    # Checked up front: FFmpeg's messages for these cases are vague ("Invalid data").
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def _ffmpeg_reason(exc: BaseException) -> str:
    """A one-line description of an FFmpeg/PyAV error, without the repeated file name."""
    import av

    if isinstance(exc, av.FFmpegError):
        msg = getattr(exc, "strerror", None) or str(exc)
        return f"{type(exc).__name__}: {msg}"
    return f"{type(exc).__name__}: {exc}"


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoDecodeError(
            path, f"cannot decode image ({type(e).__name__}: {e})"
        ) from e


def _looks_like_truncated_mp4(path: Path) -> bool:
    """An ISO-BMFF file ('ftyp' box first) with no 'moov' box: cut off before its index."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[4:8] != b"ftyp":
                return False
            f.seek(0)
            return b"moov" not in f.read()  # error path only: reading the file is fine
    except OSError:
        return False


def _open_video(path: Path):
    """Open with PyAV; return (container, stream) or raise VideoDecodeError."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except Exception as e:  # every FFmpeg failure becomes a named error
        reason = f"cannot open container ({_ffmpeg_reason(e)})"
        if _looks_like_truncated_mp4(path):
            reason += "; mp4/mov without its 'moov' index box: truncated download?"
        raise VideoDecodeError(path, reason) from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(path, f"no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or stream.codec is None:
        container.close()
        raise VideoDecodeError(
            path, "no decoder available for the video stream's codec"
        )
    if not stream.width or not stream.height:
        container.close()
        raise VideoDecodeError(
            path, f"video stream has no frame size (codec {ctx.name!r} undecodable?)"
        )
    return container, stream


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe(path: str | os.PathLike, *, exact: bool = True) -> VideoInfo:
    """Number of frames, frame rate and size of a video (or image) file.

    ``stream.frames`` comes from the container index (mp4) and is 0 when the container does
    not store it (webm, some avi). Then, with ``exact=True`` (default), the video packets
    are counted by demuxing without decoding (cheap, and the count matches what
    :func:`decode_frames` can reach); with ``exact=False`` it is estimated as
    duration * fps, which may be off by one.

    Raises:
        VideoDecodeError: missing/empty/unreadable file or no video stream.
    """
    path = Path(path)
    _check_file(path)
    if is_image(path):
        img = _load_image(path)
        return VideoInfo(num_frames=1, fps=0.0, height=img.shape[0], width=img.shape[1])

    container, stream = _open_video(path)
    try:
        fps = _stream_fps(stream)
        n = int(stream.frames or 0)
        if n <= 0 and not exact:
            if stream.duration and stream.time_base and fps:
                n = round(float(stream.duration * stream.time_base) * fps)
            elif container.duration and fps:
                n = round(container.duration / 1_000_000 * fps)  # av.time_base = 1e6
        if n <= 0:
            try:
                n = sum(1 for p in container.demux(stream) if p.size > 0)
            except Exception as e:  # unreadable packets
                raise VideoDecodeError(
                    path, f"cannot read packets to count frames ({_ffmpeg_reason(e)})"
                ) from e
        if n <= 0:
            raise VideoDecodeError(path, "video stream has no frames")
        return VideoInfo(
            num_frames=n, fps=fps, height=int(stream.height), width=int(stream.width)
        )
    finally:
        container.close()


def _validate_indices(indices: Sequence[int]) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError(f"frame indices must be >= 0, got {idx.min()}")
    return idx


def decode_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    backend: str = "pyav",
    seek: bool = True,
    threads: int = 0,
) -> torch.Tensor:
    """Decode the given frames of a video as RGB.

    Args:
        path: a video file, or an image file (.jpg .jpeg .png .bmp .webp), which is
            returned repeated ``len(indices)`` times (image-as-clip; index values ignored).
        indices: frame numbers (0-based, presentation order). May repeat (short-video
            padding) and need not be sorted; only frames up to ``max(indices)`` are decoded.
        backend: "pyav" (default, robust), "torchcodec" or "decord" (optional, if installed).
        seek: PyAV only: keyframe-seek to near the first index when it is >= SEEK_MIN_FRAME.
        threads: PyAV only: decoder threads (0 = single-threaded; DataLoader workers already
            use the cores, and frame threading adds latency for short clips).

    Returns:
        uint8 tensor [len(indices), H, W, 3].

    Raises:
        VideoDecodeError: missing/empty/truncated/garbage file, no video stream,
            undecodable codec, or an index past the end of the video.
        ValueError: negative indices (a caller bug, not a bad file).
    """
    path = Path(path)
    idx = _validate_indices(indices)
    _check_file(path)
    if is_image(path):
        img = torch.from_numpy(_load_image(path).copy())
        return img.unsqueeze(0).expand(len(idx), -1, -1, -1).contiguous()
    if backend == "pyav":
        return _decode_pyav(path, idx, seek=seek, threads=threads)
    if backend == "torchcodec":
        return _decode_torchcodec(path, idx)
    if backend == "decord":
        return _decode_decord(path, idx)
    raise ValueError(
        f"unknown backend {backend!r} (expected 'pyav', 'torchcodec' or 'decord')"
    )


def _gather(
    path: Path, idx: np.ndarray, found: dict[int, np.ndarray], decoded: int
) -> torch.Tensor:
    """Stack the decoded frames in the order (and multiplicity) of ``idx``."""
    missing = [int(i) for i in np.unique(idx) if int(i) not in found]
    if missing:
        raise VideoDecodeError(
            path,
            f"frame index {missing[0]} past the end of the video "
            f"(only {decoded} frames could be decoded)",
        )
    return torch.from_numpy(np.stack([found[int(i)] for i in idx]))


def _decode_pyav(
    path: Path, idx: np.ndarray, *, seek: bool, threads: int
) -> torch.Tensor:
    container, stream = _open_video(path)
    try:
        if idx.size == 0:
            return torch.empty((0, stream.height, stream.width, 3), dtype=torch.uint8)
        if threads > 0:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
        wanted = {int(i) for i in idx}
        first, last = int(idx.min()), int(idx.max())
        try:
            found = None
            if seek and first >= SEEK_MIN_FRAME:
                found, decoded = _pyav_seek_decode(
                    container, stream, wanted, first, last
                )
                if (
                    found is None
                ):  # seek unusable for this file: start over from frame 0
                    container.seek(0, backward=True, any_frame=False, stream=stream)
            if found is None:
                found, decoded = _pyav_sequential_decode(
                    container, stream, wanted, last
                )
        except VideoDecodeError:
            raise
        except Exception as e:  # truncated/corrupt streams can fail mid-decode
            raise VideoDecodeError(
                path, f"decoding failed ({_ffmpeg_reason(e)})"
            ) from e
        if not found and decoded == 0:
            raise VideoDecodeError(
                path, f"no frame could be decoded (codec {stream.codec_context.name!r})"
            )
        return _gather(path, idx, found, decoded)
    finally:
        container.close()


def _to_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _pyav_sequential_decode(container, stream, wanted: set[int], last: int):
    found: dict[int, np.ndarray] = {}
    count = 0
    for frame in container.decode(stream):
        if count in wanted:
            found[count] = _to_rgb(frame)
        count += 1
        if count > last:
            break
    return found, count


def _pyav_seek_decode(container, stream, wanted: set[int], first: int, last: int):
    """Keyframe seek then decode forward, numbering frames by timestamp.

    Returns (frames by number, 1 + the last frame number seen), or (None, 0) when the
    result could not be trusted (no fps/time base/timestamps, or
    the seek landed after ``first``); the caller then decodes from the start.
    """
    fps = _stream_fps(stream)
    tb = stream.time_base
    if not fps or not tb:
        return None, 0
    start_pts = stream.start_time or 0
    sec_per_tick = float(tb)
    # Aim half a frame early so rounding never puts the target after the wanted frame.
    target = start_pts + int((first - 0.5) / fps / sec_per_tick)
    container.seek(
        max(target, start_pts), backward=True, any_frame=False, stream=stream
    )
    found: dict[int, np.ndarray] = {}
    n = -1
    for frame in container.decode(stream):
        if frame.pts is None:
            return None, 0
        prev, n = n, round((frame.pts - start_pts) * sec_per_tick * fps)
        if prev < 0 and n > first:  # landed after the first wanted frame
            return None, 0
        if n in wanted and n not in found:
            found[n] = _to_rgb(frame)
        if n >= last:
            break
    return found, n + 1


def _decode_torchcodec(path: Path, idx: np.ndarray) -> torch.Tensor:
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # import fails without system FFmpeg libs
        raise RuntimeError(f"torchcodec backend unavailable: {e}") from e
    try:
        dec = VideoDecoder(str(path), dimension_order="NHWC", seek_mode="approximate")
        n = dec.metadata.num_frames
        if n is not None and idx.size and idx.max() >= n:
            raise VideoDecodeError(
                path,
                f"frame index {int(idx.max())} past the end of the video ({n} frames)",
            )
        return dec.get_frames_at(idx.tolist()).data.contiguous()
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"torchcodec: {type(e).__name__}: {e}") from e


def _decode_decord(path: Path, idx: np.ndarray) -> torch.Tensor:
    try:
        import decord
    except Exception as e:
        raise RuntimeError(f"decord backend unavailable: {e}") from e
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        if idx.size and idx.max() >= len(vr):
            raise VideoDecodeError(
                path,
                f"frame index {int(idx.max())} past the end of the video ({len(vr)} frames)",
            )
        return torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy())
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"decord: {type(e).__name__}: {e}") from e
