"""CPU video decoding with errors that name the file.

The production path is PyAV (bundled FFmpeg, decodes every codec we meet, and every bad
file surfaces as a Python exception we can wrap). ``backend="torchcodec"`` and
``backend="decord"`` are optional alternatives; ``benchmarks/data.py`` measures them.

Frame numbering
---------------
Frame ``i`` is the ``i``-th frame in presentation order, counting from 0, on every path.
A file's :class:`VideoIndex` is read once (one pass over its packets, no decoding) and
kept in a per-process cache: the presentation timestamps of all frames, sorted, and where
the keyframes are. A decoded frame's number is the position of its timestamp in that
list, whether it came from decoding from the start or from a keyframe seek, so
variable-frame-rate files, B-frames (decode order != presentation order) and files whose
first timestamp is not 0 give the same frames either way. Packets the container marks
for discarding (edit lists) are not frames. Only when a file's timestamps are missing or
repeat (or the decoder drops them) are frames counted as they come out of the decoder,
from the start (no seeking). A seek that lands after the first wanted frame, or not on a
keyframe, is retried from the start. Reading the index reads the whole file once per
process (as decord does when it opens a file); it costs about what decoding a few frames
does.

Decoding only what a clip needs
-------------------------------
A clip of frames ``first .. last`` seeks to the last keyframe at or before ``first`` (when
that is past frame 0), decodes forward and stops as soon as the last wanted frame is
out. Frames that are not wanted and that no other frame references (non-reference
B-frames) are not decoded at all (``skip_frame=NONREF`` for their packets), and only the
wanted frames are converted to RGB, each with one reused, single-threaded swscale
context. Opening a file skips FFmpeg's probe decode (the stream facts come from the
container header and the cached index).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .lists import IMAGE_EXTENSIONS, is_image  # noqa: F401  (re-exported: decoding decides by it)

#: How many frames' worth of :class:`VideoIndex` each process keeps (8 bytes a frame: 32 MB);
#: the least recently used files are dropped first.
INDEX_CACHE_FRAMES = 1 << 22

# FFmpeg's avformat_find_stream_info decodes the first frame(s) to fill in stream facts we
# do not use (pixel format, reorder depth); without it opening a file costs ~3x less.
_OPEN_FAST = {"skip_frame": "all"}


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

    def __reduce__(self):  # picklable, so errors cross DataLoader worker boundaries intact
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """Basic stream facts. Images report ``num_frames=1`` and ``fps=0.0``."""

    num_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True, eq=False)
class VideoIndex:
    """What decoding a file needs to know, read once from its packets (no decoding).

    Attributes:
        num_frames, fps, height, width: as in :class:`VideoInfo`.
        codec: FFmpeg's name of the video codec.
        pts: int64 presentation timestamps of the frames, sorted (frame ``i`` has
            ``pts[i]``), in the stream's time base; ``None`` when the file's timestamps
            are missing or repeat (frames are then counted from the start).
        keyframes: sorted frame numbers of the keyframes (always starts with 0).
        seek_ts: for each keyframe, the timestamp to seek to (its decode timestamp when
            known: mp4 indexes by it).
    """

    num_frames: int
    fps: float
    height: int
    width: int
    codec: str
    pts: np.ndarray | None
    keyframes: np.ndarray
    seek_ts: np.ndarray

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.fps, self.height, self.width)

    def keyframe_before(self, frame: int) -> int:
        """Position in :attr:`keyframes` of the last keyframe at or before ``frame``."""
        return max(0, int(np.searchsorted(self.keyframes, frame, side="right")) - 1)


def _check_file(path: Path) -> os.stat_result:
    # Checked up front: FFmpeg's messages for these cases are vague ("Invalid data").
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot stat file ({e.strerror or e})") from e
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if st.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return st


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
        raise VideoDecodeError(path, f"cannot decode image ({type(e).__name__}: {e})") from e


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


def _open_video(path: Path, fast: bool = True):
    """Open with PyAV; return (container, stream) or raise VideoDecodeError.

    ``fast``: skip the probe decode (see ``_OPEN_FAST``); a stream whose frame size only
    that decode would reveal is opened again the slow way.
    """
    import av

    try:
        container = av.open(str(path), mode="r", options=_OPEN_FAST if fast else None)
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
        raise VideoDecodeError(path, "no decoder available for the video stream's codec")
    if not stream.width or not stream.height:
        container.close()
        if fast:
            return _open_video(path, fast=False)
        raise VideoDecodeError(path, f"video stream has no frame size (codec {ctx.name!r} undecodable?)")
    return container, stream


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _read_packets(container, stream, path: Path) -> VideoIndex:
    """Build the :class:`VideoIndex` by demuxing every packet of the stream (no decoding)."""
    pts: list[int | None] = []
    dts: list[int | None] = []
    key: list[bool] = []
    try:
        for p in container.demux(stream):
            if p.size == 0 or p.is_discard:  # the end-of-stream marker; edit-list cuts
                continue
            pts.append(p.pts)
            dts.append(p.dts)
            key.append(p.is_keyframe)
    except Exception as e:  # unreadable packets: truncated or corrupt
        raise VideoDecodeError(path, f"cannot read packets ({_ffmpeg_reason(e)}): truncated or corrupt file?") from e
    n = len(pts)
    if n == 0:
        raise VideoDecodeError(path, "video stream has no frames")
    fps = _stream_fps(stream)
    facts = dict(num_frames=n, fps=fps, height=int(stream.height), width=int(stream.width), codec=stream.codec_context.name)
    if any(t is None for t in pts):
        return VideoIndex(**facts, pts=None, keyframes=np.zeros(1, np.int64), seek_ts=np.zeros(1, np.int64))
    raw = np.asarray(pts, dtype=np.int64)
    order = np.argsort(raw, kind="stable")
    sorted_pts = raw[order]
    if n > 1 and not (np.diff(sorted_pts) > 0).all():  # repeated timestamps: cannot number by them
        return VideoIndex(**facts, pts=None, keyframes=np.zeros(1, np.int64), seek_ts=np.zeros(1, np.int64))
    number = np.empty(n, dtype=np.int64)
    number[order] = np.arange(n)  # decode position -> presentation number
    keys = [(int(number[i]), min(t for t in (pts[i], dts[i]) if t is not None)) for i in range(n) if key[i]]
    keys.sort()
    if not keys or keys[0][0] != 0:  # no keyframe at frame 0: decoding starts at the start
        keys.insert(0, (0, int(sorted_pts[0])))
    kf = np.array([k for k, _ in keys], dtype=np.int64)
    ts = np.array([t for _, t in keys], dtype=np.int64)
    return VideoIndex(**facts, pts=sorted_pts, keyframes=kf, seek_ts=ts)


class _IndexCache:
    """A thread-safe LRU of VideoIndex by (path, mtime, size), so a changed file is read
    again; bounded by the total number of frames it describes."""

    def __init__(self, frames: int) -> None:
        self.frames, self.held, self.items, self.lock = frames, 0, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key, value: VideoIndex) -> None:
        with self.lock:
            old = self.items.pop(key, None)
            self.held += value.num_frames - (old.num_frames if old is not None else 0)
            self.items[key] = value
            while self.held > self.frames and len(self.items) > 1:
                self.held -= self.items.popitem(last=False)[1].num_frames

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.held = 0


_CACHE = _IndexCache(INDEX_CACHE_FRAMES)


def clear_index_cache() -> None:
    """Forget every cached :class:`VideoIndex` of this process."""
    _CACHE.clear()


def _cache_key(path: Path, st: os.stat_result) -> tuple:
    return (str(path), st.st_mtime_ns, st.st_size)


def read_index(path: str | os.PathLike) -> VideoIndex:
    """The :class:`VideoIndex` of a video file, from the process's cache when it has it.

    Raises:
        VideoDecodeError: missing/empty/unreadable file or no video stream.
    """
    path = Path(path)
    key = _cache_key(path, _check_file(path))
    index = _CACHE.get(key)
    if index is None:
        container, stream = _open_video(path)
        try:
            index = _read_packets(container, stream, path)
        finally:
            container.close()
        _CACHE.put(key, index)
    return index


def probe(path: str | os.PathLike, *, exact: bool = True) -> VideoInfo:
    """Number of frames, frame rate and size of a video (or image) file.

    With ``exact=True`` (default) the frames are counted from the file's packets (the
    :class:`VideoIndex`, cached, so a following :func:`decode_frames` does not read them
    again): the count is exactly what decoding can reach. With ``exact=False`` the
    container's header count is used when it has one (mp4), else duration * fps, which
    may be off by one.

    Raises:
        VideoDecodeError: missing/empty/unreadable file or no video stream.
    """
    path = Path(path)
    st = _check_file(path)
    if is_image(path):
        img = _load_image(path)
        return VideoInfo(num_frames=1, fps=0.0, height=img.shape[0], width=img.shape[1])
    cached = _CACHE.get(_cache_key(path, st))
    if exact or cached is not None:
        return (cached or read_index(path)).info
    container, stream = _open_video(path)
    try:
        fps = _stream_fps(stream)
        n = int(stream.frames or 0)
        if n <= 0 and stream.duration and stream.time_base and fps:
            n = round(float(stream.duration * stream.time_base) * fps)
        elif n <= 0 and container.duration and fps:
            n = round(container.duration / 1_000_000 * fps)  # av.time_base = 1e6
    finally:
        container.close()
    if n <= 0:
        return read_index(path).info
    return VideoInfo(num_frames=n, fps=fps, height=int(stream.height), width=int(stream.width))


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
        seek: PyAV only: start at the last keyframe before the first index (False: decode
            from frame 0; the same frames either way).
        threads: PyAV only: FFmpeg frame-threading threads (0 or 1 = single-threaded).

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
    raise ValueError(f"unknown backend {backend!r} (expected 'pyav', 'torchcodec' or 'decord')")


_local = threading.local()


class _Clip:
    """The clip being assembled, uint8 ``[len(idx), H, W, 3]``: each wanted frame is converted
    to RGB by this thread's reused swscale context and written straight into its rows
    (``frame.to_ndarray(format="rgb24")`` would build a new multi-threaded swscale context
    for every frame, which costs more than the conversion, and stacking copies again)."""

    def __init__(self, idx: np.ndarray) -> None:
        self.length, self.rows = len(idx), {}  # frame number -> its rows in the clip
        for row, n in enumerate(idx.tolist()):
            self.rows.setdefault(n, []).append(row)
        self.out: np.ndarray | None = None
        self.done: set[int] = set()

    def add(self, n: int, frame) -> None:
        reformatter = getattr(_local, "reformatter", None)
        if reformatter is None:
            from av.video.reformatter import VideoReformatter

            reformatter = _local.reformatter = VideoReformatter()
        if self.out is None:  # the first frame's size is the clip's (a later change is resized to it)
            self.out = np.empty((self.length, frame.height, frame.width, 3), np.uint8)
        height, width = self.out.shape[1:3]
        rgb = reformatter.reformat(frame, width=width, height=height, format="rgb24", threads=1)
        plane = rgb.planes[0]
        pixels = np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, : 3 * width]
        rows = self.rows[n]
        self.out[rows[0]] = pixels.reshape(height, width, 3)
        self.out[rows[1:]] = self.out[rows[0]]
        self.done.add(n)


class _SeekMissed(Exception):
    """The seek landed after the first wanted frame, or not on a keyframe."""


class _NoFrameTimestamps(Exception):
    """The decoder gave a frame without a timestamp: frames must be counted instead."""


def _decode_pyav(path: Path, idx: np.ndarray, *, seek: bool, threads: int) -> torch.Tensor:
    index = read_index(path)  # cached: read from the packets once per file and process
    container, stream = _open_video(path)
    try:
        if idx.size == 0:
            return torch.empty((0, index.height, index.width, 3), dtype=torch.uint8)
        if idx.max() >= index.num_frames:
            raise VideoDecodeError(
                path, f"frame index {int(idx.max())} past the end of the video ({index.num_frames} frames)"
            )
        cc = stream.codec_context
        if threads > 1:
            cc.thread_type, cc.thread_count = "FRAME", threads
        else:
            cc.thread_count = 1
        wanted = np.unique(idx)
        try:
            found: _Clip | None = None
            if index.pts is not None:
                try:
                    try:
                        found = _decode_by_pts(container, stream, index, _Clip(idx), seek)
                    except _SeekMissed:
                        found = _decode_by_pts(container, stream, index, _Clip(idx), seek=False, rewind=True)
                except _NoFrameTimestamps:
                    container.seek(int(index.seek_ts[0]), stream=stream, backward=True, any_frame=False)
            if found is None:
                found = _decode_counted(container, stream, _Clip(idx))
        except VideoDecodeError:
            raise
        except Exception as e:  # truncated/corrupt streams can fail mid-decode
            raise VideoDecodeError(path, f"decoding failed ({_ffmpeg_reason(e)})") from e
        missing = [int(i) for i in wanted if int(i) not in found.done]
        if missing:
            if not found.done:
                raise VideoDecodeError(path, f"no frame could be decoded (codec {index.codec!r})")
            raise VideoDecodeError(
                path,
                f"frame {missing[0]} could not be decoded ({len(found.done)} of the {len(wanted)} wanted "
                f"frames were; the file has {index.num_frames} frames): corrupt or truncated?",
            )
        return torch.from_numpy(found.out)
    finally:
        container.close()


def _decode_counted(container, stream, clip: _Clip) -> _Clip:
    """Decode from the start, numbering frames as they come out (files without usable timestamps)."""
    last = max(clip.rows)
    for count, frame in enumerate(container.decode(stream)):
        if count in clip.rows:
            clip.add(count, frame)
        if count >= last:
            break
    return clip


def _decode_by_pts(container, stream, index: VideoIndex, clip: _Clip, seek: bool, rewind: bool = False) -> _Clip:
    """Decode the clip's frames, numbering by timestamp; see the module docstring."""
    pts = index.pts
    number = {int(pts[n]): n for n in clip.rows}  # wanted pts -> frame number
    first = min(clip.rows)
    k = index.keyframe_before(first) if seek else 0
    if k > 0 or rewind:
        if rewind:
            stream.codec_context.flush_buffers()
        container.seek(int(index.seek_ts[k]), stream=stream, backward=True, any_frame=False)
    cc = stream.codec_context
    skipping, checked = False, k == 0
    for packet in container.demux(stream):
        if not checked and packet.size:
            checked = True  # the seek must land on a keyframe at or before the first wanted frame
            if not packet.is_keyframe or packet.pts is None or packet.pts > pts[first]:
                cc.flush_buffers()
                raise _SeekMissed
        if packet.pts is not None:
            skip = packet.pts not in number
            if skip != skipping:  # a frame nobody wants and no frame references: not decoded at all
                cc.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
        for frame in cc.decode(packet):
            if frame.pts is None:
                cc.flush_buffers()
                cc.skip_frame = "DEFAULT"
                raise _NoFrameTimestamps
            n = number.get(frame.pts)
            if n is not None and n not in clip.done:
                clip.add(n, frame)
        if len(clip.done) == len(number):
            break
    if skipping:
        cc.skip_frame = "DEFAULT"
    return clip


def _decode_torchcodec(path: Path, idx: np.ndarray) -> torch.Tensor:
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # import fails without system FFmpeg libs
        raise RuntimeError(f"torchcodec backend unavailable: {e}") from e
    try:
        dec = VideoDecoder(str(path), dimension_order="NHWC", seek_mode="approximate")
        n = dec.metadata.num_frames
        if n is not None and idx.size and idx.max() >= n:
            raise VideoDecodeError(path, f"frame index {int(idx.max())} past the end of the video ({n} frames)")
        return dec.get_frames_at(idx.tolist()).data.contiguous()
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"torchcodec: {type(e).__name__}: {e}") from e


def _decode_decord(path: Path, idx: np.ndarray, threads: int = 1) -> torch.Tensor:
    try:
        import decord
    except Exception as e:
        raise RuntimeError(f"decord backend unavailable: {e}") from e
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        if idx.size and idx.max() >= len(vr):
            raise VideoDecodeError(path, f"frame index {int(idx.max())} past the end of the video ({len(vr)} frames)")
        return torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy())
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"decord: {type(e).__name__}: {e}") from e
