"""NVIDIA DALI video pipeline for the SALT recipe (the paper's Table 5).

Recipe: ``clip_frames`` (16) frames taken every ``frame_step`` (4) frames, a random resized
crop to ``size`` x ``size`` (224) with area scale [0.3, 1.0] and aspect [0.75, 1.35] shared
by every frame of a clip, a random horizontal flip, and ImageNet mean/std normalisation.
The PyTorch side receives float32 clips ``[B, 3, T, H, W]`` and int64 labels ``[B]``.

Operators and why
-----------------
The graph is the same on both backends; only the decoder's device differs::

    fn.readers.file            (CPU)  file bytes + packed label, sharding and shuffling
    fn.decoders.video          "cpu"  (libavcodec: VP8 / VP9 / MJPEG only) or
                               "mixed" (NVDEC: H.264, HEVC, AV1, ... plus VP8/VP9/MJPEG)
    fn.random.uniform          (CPU)  random clip start, per sample
    fn.random_resized_crop     (train) one crop window per sample, applied to all frames
    fn.resize(resize_shorter)  (eval)  followed by a centre crop inside
    fn.crop_mirror_normalize   mirror from fn.random.coin_flip, mean/std in 0..255 pixel
                               units, output_layout "CFHW" -> no permute in torch

The video *readers* were not used: ``fn.readers.video`` is GPU-only, and both it and
``fn.experimental.readers.video`` enumerate a fixed grid of windows (starts 0, step,
2*step, ...) as the samples of an epoch.  The recipe wants one clip per video per epoch at
a uniformly random start (and the first clip in eval), so the reader here is
``fn.readers.file`` (which also gives sharding with ``shard_id/num_shards`` and shuffling)
and the frames are picked by ``fn.decoders.video(start_frame=..., sequence_length=T,
stride=frame_step)``, whose ``start_frame`` is a per-sample tensor argument.

To draw a start in ``[0, n_frames - span]`` the graph needs each video's frame count.
The count is read once per file from its packets with PyAV (``salt_fast.data.decode.read_index``,
or passed as ``num_frames``) and travels with the
label: the reader's int32 label is ``label * 2**k + max_start``, unpacked in the graph with
integer arithmetic (``k`` is the smallest width holding every ``max_start``; a clear error
is raised if a label would not fit).  Videos shorter than the clip span are padded by
repeating their last frame (``pad_mode="edge"``).

Bad files
---------
That same read finds the files DALI could not use (missing, empty, truncated before its
first frame, garbage, no video stream): like the CPU loader, each is skipped with one
warning naming the file and the reason (logger ``salt_fast.data``) and listed in
``DaliVideoLoader.skipped``; if more than ``max_bad_fraction`` of the list is bad the loader
stops with :class:`~salt_fast.data.loader.TooManyBadFiles` listing examples. A codec the
CPU decoder cannot read is a configuration error, not a bad file: it raises.

``nvidia.dali`` is imported lazily inside functions, so ``salt_fast`` imports without DALI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .decode import VideoDecodeError, read_index
from .loader import TooManyBadFiles

__all__ = [
    "CPU_CODECS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DaliVideoLoader",
    "TooManyBadFiles",
    "VideoDecodeError",
    "build_dali_pipeline",
    "dali_decode_frames",
    "probe_video",
    "shard_range",
    "usable_files",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Codecs that DALI 2.4 decodes on the CPU; everything else needs the GPU (NVDEC).
CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})

_INT32_MAX = 2**31 - 1

log = logging.getLogger("salt_fast.data")


def _import_dali():
    try:
        from nvidia import dali
        from nvidia.dali import fn, types
    except ImportError as e:  # pragma: no cover - exercised only without DALI
        raise ImportError(
            "salt_fast.data.dali needs NVIDIA DALI: pip install nvidia-dali-cuda120 "
            "(the wheel also runs on CPU-only machines for VP8/VP9/MJPEG video)"
        ) from e
    return dali, fn, types


def _check_device(device: str) -> None:
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError(
            "DALI video pipeline with device='gpu' needs CUDA (NVDEC decoding), but "
            "torch.cuda.is_available() is False; use device='cpu' with VP8/VP9/MJPEG files"
        )


def probe_video(path: str | Path, count_frames: bool = True) -> tuple[str, int]:
    """Return ``(codec_name, n_frames)`` of the first video stream of ``path``.

    Both come from the file's packets, read once per process and cached
    (``salt_fast.data.decode.read_index``; demuxing only, no decoding). ``count_frames`` is
    kept for compatibility: the count is always known.

    Raises:
        VideoDecodeError: missing, empty, unreadable or frameless file, or no video stream.
    """
    index = read_index(path)
    return index.codec, index.num_frames


def _check_cpu_codec(path: str | Path, codec: str) -> None:
    if codec not in CPU_CODECS:
        raise ValueError(
            f"{path}: codec {codec!r} cannot be decoded by DALI on the CPU (only "
            f"{sorted(CPU_CODECS)}); use device='gpu' (NVDEC) or re-encode the file to VP9"
        )


def shard_range(n: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """Indices ``[begin, end)`` of the files DALI's readers give shard ``shard_id``."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
    return n * shard_id // num_shards, n * (shard_id + 1) // num_shards


def _pack_labels(
    labels: Sequence[int], max_starts: Sequence[int]
) -> tuple[list[int], int]:
    bits = max(1, max(max_starts).bit_length())
    top = max(labels)
    if min(labels) < 0:
        raise ValueError("labels must be non-negative integers")
    if (top << bits) + (1 << bits) - 1 > _INT32_MAX:
        raise ValueError(
            f"label {top} with clip starts up to {max(max_starts)} does not fit the "
            "reader's int32 label (label * 2**k + max_start); use shorter videos or "
            "fewer classes"
        )
    return [(lab << bits) | m for lab, m in zip(labels, max_starts)], bits


def usable_files(
    files: Sequence[str | Path],
    labels: Sequence[int],
    device: str,
    num_frames: Sequence[int] | None = None,
    max_bad_fraction: float = 0.5,
) -> tuple[list[str], list[int], list[int], list[tuple[str, str]]]:
    """The files DALI can read, with their labels and frame counts, and the skipped ones.

    Returns ``(files, labels, counts, skipped)``; ``skipped`` holds ``(path, reason)`` of
    every bad file (each logged once). Given ``num_frames`` on the GPU, nothing is opened.

    Raises:
        TooManyBadFiles: more than ``max_bad_fraction`` of the files are bad (or all are).
        ValueError: on the CPU, a codec DALI's CPU decoder cannot read.
    """
    good, good_labels, counts, skipped = [], [], [], []
    for i, (f, label) in enumerate(zip(files, labels)):
        f = str(f)
        n = None if num_frames is None else int(num_frames[i])
        if n is None or device == "cpu":
            try:
                codec, counted = probe_video(f)
            except VideoDecodeError as exc:
                log.warning("skipping %s: %s", f, exc.reason)
                skipped.append((f, exc.reason))
                continue
            if device == "cpu":
                _check_cpu_codec(f, codec)
            n = counted if n is None else n
        good.append(f)
        good_labels.append(label)
        counts.append(n)
    if skipped and (len(skipped) > max_bad_fraction * len(files) or not good):
        examples = "\n  ".join(f"{p}: {r}" for p, r in skipped[:8])
        raise TooManyBadFiles(
            f"{len(skipped)} of {len(files)} files cannot be read by DALI "
            f"(more than max_bad_fraction={max_bad_fraction}); examples:\n  {examples}"
        )
    return good, good_labels, counts, skipped


def build_dali_pipeline(
    files: Sequence[str | Path],
    labels: Sequence[int],
    *,
    batch_size: int,
    clip_frames: int = 16,
    frame_step: int = 4,
    size: int = 224,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (0.75, 1.35),
    hflip: bool = True,
    train: bool = True,
    device: str = "gpu",
    num_threads: int = 2,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    num_frames: Sequence[int] | None = None,
    device_id: int | None = None,
    prefetch_queue_depth: int = 2,
    max_bad_fraction: float = 0.5,
):
    """Build (not yet ``build()``-ed) a DALI pipeline with outputs ``clips, labels``.

    ``clips``: float32 ``[3, T, H, W]`` per sample (layout ``"CFHW"``, so a batch is
    ``[B, 3, T, H, W]`` with no permute on the torch side), normalised as
    ``(pixel - 255*mean) / (255*std)``.  ``labels``: int64 scalar per sample.
    Both outputs live on the GPU for ``device="gpu"`` and on the CPU otherwise.

    Train: random start in ``[0, n_frames - (T-1)*frame_step - 1]``, shuffled files,
    random resized crop (same window for every frame) and random flip.  Eval: start 0,
    file order, shorter side resized to ``size`` then a centre crop; deterministic.
    The reader is named ``"Reader"`` (for ``DALIGenericIterator(reader_name=...)``).
    ``num_frames`` skips the PyAV frame-count probe (the CPU codec check still opens
    each file header). Bad files are left out (see the module docstring and
    :func:`usable_files`).
    """
    dali, fn, types = _import_dali()
    from nvidia.dali import math as dmath

    _check_device(device)
    files = [str(Path(f)) for f in files]
    labels = [int(x) for x in labels]
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    if not files:
        raise ValueError("no files")
    if num_frames is not None and len(num_frames) != len(files):
        raise ValueError("num_frames must have one entry per file")
    shard_range(len(files), shard_id, num_shards)  # validates the shard

    span = (clip_frames - 1) * frame_step + 1
    files, labels, counts, _ = usable_files(files, labels, device, num_frames, max_bad_fraction)
    max_starts = [max(0, n - span) for n in counts]
    packed, bits = _pack_labels(labels, max_starts)
    mean255 = [255.0 * m for m in mean]
    std255 = [255.0 * s for s in std]

    if device_id is None:
        device_id = torch.cuda.current_device() if device == "gpu" else None

    @dali.pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch_queue_depth,
    )
    def _pipe():
        encoded, packed_label = fn.readers.file(
            files=files,
            labels=packed,
            random_shuffle=train,
            shard_id=shard_id,
            num_shards=num_shards,
            pad_last_batch=not train,
            name="Reader",
        )
        packed_label = fn.reshape(packed_label, shape=[])  # (1,) -> scalar per sample
        label = packed_label // (1 << bits)
        if train:
            max_start = packed_label - label * (1 << bits)
            u = fn.random.uniform(range=[0.0, 1.0])
            start = fn.cast(
                dmath.floor(u * fn.cast(max_start + 1, dtype=types.FLOAT)),
                dtype=types.INT32,
            )
            start = dmath.min(start, max_start)
        else:
            start = types.Constant(0, dtype=types.INT32)
        frames = fn.decoders.video(
            encoded,
            device="mixed" if device == "gpu" else "cpu",
            start_frame=start,
            sequence_length=clip_frames,
            stride=frame_step,
            pad_mode="edge",
        )  # uint8 FHWC
        if train:
            frames = fn.random_resized_crop(
                frames,
                size=[size, size],
                random_area=list(scale),
                random_aspect_ratio=list(ratio),
            )
            mirror = fn.random.coin_flip(probability=0.5) if hflip else 0
            clips = fn.crop_mirror_normalize(
                frames,
                mirror=mirror,
                mean=mean255,
                std=std255,
                dtype=types.FLOAT,
                output_layout="CFHW",
            )
        else:
            frames = fn.resize(frames, resize_shorter=size)
            clips = fn.crop_mirror_normalize(
                frames,
                crop=(size, size),
                crop_pos_x=0.5,
                crop_pos_y=0.5,
                mean=mean255,
                std=std255,
                dtype=types.FLOAT,
                output_layout="CFHW",
            )
        label = fn.cast(label, dtype=types.INT64)
        if device == "gpu":
            label = label.gpu()
        return clips, label

    return _pipe()


class DaliVideoLoader:
    """Iterable over ``(clips [B,3,T,H,W] float32, labels [B] int64)`` torch tensors.

    Wraps ``DALIGenericIterator``; tensors are on the pipeline's GPU for ``device="gpu"``
    and on the CPU otherwise.  ``len()`` is the number of batches per epoch of this shard
    (train drops the last partial batch; eval keeps it, trimmed, so every file of the
    shard is seen exactly once).  Iterating past the end of an epoch resets the iterator,
    so ``for epoch ...: for clips, labels in loader:`` works; leaving an epoch early is fine
    too (the next iteration runs it out first: DALI cannot reset mid-epoch), and
    ``reset()`` does the same explicitly.  ``close()`` (or ``with DaliVideoLoader(...)``)
    releases the pipeline.  Bad files are skipped (``skipped``: their ``(path, reason)``),
    see the module docstring.  Keyword arguments are those of :func:`build_dali_pipeline`.
    """

    def __init__(self, files, labels, *, batch_size: int, train: bool = True, max_bad_fraction: float = 0.5, **kwargs):
        _import_dali()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        _check_device(kwargs.get("device", "gpu"))
        self.train = train
        self.batch_size = batch_size
        num_frames = kwargs.pop("num_frames", None)
        files, labels, counts, self.skipped = usable_files(
            files, labels, kwargs.get("device", "gpu"), num_frames, max_bad_fraction
        )
        self.files = files
        self.pipeline = build_dali_pipeline(
            files, labels, batch_size=batch_size, train=train, num_frames=counts, **kwargs
        )
        self.pipeline.build()
        self._iter = DALIGenericIterator(
            self.pipeline,
            ["clips", "labels"],
            reader_name="Reader",
            last_batch_policy=LastBatchPolicy.DROP
            if train
            else LastBatchPolicy.PARTIAL,
            auto_reset=False,
        )
        self._mid_epoch = False

    def __len__(self) -> int:
        return len(self._check_open())

    def _check_open(self):
        if self._iter is None:
            raise RuntimeError("DaliVideoLoader is closed")
        return self._iter

    def reset(self) -> None:
        """Start the next iteration at a fresh epoch (running out the current one first)."""
        iterator = self._check_open()
        if self._mid_epoch:
            for _ in iterator:
                pass
            self._mid_epoch = False
        iterator.reset()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Nothing runs after a `yield` but the next batch: a generator abandoned mid-epoch
        # (or collected at interpreter exit, when the pipeline may be gone) touches no DALI
        # object; the next iteration finishes that epoch instead.
        if self._mid_epoch:
            self.reset()
        iterator = self._check_open()
        self._mid_epoch = True
        for out in iterator:
            d = out[0]
            yield d["clips"], d["labels"].reshape(-1)
        self._mid_epoch = False
        iterator.reset()

    def close(self) -> None:
        """Release the DALI pipeline (idempotent); the loader cannot be iterated afterwards."""
        self._iter = None
        self.pipeline = None

    def __enter__(self) -> DaliVideoLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def dali_decode_frames(
    path: str | Path,
    start: int,
    clip_frames: int,
    frame_step: int,
    device: str = "cpu",
) -> torch.Tensor:
    """Decode frames ``start, start+frame_step, ...`` (``clip_frames`` of them) with the
    same DALI decoder the pipeline uses, no crop/normalise: uint8 ``[T, H, W, 3]`` RGB.

    Returned on the CPU (copied from the GPU for ``device="gpu"``).

    Raises:
        VideoDecodeError: a bad file (missing, empty, garbage, no video stream), named.
        ValueError: on the CPU, a codec DALI's CPU decoder cannot read.
    """
    dali, fn, _ = _import_dali()
    _check_device(device)
    path = str(Path(path))
    codec, _ = probe_video(path)  # VideoDecodeError for a bad file, with the reason
    if device == "cpu":
        _check_cpu_codec(path, codec)

    @dali.pipeline_def(
        batch_size=1,
        num_threads=1,
        device_id=torch.cuda.current_device() if device == "gpu" else None,
        seed=0,
    )
    def _pipe():
        encoded, _ = fn.readers.file(files=[path], name="Reader")
        return fn.decoders.video(
            encoded,
            device="mixed" if device == "gpu" else "cpu",
            start_frame=start,
            sequence_length=clip_frames,
            stride=frame_step,
            pad_mode="none",
        )

    pipe = _pipe()
    pipe.build()
    (out,) = pipe.run()
    if device == "gpu":
        out = out.as_cpu()
    arr = out.as_array() if hasattr(out, "as_array") else out.at(0)[None]
    t = torch.from_numpy(arr[0].copy())
    del pipe
    return t
