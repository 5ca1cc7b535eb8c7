"""Datasets as file lists, weighted mixtures of lists, and epoch sharding.

A dataset is a text file with one sample per line, ``path label`` (the V-JEPA 2 format)
or ``path,label`` (CSV). The paper's V-3.6M pre-training set is a :class:`Mixture` of
three such lists (Kinetics-710, SSv2, a Panda-70M subset).

Sharding design
---------------
An epoch is a fixed, seeded list of sample ids (:meth:`Mixture.epoch_indices`); every
process computes the same list from ``(seed, epoch)``, so no communication is needed.
:func:`shard` then cuts it in two levels:

1. ranks: the list is padded by wrapping around to a multiple of ``world_size`` (as
   ``torch.utils.data.DistributedSampler`` does, so every rank runs the same number of
   steps and collectives never hang) and rank ``r`` takes positions ``r::world_size``;
2. dataloader workers: worker ``w`` of ``n`` takes ``w::n`` of its rank's share (no
   padding: the workers' outputs are merged by the same DataLoader).

Use :func:`shard` directly inside an ``IterableDataset`` (worker info comes from
:func:`worker_info`), or :class:`ShardedSampler` with a map-style dataset: a sampler runs
in the DataLoader's main process, which hands batches to workers, so there the worker
level is not needed. Across all (rank, worker) pairs every sample of the epoch appears
exactly once, except the ``padded_size - size < world_size`` wrap-around repeats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = [
    "IMAGE_EXTENSIONS",
    "Mixture",
    "ShardedSampler",
    "VideoList",
    "is_image",
    "shard",
    "worker_info",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

_INT = re.compile(r"[+-]?\d+")


def is_image(path: str | Path) -> bool:
    """True when ``path`` names an image (by extension, case-insensitive), not a video."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _parse_line(line: str) -> tuple[str, str] | None:
    """Split one list line into (path, label text); None when there is no label field.

    A comma wins when the text after the last comma is an integer (CSV: the path may
    contain spaces); otherwise the label is the last whitespace-separated field and the
    path is everything before it (V-JEPA 2 lists; the path may contain spaces too).
    """
    comma = [part.strip() for part in line.rsplit(",", 1)] if "," in line else None
    if comma and _INT.fullmatch(comma[1]):
        return comma[0], comma[1]
    fields = line.rsplit(None, 1)
    if len(fields) == 2 and _INT.fullmatch(fields[1]):
        return fields[0].strip(), fields[1]
    # No integer label either way: return the likeliest split so the error names it.
    if comma:
        return comma[0], comma[1]
    return (fields[0].strip(), fields[1]) if len(fields) == 2 else None


@dataclass(frozen=True)
class VideoList:
    """One dataset: sample paths (absolute) with integer labels, read from ``source``.

    ``vl[i]`` is ``(path, label)``; ``len(vl)`` the number of samples.
    """

    paths: list[Path]
    labels: list[int]
    source: Path

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(
                f"{self.source}: {len(self.paths)} paths but {len(self.labels)} labels"
            )

    @classmethod
    def from_file(cls, path: str | Path) -> VideoList:
        """Read a list file; relative sample paths resolve against the file's folder.

        Blank lines and lines starting with ``#`` are skipped. Raises FileNotFoundError
        for a missing file and ValueError (naming file and line) for a line without an
        integer label or a list without samples.
        """
        source = Path(path).expanduser().resolve()
        if not source.is_file():
            raise FileNotFoundError(f"dataset list not found: {source}")
        paths: list[Path] = []
        labels: list[int] = []
        with source.open(encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                parsed = _parse_line(line)
                if parsed is None or not parsed[0]:
                    raise ValueError(
                        f"{source}:{lineno}: expected 'path label' or 'path,label', got {line!r}"
                    )
                sample, label = parsed
                if not _INT.fullmatch(label):
                    raise ValueError(
                        f"{source}:{lineno}: label {label!r} is not an integer (line {line!r})"
                    )
                p = Path(sample).expanduser()
                paths.append(p if p.is_absolute() else source.parent / p)
                labels.append(int(label))
        if not paths:
            raise ValueError(f"dataset list has no samples: {source}")
        return cls(paths=paths, labels=labels, source=source)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Path, int]:
        return self.paths[i], self.labels[i]

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        return iter(zip(self.paths, self.labels))

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` (labels are class indices from 0)."""
        return max(self.labels) + 1


def _largest_remainder(weights: np.ndarray, total: int) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` that sum to ``total``."""
    exact = weights / weights.sum() * total
    shares = np.floor(exact).astype(np.int64)
    # Hand the leftover units to the largest fractional parts (ties: lower index first).
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[: total - int(shares.sum())]] += 1
    return shares.tolist()


class Mixture:
    """A weighted mixture of several :class:`VideoList` (e.g. K710 + SSv2 + Panda).

    One epoch has ``size`` samples (default: the sum of the list lengths). List ``i``
    contributes ``size * weights[i] / sum(weights)`` of them (rounded so the shares sum to
    ``size``); weights default to the list lengths, i.e. plain concatenation.
    ``m[(list_index, sample_index)]`` returns that list's ``(path, label)``.
    """

    def __init__(
        self,
        lists: Sequence[VideoList],
        weights: Sequence[float] | None = None,
        size: int | None = None,
    ) -> None:
        self.lists = list(lists)
        if not self.lists:
            raise ValueError("Mixture needs at least one list")
        lengths = np.array([len(vl) for vl in self.lists], dtype=np.float64)
        if weights is None:
            w = lengths
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.lists),):
                raise ValueError(f"{len(w)} weights for {len(self.lists)} lists")
            if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(
                    f"weights must be finite, >= 0 and not all 0, got {list(w)}"
                )
        self.weights: list[float] = w.tolist()
        self.size = int(lengths.sum()) if size is None else int(size)
        if self.size <= 0:
            raise ValueError(f"epoch size must be positive, got {self.size}")
        self.shares: list[int] = _largest_remainder(w, self.size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: tuple[int, int]) -> tuple[Path, int]:
        li, si = index
        return self.lists[li][si]

    def epoch_indices(self, epoch: int, seed: int = 0) -> list[tuple[int, int]]:
        """The epoch's ``size`` samples as ``(list index, sample index)``, shuffled.

        Deterministic given ``(seed, epoch)``. List ``i`` takes its share by cycling
        through a fresh permutation of itself: a list smaller than its share repeats
        (each sample at most ``ceil(share / len)`` times), a larger one is subsampled
        without repeats. With default weights this is a permutation of all samples.
        """
        ids: list[np.ndarray] = []
        for li, (vl, share) in enumerate(zip(self.lists, self.shares)):
            if share == 0:
                continue
            rng = np.random.default_rng([seed, epoch, 1 + li])
            perm = rng.permutation(len(vl))
            reps = math.ceil(share / len(vl))
            sample = np.tile(perm, reps)[:share]
            ids.append(np.stack([np.full(share, li), sample], axis=1))
        pairs = np.concatenate(ids)
        # Interleave the lists: one global shuffle so each batch mixes the datasets.
        order = np.random.default_rng([seed, epoch, 0]).permutation(len(pairs))
        return [(int(a), int(b)) for a, b in pairs[order]]


def worker_info() -> tuple[int, int]:
    """``(worker_id, num_workers)`` of the current DataLoader worker; ``(0, 1)`` outside one."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def shard(
    indices: Sequence,
    rank: int = 0,
    world_size: int = 1,
    worker_id: int = 0,
    num_workers: int = 1,
) -> list:
    """This (rank, worker)'s part of an epoch's ``indices`` (see the module docstring).

    The list is wrapped around to ``ceil(len / world_size) * world_size`` entries so
    every rank gets the same count; rank ``r`` takes ``r::world_size`` of that and worker
    ``w`` takes ``w::num_workers`` of the rank's part (workers may differ by one).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
        )
    if num_workers < 1 or not 0 <= worker_id < num_workers:
        raise ValueError(
            f"need 0 <= worker_id < num_workers, got {worker_id} of {num_workers}"
        )
    n = len(indices)
    if n == 0:
        return []
    padded = math.ceil(n / world_size) * world_size
    # Wrap-around padding; cycling (not one slice) also covers n < world_size.
    per_rank = [indices[i % n] for i in range(rank, padded, world_size)]
    return per_rank[worker_id::num_workers]


class ShardedSampler(Sampler):
    """A distributed sampler over a :class:`Mixture` epoch (or ``range(n)`` for an int).

    Yields ``(list index, sample index)`` tuples for a Mixture (so a map-style dataset's
    ``__getitem__`` receives the tuple; ``Mixture.__getitem__`` accepts it) and plain
    ints for ``source=n``. Rank ``r`` of ``world_size`` gets ``shard(epoch, r, world_size)``
    (wrap-padded, equal counts on all ranks). Call :meth:`set_epoch` before each epoch,
    as with ``DistributedSampler``, or every epoch repeats the same order.
    ``shuffle=False`` gives a fixed order: ``range(n)``, or a Mixture's epoch sorted by
    (list, sample), which is plain concatenation for default weights (evaluation).
    Worker splitting is left to the DataLoader (it hands this sampler's batches out).
    """

    def __init__(
        self,
        source: Mixture | int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if isinstance(source, int) and source <= 0:
            raise ValueError(f"need a positive number of samples, got {source}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
            )
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields next."""
        self.epoch = epoch

    def _epoch_indices(self) -> list:
        if isinstance(self.source, Mixture):
            pairs = self.source.epoch_indices(self.epoch, self.seed)
            # No shuffle: list-major order (plain concatenation for default weights).
            return pairs if self.shuffle else sorted(pairs)
        if not self.shuffle:
            return list(range(self.source))
        return (
            np.random.default_rng([self.seed, self.epoch])
            .permutation(self.source)
            .tolist()
        )

    def _size(self) -> int:
        return self.source.size if isinstance(self.source, Mixture) else self.source

    def __len__(self) -> int:
        return math.ceil(self._size() / self.world_size)

    def __iter__(self) -> Iterator:
        return iter(shard(self._epoch_indices(), self.rank, self.world_size))
