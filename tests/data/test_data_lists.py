"""Dataset list parsing, mixtures and epoch sharding across ranks and workers."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from salt_fast.data.lists import (
    Mixture,
    ShardedSampler,
    VideoList,
    is_image,
    shard,
    worker_info,
)


def _write_list(path: Path, n: int, prefix: str = "v") -> VideoList:
    path.write_text("".join(f"{prefix}{i}.mp4 {i % 3}\n" for i in range(n)))
    return VideoList.from_file(path)


def test_parse_whitespace_and_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    text = (
        "# comment line\n"
        "\n"
        "a.mp4 3\n"
        "my clips/with space.webm\t7\n"  # whitespace: the label is the last field
        "my clips/comma sep.mp4, 2\n"  # comma: the path may contain spaces
        "b.mp4,0\n"
        "/abs/c.avi -1\n"
        "   img.JPG   4   \n"
    )
    lst = tmp_path / "sub" / "train.csv"
    lst.write_text(text)
    vl = VideoList.from_file(lst)
    base = lst.parent.resolve()
    assert len(vl) == 6
    assert vl[0] == (base / "a.mp4", 3)
    assert vl[1] == (base / "my clips/with space.webm", 7)
    assert vl[2] == (base / "my clips/comma sep.mp4", 2)
    assert vl[3] == (base / "b.mp4", 0)
    assert vl[4] == (Path("/abs/c.avi"), -1)
    assert vl[5] == (base / "img.JPG", 4)
    assert vl.source == lst.resolve()
    assert list(vl)[1] == vl[1]
    assert vl.num_classes == 8


@pytest.mark.parametrize(
    "line, what",
    [
        ("a.mp4 cat\n", "not an integer"),
        ("path,label\n", "not an integer"),
        ("lonely.mp4\n", "expected"),
    ],
)
def test_parse_errors_name_file_and_line(tmp_path, line, what):
    lst = tmp_path / "bad.txt"
    lst.write_text("ok.mp4 1\n# c\n" + line)
    with pytest.raises(ValueError, match=rf"bad\.txt:3: .*{what}"):
        VideoList.from_file(lst)


def test_missing_and_empty_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        VideoList.from_file(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        VideoList.from_file(empty)


def test_is_image():
    assert is_image("a/b.jpg") and is_image("x.JPEG") and is_image(Path("p.png"))
    assert is_image("q.bmp") and is_image("r.webp")
    assert not is_image("v.mp4") and not is_image("v.webm") and not is_image("noext")


def test_mixture_default_is_permutation(tmp_path):
    a = _write_list(tmp_path / "a.txt", 5, "a")
    b = _write_list(tmp_path / "b.txt", 7, "b")
    m = Mixture([a, b])
    assert len(m) == 12
    e0 = m.epoch_indices(0, seed=3)
    assert sorted(e0) == [(0, i) for i in range(5)] + [(1, i) for i in range(7)]
    assert m.epoch_indices(0, seed=3) == e0  # deterministic
    assert m.epoch_indices(1, seed=3) != e0  # a new order every epoch
    assert m.epoch_indices(0, seed=4) != e0
    assert m[(1, 2)] == b[2]


def test_mixture_weights(tmp_path):
    small = _write_list(tmp_path / "s.txt", 3, "s")
    big = _write_list(tmp_path / "b.txt", 50, "b")
    m = Mixture([small, big], weights=[1.0, 1.0], size=21)
    assert m.shares == [11, 10] or m.shares == [10, 11]
    idx = m.epoch_indices(2, seed=0)
    assert len(idx) == 21
    per_list = Counter(li for li, _ in idx)
    assert [per_list[0], per_list[1]] == m.shares
    # The small list cycles: every sample 3-4 times; the big one has no repeats.
    small_counts = Counter(si for li, si in idx if li == 0)
    assert set(small_counts) == {0, 1, 2} and set(small_counts.values()) <= {3, 4}
    big_ids = [si for li, si in idx if li == 1]
    assert len(set(big_ids)) == len(big_ids)
    assert all(0 <= si < 50 for si in big_ids)
    # Different epochs subsample different parts of the big list.
    big_ids_next = [si for li, si in m.epoch_indices(3, seed=0) if li == 1]
    assert set(big_ids_next) != set(big_ids)
    # Shares sum to size with rounding; a zero weight drops a list.
    assert sum(Mixture([small, big, small], weights=[1, 1, 1], size=10).shares) == 10
    assert Mixture([small, big], weights=[0, 1]).shares == [0, 53]
    with pytest.raises(ValueError):
        Mixture([small, big], weights=[1.0])
    with pytest.raises(ValueError):
        Mixture([small, big], weights=[-1.0, 2.0])
    with pytest.raises(ValueError):
        Mixture([])


@pytest.mark.parametrize(
    "n, world, workers", [(103, 4, 3), (16, 2, 2), (3, 4, 2), (50, 1, 4)]
)
def test_shard_covers_epoch_once(n, world, workers):
    indices = list(range(n))
    parts = {
        (r, w): shard(indices, r, world, w, workers)
        for r in range(world)
        for w in range(workers)
    }
    per_rank = [sum(len(parts[(r, w)]) for w in range(workers)) for r in range(world)]
    padded = -(-n // world) * world
    assert per_rank == [padded // world] * world  # equal steps on every rank
    seen = Counter(i for part in parts.values() for i in part)
    assert set(seen) == set(indices)  # everything covered
    repeats = sum(c - 1 for c in seen.values())
    assert (
        repeats == padded - n and padded - n < world
    )  # only the documented wrap padding
    if n >= world:
        assert max(seen.values()) <= 2


def test_shard_bad_args():
    with pytest.raises(ValueError):
        shard([1, 2], rank=2, world_size=2)
    with pytest.raises(ValueError):
        shard([1, 2], worker_id=1, num_workers=1)
    assert shard([], 0, 2) == []


def test_sampler_ranks_and_epochs(tmp_path):
    a = _write_list(tmp_path / "a.txt", 9, "a")
    b = _write_list(tmp_path / "b.txt", 4, "b")
    mix = Mixture([a, b])
    world = 3
    samplers = [
        ShardedSampler(mix, rank=r, world_size=world, seed=7) for r in range(world)
    ]
    epoch0 = [list(s) for s in samplers]
    assert all(len(e) == len(s) == 5 for e, s in zip(epoch0, samplers))  # ceil(13 / 3)
    union = Counter(x for e in epoch0 for x in e)
    assert set(union) == {(0, i) for i in range(9)} | {(1, i) for i in range(4)}
    assert sum(union.values()) - len(union) == 15 - 13  # two wrap-around repeats
    assert [list(s) for s in samplers] == epoch0  # same epoch, same order
    for s in samplers:
        s.set_epoch(1)
    epoch1 = [list(s) for s in samplers]
    assert epoch1 != epoch0
    # Integer source and no shuffle.
    s = ShardedSampler(10, rank=1, world_size=4, shuffle=False)
    assert list(s) == [1, 5, 9] and len(s) == 3
    assert sorted(ShardedSampler(10, seed=1)) == list(range(10))
    assert list(ShardedSampler(mix, shuffle=False))[:9] == [(0, i) for i in range(9)]


class _ShardedRange(IterableDataset):
    """An IterableDataset that shards an epoch of range(n) by rank and DataLoader worker."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        worker_id, num_workers = worker_info()
        order = torch.randperm(
            self.n, generator=torch.Generator().manual_seed(0)
        ).tolist()
        yield from shard(order, self.rank, self.world, worker_id, num_workers)


def test_shard_in_real_dataloader_workers():
    n, world = 37, 2
    got = []
    for rank in range(world):
        loader = DataLoader(
            _ShardedRange(n, rank, world), batch_size=None, num_workers=2
        )
        got.extend(int(x) for x in loader)
    seen = Counter(got)
    assert set(seen) == set(range(n))
    assert len(got) == 38  # 37 padded to 38 by one wrap-around sample
    assert sum(c - 1 for c in seen.values()) == 1
