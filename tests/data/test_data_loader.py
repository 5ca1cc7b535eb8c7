"""The loader end to end: real video files -> (clips, labels, masks), robust to bad files."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from salt_fast.data import (
    Mixture,
    TooManyBadFiles,
    TrainTransform,
    VideoClips,
    VideoList,
    make_synthetic_dataset,
    video_loader,
)
from salt_fast.data.loader import epoch_order
from salt_fast.masking import MaskSampler
from support import ROOT

FRAMES, STEP, SIZE = 8, 2, 32
GRID = (FRAMES // 2, SIZE // 16, SIZE // 16)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, num_videos=8, frames=24, height=64, width=64, val_fraction=0.5, seed=3)


def loader_for(source, batch_size=4, num_workers=0, max_bad_fraction=0.5, seed=0, rank=0, world_size=1, start_step=0):
    dataset = VideoClips(source, TrainTransform(size=SIZE), clip_frames=FRAMES, frame_step=STEP, seed=seed)
    masks = MaskSampler(GRID, seed=seed)
    return video_loader(
        dataset, epoch_order(source, seed), batch_size, masks, rank=rank, world_size=world_size,
        start_step=start_step, num_workers=num_workers, max_bad_fraction=max_bad_fraction,
    )  # fmt: skip


def take(loader, n):
    return [batch for batch, _ in zip(loader, range(n))]


def test_batches_carry_clips_labels_and_the_masks_of_their_step(synthetic):
    videos = VideoList.from_file(synthetic["motion_train"])
    batches = take(loader_for(videos), 3)  # the stream is endless: epochs roll over
    reference = MaskSampler(GRID, seed=0)
    for step, batch in enumerate(batches):
        assert batch.clips.shape == (4, 3, FRAMES, SIZE, SIZE) and batch.clips.dtype == torch.float32
        assert batch.labels.dtype == torch.int64 and set(batch.labels.tolist()) <= set(range(4))
        assert abs(batch.clips.mean().item()) < 1.5  # ImageNet-normalised, not raw pixels
        assert batch.skipped == []
        for got, want in zip(batch.masks, reference.sample(4, step)):
            assert torch.equal(got.context, want.context) and torch.equal(got.target, want.target)
    # Resuming at a step gives exactly the batch that step had.
    resumed = next(iter(loader_for(videos, start_step=2)))
    assert torch.equal(resumed.clips, batches[2].clips) and torch.equal(resumed.masks[1].target, batches[2].masks[1].target)


def test_two_ranks_reproduce_one_process(synthetic):
    videos = VideoList.from_file(synthetic["motion_train"])
    whole = take(loader_for(videos, batch_size=4), 2)
    halves = [take(loader_for(videos, batch_size=2, rank=r, world_size=2), 2) for r in range(2)]
    for step, batch in enumerate(whole):
        parts = [halves[0][step], halves[1][step]]
        assert torch.equal(torch.cat([p.clips for p in parts]), batch.clips)
        for config in range(2):
            for field in ("context", "target"):
                joined = torch.cat([getattr(p.masks[config], field) for p in parts])
                assert torch.equal(joined, getattr(batch.masks[config], field))


def test_workers_do_not_change_the_batches(synthetic):
    videos = VideoList.from_file(synthetic["shape_train"])
    alone = take(loader_for(videos, batch_size=2), 3)
    parallel = take(loader_for(videos, batch_size=2, num_workers=2), 3)
    for a, b in zip(alone, parallel, strict=True):
        assert torch.equal(a.clips, b.clips) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.masks[1].context, b.masks[1].context)


def test_threads_and_the_collator_normalising_do_not_change_the_clips(synthetic):
    videos = VideoList.from_file(synthetic["motion_train"])
    keys = [(5, i) for i in range(len(videos))]
    one = VideoClips(videos, TrainTransform(size=SIZE), FRAMES, STEP, threads=1)
    two = VideoClips(videos, TrainTransform(size=SIZE), FRAMES, STEP, threads=2)
    alone, together = one.samples(keys), two.samples(keys)  # two clips loaded at once
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a.clip, b.clip) and a.label == b.label
    # The loader passes uint8 pixels and normalises them into the batch: the same floats.
    batch = next(iter(video_loader(two, lambda epoch: list(range(len(videos))), 4, start_step=5)))
    assert torch.equal(batch.clips, torch.stack([s.clip for s in two.samples(keys[:4])]))
    assert two.samples(keys[:1], normalize=False)[0].clip.dtype == torch.uint8


def bad_files(folder, good):
    """One file of each broken kind, plus the list entry of a file that does not exist."""
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "text.webm").write_text("not a video at all\n")
    data = good.read_bytes()
    (folder / "truncated.webm").write_bytes(data[: len(data) // 10])
    return ["missing.webm", "empty.mp4", "garbage.mp4", "text.webm", "truncated.webm"]


def test_bad_files_are_skipped_logged_and_replaced(synthetic, tmp_path, caplog):
    videos = VideoList.from_file(synthetic["motion_train"])
    broken = bad_files(tmp_path, videos.paths[0])
    lines = [f"{p} {label}" for p, label in zip(videos.paths, videos.labels)] + [f"{name} 0" for name in broken[:2]]
    listing = tmp_path / "mixed.txt"
    listing.write_text("\n".join(lines) + "\n")
    mixed = VideoList.from_file(listing)
    with caplog.at_level(logging.WARNING, logger="salt_fast.data"):
        batches = take(loader_for(mixed, batch_size=3, max_bad_fraction=0.9), 4)
    assert all(batch.clips.shape[0] == 3 for batch in batches)  # every bad file was replaced
    skipped = [path for batch in batches for path, _ in batch.skipped]
    assert skipped and all(p.endswith(("missing.webm", "empty.mp4")) for p in skipped)
    messages = [r.getMessage() for r in caplog.records]
    assert any("missing.webm" in m and "not found" in m for m in messages)
    assert any("empty.mp4" in m and "empty" in m for m in messages)


def test_a_batch_of_mostly_bad_files_stops_with_examples(synthetic, tmp_path):
    videos = VideoList.from_file(synthetic["motion_train"])
    broken = bad_files(tmp_path, videos.paths[0])
    listing = tmp_path / "bad.txt"
    listing.write_text("".join(f"{name} 1\n" for name in broken) + f"{videos.paths[0]} 2\n")
    with pytest.raises(TooManyBadFiles) as err:
        take(loader_for(VideoList.from_file(listing), batch_size=4, max_bad_fraction=0.2), 1)
    message = str(err.value)
    assert "max_bad_fraction=0.2" in message and any(name in message for name in broken)


def test_images_become_clips_and_mixtures_shard(synthetic, tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "still.png")
    (tmp_path / "images.txt").write_text("still.png 7\n")
    images = VideoList.from_file(tmp_path / "images.txt")
    sample = VideoClips(images, TrainTransform(size=SIZE), clip_frames=FRAMES, frame_step=STEP)[0]
    assert sample.label == 7 and torch.equal(sample.clip[:, 0], sample.clip[:, -1])  # one frame, repeated

    mixture = Mixture([VideoList.from_file(synthetic["motion_train"]), images], weights=[0.5, 0.5])
    batch = next(iter(loader_for(mixture, batch_size=4)))
    assert batch.clips.shape == (4, 3, FRAMES, SIZE, SIZE)


def test_data_benchmark_runs(tmp_path):
    import importlib.util
    import json
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "data.py"
    out = tmp_path / "data.json"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Exception ignored" not in done.stderr  # DALI shuts down cleanly
    record = json.loads(out.read_text())
    rows = {(r["path"], r["codec"], r["workers"]): r for r in record["results"]}
    assert rows[("pyav", "h264", 0)]["clips_per_s"] > 0
    split = {r["path"]: r for r in record["per_clip"]}
    assert split["pyav"]["decode_ms"] > 0 and split["pyav"]["transform_ms"] > 0 and split["pyav"]["total_ms"] > 0
    if importlib.util.find_spec("decord"):  # the V-JEPA 2-style baseline needs decord
        assert rows[("vjepa2", "h264", 0)]["clips_per_s"] > 0 and rows[("pyav", "h264", 0)]["vs_vjepa2"] > 0
    if importlib.util.find_spec("nvidia.dali"):
        assert rows[("dali-cpu", "vp9", None)]["clips_per_s"] > 0
