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
The count is probed once with PyAV (or passed as ``num_frames``) and travels with the
label: the reader's int32 label is ``label * 2**k + max_start``, unpacked in the graph with
integer arithmetic (``k`` is the smallest width holding every ``max_start``; a clear error
is raised if a label would not fit).  Videos shorter than the clip span are padded by
repeating their last frame (``pad_mode="edge"``).

``nvidia.dali`` is imported lazily inside functions, so ``salt_fast`` imports without DALI.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

__all__ = [
    "CPU_CODECS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DaliVideoLoader",
    "build_dali_pipeline",
    "dali_decode_frames",
    "probe_video",
    "shard_range",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Codecs that DALI 2.4 decodes on the CPU; everything else needs the GPU (NVDEC).
CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})

_INT32_MAX = 2**31 - 1


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
    """Return ``(codec_name, n_frames)`` of the first video stream of ``path`` (PyAV).

    ``n_frames`` comes from the container header when it has one, else from counting the
    stream's packets (cheap: demuxing only, no decoding).  ``-1`` if ``count_frames`` is
    False and the header has no count.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        n = int(stream.frames or 0)
        if n <= 0:
            if not count_frames:
                return codec, -1
            n = sum(1 for p in container.demux(stream) if p.size > 0)
    return codec, n


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


def _video_metadata(files, device, num_frames):
    """Codec check (CPU) and frame counts, one PyAV probe per file when needed."""
    counts = []
    for i, f in enumerate(files):
        if num_frames is not None and device == "gpu":
            counts.append(int(num_frames[i]))
            continue
        codec, n = probe_video(f, count_frames=num_frames is None)
        if device == "cpu":
            _check_cpu_codec(f, codec)
        counts.append(int(num_frames[i]) if num_frames is not None else n)
    return counts


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
    each file header).
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
    counts = _video_metadata(files, device, num_frames)
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
    so ``for epoch ...: for clips, labels in loader:`` works; ``reset()`` restarts early.
    Keyword arguments are those of :func:`build_dali_pipeline`.
    """

    def __init__(self, files, labels, *, batch_size: int, train: bool = True, **kwargs):
        _import_dali()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.train = train
        self.batch_size = batch_size
        self.pipeline = build_dali_pipeline(
            files, labels, batch_size=batch_size, train=train, **kwargs
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

    def __len__(self) -> int:
        return len(self._iter)

    def reset(self) -> None:
        self._iter.reset()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        finished = False
        try:
            for out in self._iter:
                d = out[0]
                yield d["clips"], d["labels"].reshape(-1)
            finished = True
        finally:
            if not finished:
                # The caller broke out mid-epoch: DALI cannot reset an unfinished epoch,
                # so run it out; the next iteration then starts a fresh epoch.
                for _ in self._iter:
                    pass
            self._iter.reset()


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
    """
    dali, fn, _ = _import_dali()
    _check_device(device)
    path = str(Path(path))
    if device == "cpu":
        _check_cpu_codec(path, probe_video(path, count_frames=False)[0])

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
