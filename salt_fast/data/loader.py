"""From file lists to training batches: ``(clips, labels, masks)`` ready for the loop.

The pieces: a map-style :class:`VideoClips` dataset (decode, sample a clip, transform;
a bad file is skipped with one warning line and replaced by another sample), a
:class:`StepBatchSampler` that tags every batch with its global step, and a
:class:`BatchCollator` that stacks the clips, attaches the mask index tensors for that
step, and stops the run with a clear error when too many of a batch's files were bad.

Masks are a pure function of (seed, step) (see ``salt_fast.masking``), and the step
travels with the batch indices, so the masks do not depend on which dataloader worker
builds the batch, and resuming at step ``s`` reproduces them exactly.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from salt_fast.masking import MaskBatch, MaskSampler

from .decode import VideoDecodeError, decode_frames, read_index
from .lists import Mixture, ShardedSampler, VideoList, is_image
from .sampling import clip_indices
from .transforms import Normalize

log = logging.getLogger("salt_fast.data")

# Where training clips are decoded (config ``data.decoder``): this module's loader on CPU
# workers, or NVIDIA DALI (``salt_fast.data.dali``; NVDEC on a GPU).
DECODERS = ("cpu", "dali")


class Sample(NamedTuple):
    """One decoded clip: ``clip`` float ``[3, T, H, W]`` (or ``[views, 3, T, H, W]``; uint8 pixels
    inside :func:`video_loader`, normalised by the collator), its label, the step of the batch
    it belongs to, and the files skipped on the way as (path, reason)."""

    clip: torch.Tensor
    label: int
    step: int
    skipped: list[tuple[str, str]]


class Batch(NamedTuple):
    """``clips [B, 3, T, H, W]``, ``labels [B]`` int64, one ``MaskBatch`` per mask configuration
    (empty without a mask sampler), and the (path, reason) of every file skipped for this batch."""

    clips: torch.Tensor
    labels: torch.Tensor
    masks: list[MaskBatch]
    skipped: list[tuple[str, str]]


class TooManyBadFiles(RuntimeError):
    """More than the allowed fraction of a batch's decode attempts failed."""


class VideoClips(Dataset):
    """Clips from a file list or a mixture of lists.

    ``dataset[(step, index)]`` (or ``dataset[index]``) decodes ``clip_frames`` frames,
    ``frame_step`` apart, from sample ``index`` at a random start drawn from
    ``(seed, step, index)``, and applies ``transform`` (uint8 ``[T, H, W, 3]`` -> float).
    A file that fails to decode is logged once (its path and the reason), recorded in the
    sample's ``skipped`` list, and replaced by another sample drawn from the same generator,
    up to ``max_attempts`` tries. ``backend`` picks the CPU decoder (see ``decode_frames``).

    ``threads``: how many clips of a batch are loaded at once when the dataset runs in the
    main process (``num_workers=0``); default ``os.cpu_count()``, at most 8. Decoding and
    resizing release the GIL, so this uses the cores the workers would; inside a dataloader
    worker clips are loaded one at a time (the workers already use the cores). FFmpeg's own
    frame threads do not pay for clips of this size (measured in ``benchmarks/data.py``).

    A file's frame count comes from its :class:`~salt_fast.data.decode.VideoIndex`, read once
    per process (each dataloader worker keeps its own cache), not from probing the file for
    every clip.
    """

    def __init__(
        self,
        source: VideoList | Mixture,
        transform,
        clip_frames: int = 16,
        frame_step: int = 4,
        seed: int = 0,
        max_attempts: int = 10,
        backend: str = "pyav",
        threads: int | None = None,
    ) -> None:
        self.lists = source.lists if isinstance(source, Mixture) else [source]
        self.offsets = np.cumsum([0] + [len(lst) for lst in self.lists])
        self.transform = transform
        self.clip_frames, self.frame_step = clip_frames, frame_step
        self.seed, self.max_attempts, self.backend = seed, max_attempts, backend
        self.threads = min(8, os.cpu_count() or 1) if threads is None else max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:  # a thread pool neither pickles nor survives a fork
        return {**self.__dict__, "_pool": None}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def item(self, index: int | tuple[int, int]) -> tuple[str, int]:
        """``(path, label)`` of a flat index (lists concatenated in order) or a ``(list, sample)`` pair."""
        if isinstance(index, tuple):
            which, local = index
        else:
            which = int(np.searchsorted(self.offsets, index, side="right") - 1)
            local = index - int(self.offsets[which])
        path, label = self.lists[which][local]
        return str(path), int(label)

    def load(self, path: str, rng: np.random.Generator) -> torch.Tensor:
        """Decode one clip of ``path``: uint8 ``[clip_frames, H, W, 3]``."""
        if is_image(path):
            return decode_frames(path, [0] * self.clip_frames)
        indices = clip_indices(read_index(path).num_frames, self.clip_frames, self.frame_step, rng=rng)
        return decode_frames(path, indices, backend=self.backend)

    def __getitem__(self, key: int | tuple[int, int | tuple[int, int]]) -> Sample:
        """``key``: ``(step, index)`` as built by StepBatchSampler, or a bare flat index (step 0)."""
        return self.sample(key)

    def __getitems__(self, keys: list) -> list[Sample]:
        """The samples of one batch (the DataLoader calls this when it is defined)."""
        return self.samples(keys)

    def samples(self, keys: list, normalize: bool = True) -> list[Sample]:
        """``[self.sample(k, normalize) for k in keys]``, ``threads`` at a time outside workers."""
        if self.threads <= 1 or len(keys) <= 1 or torch.utils.data.get_worker_info() is not None:
            return [self.sample(key, normalize) for key in keys]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="salt_fast.data")
        return list(self._pool.map(lambda key: self.sample(key, normalize), keys))

    def sample(self, key, normalize: bool = True) -> Sample:
        """``self[key]``; with ``normalize=False`` (a transform with a ``pixels`` stage, such as
        :class:`TrainTransform`) the clip is the augmented uint8 pixels, normalised later by
        the :class:`BatchCollator` straight into the batch."""
        step, index = key if isinstance(key, tuple) else (0, key)
        transform = self.transform if normalize else self.transform.pixels
        rng = np.random.default_rng((self.seed, step, *(index if isinstance(index, tuple) else (index,))))
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        skipped: list[tuple[str, str]] = []
        for _ in range(self.max_attempts):
            path, label = self.item(index)
            try:
                clip = self.load(path, rng)
            except (VideoDecodeError, ValueError) as exc:
                reason = getattr(exc, "reason", str(exc))
                log.warning("skipping %s: %s", path, reason)
                skipped.append((path, reason))
                index = int(rng.integers(len(self)))
                continue
            return Sample(transform(clip, generator=generator), label, step, skipped)
        examples = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
        raise TooManyBadFiles(f"{self.max_attempts} consecutive samples failed to decode ({examples})")


class StepBatchSampler(Sampler[list[tuple]]):
    """An endless stream of batches of ``(step, index)`` keys, from any step on.

    Global batch ``step`` is the slice ``[pos * G, (pos + 1) * G)`` of epoch ``e``'s order,
    with ``G = batch_size * world_size`` and ``e, pos = divmod(step, steps_per_epoch)``;
    rank ``r`` takes the ``r``-th ``batch_size`` rows of it. So a global batch holds the same
    samples whatever the number of processes (2 processes reproduce 1 process at the same
    global batch), resuming at step ``s`` continues at the exact data position, and epochs
    roll over by themselves (the partial last global batch of an epoch is dropped).

    Args:
        epoch_order: ``epoch -> sequence of dataset indices`` (e.g. :func:`epoch_order`).
        batch_size: samples per process.
    """

    def __init__(self, epoch_order, batch_size: int, *, rank: int = 0, world_size: int = 1, start_step: int = 0):
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.epoch_order, self.batch_size = epoch_order, batch_size
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = len(epoch_order(0)) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch of {len(epoch_order(0))} samples is smaller than one global batch of {self.global_batch}")

    def __iter__(self) -> Iterator[list[tuple]]:
        step, cached = self.start_step, (None, None)
        while True:
            epoch, pos = divmod(step, self.steps_per_epoch)
            if cached[0] != epoch:
                cached = (epoch, list(self.epoch_order(epoch)))
            first = pos * self.global_batch + self.rank * self.batch_size
            yield [(step, index) for index in cached[1][first : first + self.batch_size]]
            step += 1


def epoch_order(source: VideoList | Mixture, seed: int = 0, shuffle: bool = True):
    """``epoch -> list of indices`` for :class:`StepBatchSampler`: a fresh permutation per epoch
    (``(list, sample)`` pairs drawn by the mixture's weights for a :class:`Mixture`)."""
    sampler = ShardedSampler(source if isinstance(source, Mixture) else len(source), seed=seed, shuffle=shuffle)

    def order(epoch: int) -> list:
        sampler.set_epoch(epoch)
        return list(sampler)

    return order


class _Pixels(Dataset):
    """A :class:`VideoClips` whose samples are the uint8 pixels (see ``VideoClips.sample``)."""

    def __init__(self, clips: VideoClips) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key) -> Sample:
        return self.clips.sample(key, normalize=False)

    def __getitems__(self, keys: list) -> list[Sample]:
        return self.clips.samples(keys, normalize=False)


@dataclass
class BatchCollator:
    """``collate_fn``: stacks samples into a :class:`Batch` and attaches the masks of its step.

    With ``normalize`` (a :class:`~salt_fast.data.transforms.Normalize`) the samples are
    uint8 pixels, normalised into the float batch as it is assembled. Inside a dataloader
    worker the batch is allocated in shared memory, so handing it to the main process
    copies nothing.

    Raises :class:`TooManyBadFiles` (listing examples) when the skipped files exceed
    ``max_bad_fraction`` of the batch's decode attempts.
    """

    mask_sampler: MaskSampler | None = None
    max_bad_fraction: float = 0.5
    rank: int = 0
    world_size: int = 1
    normalize: Normalize | None = None

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        skipped = [s for sample in samples for s in sample.skipped]
        attempts = len(samples) + len(skipped)
        if len(skipped) > self.max_bad_fraction * attempts:
            examples = "\n  ".join(f"{p}: {r}" for p, r in skipped[:8])
            raise TooManyBadFiles(
                f"{len(skipped)} of {attempts} decode attempts in one batch failed "
                f"(more than max_bad_fraction={self.max_bad_fraction}); examples:\n  {examples}"
            )
        clips = self.stack([s.clip for s in samples])
        labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
        return Batch(clips, labels, self.masks(len(samples), samples[0].step), skipped)

    def stack(self, clips: list[torch.Tensor]) -> torch.Tensor:
        out = _empty((len(clips), *clips[0].shape), torch.float32 if self.normalize else clips[0].dtype)
        if self.normalize is None:
            return torch.stack(clips, out=out)
        for slot, clip in zip(out, clips):
            self.normalize(clip, out=slot)
        return out

    def masks(self, batch_size: int, step: int) -> list[MaskBatch]:
        """This rank's rows of the global batch's masks: every rank truncates to the same global
        minimum, so shapes agree across ranks and match a single process at the same global batch."""
        if self.mask_sampler is None:
            return []
        rows = slice(self.rank * batch_size, (self.rank + 1) * batch_size)
        return [
            MaskBatch(*(None if t is None else t[rows] for t in m))
            for m in self.mask_sampler.sample(batch_size * self.world_size, step)
        ]


def _worker_init(worker_id: int) -> None:
    """Keep a dataloader worker's clip-sized buffers (a few MB each, several per clip) in
    glibc's heap instead of fresh mmaps, so they are reused instead of page-faulted in anew
    for every clip; a worker then holds at most 64 MB of freed memory. Only this worker
    process is affected (glibc only; elsewhere nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A new tensor; inside a dataloader worker in shared memory (as ``default_collate`` does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def video_loader(
    dataset: VideoClips,
    order,
    batch_size: int,
    mask_sampler: MaskSampler | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    num_workers: int = 0,
    max_bad_fraction: float = 0.5,
    pin_memory: bool = False,
) -> DataLoader:
    """An endless DataLoader of :class:`Batch` es from global step ``start_step`` on.

    ``order`` is ``epoch -> indices`` (see :func:`epoch_order`); batches and masks depend only
    on (seed, step), not on ``num_workers`` or ``world_size``. When the dataset's transform
    has a ``pixels`` stage (:class:`~salt_fast.data.transforms.TrainTransform`), workers pass
    uint8 clips to the collator, which normalises them straight into the batch.
    """
    normalize = None
    if isinstance(dataset, VideoClips) and all(hasattr(dataset.transform, a) for a in ("pixels", "normalize")):
        normalize, dataset = dataset.transform.normalize, _Pixels(dataset)
    return DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(order, batch_size, rank=rank, world_size=world_size, start_step=start_step),
        collate_fn=BatchCollator(mask_sampler, max_bad_fraction, rank, world_size, normalize),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init,
    )
