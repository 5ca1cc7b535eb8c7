"""Data pipeline throughput: salt_fast's CPU loader against a V-JEPA 2-style loader, side by side.

The setting of issue 16: H.264 videos (320x240, 30 fps, written here with the synthetic
writer: libx264 veryfast, its default GOP, B-frames), 2 s and 4 s long; a training clip is
16 frames at step 4, a random resized crop to 224 (scale [0.3, 1]), a random flip and
ImageNet normalisation, in batches of 8 with multi-block masks attached (the same
``MaskSampler`` on both sides); 0 and 2 dataloader workers; one torch thread per process.

Sides (all in one process, their order rotated between repeats, the median of the repeats
kept):

* ``vjepa2``: the baseline, V-JEPA 2's ``VideoDataset`` order of operations rewritten here
  (see :class:`VJepa2StyleClips`): a decord ``VideoReader`` opened per clip with its default
  threads (``num_threads=-1`` as V-JEPA 2 passes it), ``get_batch`` of the sampled indices,
  then the whole clip converted to float, cropped, resized (bilinear, no antialiasing),
  flipped and normalised, ``default_collate`` plus the masks.
* ``pyav`` (the default) and ``decord`` / ``torchcodec`` (when installed): salt_fast's
  ``VideoClips`` + ``video_loader`` with that decoder.
* ``dali-cpu`` (VP9 copies of the same videos: DALI's CPU decoder cannot read H.264) and
  ``dali-gpu`` (H.264 on NVDEC, when a GPU is present), for reference.

Per clip, each side's decode and transform are also timed alone in this process, and
``total`` is the loader's wall time per clip with 0 workers (decode + transform + masks +
collate; salt_fast loads 2 clips at a time there). ``threads_per_clip_ms`` shows where
threads pay (clips loaded 1 or 2 at a time, FFmpeg frame threads 1 or 2), and
``machine_load`` how busy the CPUs were (other processes skew every number: run it on a
quiet machine). The baseline and the decord side need decord (``pip install -e .[bench]``).

    python benchmarks/data.py [--seconds 2 4] [--workers 0 2] [--repeats 3] [--quick] [--refresh | --out PATH]

Writes benchmarks/results/local/data_<device>.json (untracked; --refresh: the committed
benchmarks/results/data_<device>.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast.data import TrainTransform, VideoClips, VideoList, decode_frames, make_synthetic_dataset, video_loader  # noqa: E402
from salt_fast.data.decode import read_index  # noqa: E402
from salt_fast.data.loader import epoch_order  # noqa: E402
from salt_fast.data.sampling import clip_indices  # noqa: E402
from salt_fast.masking import MaskSampler  # noqa: E402

CLIP_FRAMES, FRAME_STEP, SIZE, FPS = 16, 4, 224, 30
SCALE, RATIO = (0.3, 1.0), (0.75, 1.35)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRID = (CLIP_FRAMES // 2, SIZE // 16, SIZE // 16)  # tubelet 2, patch 16


# ----------------------------------------------------------------------------- the baseline


def vjepa2_indices(num_frames: int, frames: int, step: int) -> np.ndarray:
    """V-JEPA 2's training clip sampling (one clip, random start): a window of
    ``frames * step`` frames ending at a random frame, ``frames`` indices spread evenly
    over it; a shorter video takes every ``step``-th frame from 0 and repeats its last."""
    window = frames * step
    if num_frames > window:
        end = np.random.randint(window, num_frames)
        idx = np.linspace(end - window, end, num=frames)
        return np.clip(idx, end - window, end - 1).astype(np.int64)
    idx = np.linspace(0, num_frames, num=num_frames // step)
    idx = np.concatenate([idx, np.full(frames - num_frames // step, num_frames)])
    return np.clip(idx, 0, num_frames - 1).astype(np.int64)


def vjepa2_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """Inception-style box with Python's ``random`` (V-JEPA 2's parameter draw)."""
    for _ in range(10):
        area = random.uniform(*SCALE) * height * width
        aspect = math.exp(random.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    w, h = width, height  # no draw fitted: a centred box with the aspect clamped into RATIO
    if width / height < RATIO[0]:
        h = round(width / RATIO[0])
    elif width / height > RATIO[1]:
        w = round(height * RATIO[1])
    return (height - h) // 2, (width - w) // 2, h, w


class VJepa2Transform:
    """V-JEPA 2's video transform, in its order: the whole uint8 clip to float, channels
    first, crop, bilinear resize of the float crop (no antialiasing), flip, normalise in
    pixel units in place."""

    def __init__(self) -> None:
        self.mean = torch.tensor(MEAN) * 255.0
        self.std = torch.tensor(STD) * 255.0

    def __call__(self, buffer: np.ndarray) -> torch.Tensor:
        x = torch.tensor(buffer, dtype=torch.float32).permute(3, 0, 1, 2)  # [C, T, H, W]
        top, left, h, w = vjepa2_crop_box(x.shape[2], x.shape[3])
        x = F.interpolate(x[:, :, top : top + h, left : left + w], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        if np.random.uniform() < 0.5:
            x = x.flip(-1)
        c, t, hh, ww = x.shape
        flat = x.reshape(c, -1).permute(1, 0)  # channels last, then normalise in place
        flat.sub_(self.mean).div_(self.std)
        return flat.permute(1, 0).view(c, t, hh, ww)


class VJepa2StyleClips(Dataset):
    """V-JEPA 2's ``VideoDataset.__getitem__`` for one clip per video, rewritten: a decord
    reader per clip (which reads the file's packets to index it), their indices,
    ``get_batch``, their transform; returns ``([clip], label, [indices])`` as theirs does."""

    def __init__(self, videos: VideoList) -> None:
        self.videos, self.transform = videos, VJepa2Transform()

    def __len__(self) -> int:
        return len(self.videos)

    def decode(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        import decord

        reader = decord.VideoReader(path, num_threads=-1, ctx=decord.cpu(0))
        indices = vjepa2_indices(len(reader), CLIP_FRAMES, FRAME_STEP)
        reader.seek(0)
        return reader.get_batch(indices.tolist()).asnumpy(), indices

    def __getitem__(self, index: int):
        path, label = self.videos[index]
        buffer, indices = self.decode(str(path))
        return [self.transform(buffer)], label, [indices]


class VJepa2StyleCollator:
    """``default_collate``, then one mask batch per configuration (V-JEPA 2's MaskCollator order)."""

    def __init__(self, masks: MaskSampler) -> None:
        self.masks, self.step = masks, 0

    def __call__(self, batch):
        collated = default_collate(batch)
        self.step += 1
        return collated, self.masks.sample(len(batch), self.step)


def vjepa2_loader(videos: VideoList, batch_size: int, workers: int) -> DataLoader:
    dataset = VJepa2StyleClips(videos)  # a long shuffled stream: no epoch boundaries in a measurement
    return DataLoader(
        dataset, batch_size=batch_size, sampler=RandomSampler(dataset, num_samples=10**6), drop_last=True, num_workers=workers,
        collate_fn=VJepa2StyleCollator(MaskSampler(GRID, seed=0)), persistent_workers=workers > 0,
    )  # fmt: skip


# ----------------------------------------------------------------------------- salt_fast


def salt_loader(videos: VideoList, backend: str, batch_size: int, workers: int) -> DataLoader:
    dataset = VideoClips(videos, TrainTransform(size=SIZE), CLIP_FRAMES, FRAME_STEP, backend=backend)
    return video_loader(dataset, epoch_order(videos), batch_size, MaskSampler(GRID, seed=0), num_workers=workers)


def clips_per_second(loader, batch_size: int, batches: int, warmup: int) -> float:
    """Clips per second over ``batches`` full batches after ``warmup`` (worker start-up)."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * batch_size / (time.perf_counter() - start)
    del iterator
    return rate


def per_clip_ms(side: str, videos: VideoList, clips: int) -> dict:
    """Decode and transform alone, ms per clip (median over ``clips`` clips, this process)."""
    paths = [str(videos[i % len(videos)][0]) for i in range(clips)]
    decode, transform = [], []
    if side == "vjepa2":
        dataset = VJepa2StyleClips(videos)
        for path in paths:
            t0 = time.perf_counter()
            buffer, _ = dataset.decode(path)
            t1 = time.perf_counter()
            dataset.transform(buffer)
            decode.append(t1 - t0)
            transform.append(time.perf_counter() - t1)
    else:
        train, rng, gen = TrainTransform(size=SIZE), np.random.default_rng(0), torch.Generator().manual_seed(0)
        for path in paths:
            t0 = time.perf_counter()
            indices = clip_indices(read_index(path).num_frames, CLIP_FRAMES, FRAME_STEP, rng=rng)
            clip = decode_frames(path, indices, backend=side)
            t1 = time.perf_counter()
            train(clip, generator=gen)
            decode.append(t1 - t0)
            transform.append(time.perf_counter() - t1)
    return {"decode_ms": 1e3 * statistics.median(decode), "transform_ms": 1e3 * statistics.median(transform)}


def thread_check(videos: VideoList, clips: int) -> dict:
    """Where threads pay, 0 workers: a batch's clips loaded 1 or 2 at a time (VideoClips
    ``threads``), and FFmpeg frame threads (1 or 2) for decoding one clip; ms per clip."""
    keys = [(1, i % len(videos)) for i in range(clips)]
    out = {}
    for threads in (1, 2):
        dataset = VideoClips(videos, TrainTransform(size=SIZE), CLIP_FRAMES, FRAME_STEP, threads=threads)
        dataset.samples(keys[:2], normalize=False)  # the thread pool and the file indexes
        start = time.perf_counter()
        dataset.samples(keys, normalize=False)
        out[f"clips_{threads}_at_a_time_ms"] = 1e3 * (time.perf_counter() - start) / clips
    rng = np.random.default_rng(0)
    jobs = [(str(videos[k][0]), clip_indices(read_index(videos[k][0]).num_frames, CLIP_FRAMES, FRAME_STEP, rng=rng)) for _, k in keys]
    for threads in (1, 2):
        start = time.perf_counter()
        for path, indices in jobs:
            decode_frames(path, indices, threads=threads)
        out[f"decode_ffmpeg_{threads}_threads_ms"] = 1e3 * (time.perf_counter() - start) / clips
    return out


def dali_rate(videos: VideoList, device: str, batch_size: int, batches: int) -> float:
    from salt_fast.data.dali import DaliVideoLoader

    files = [str(p) for p in videos.paths] * ((batches + 2) * batch_size // len(videos) + 1)
    loader = DaliVideoLoader(
        files, [0] * len(files), batch_size=batch_size, device=device, clip_frames=CLIP_FRAMES,
        frame_step=FRAME_STEP, size=SIZE, num_threads=os.cpu_count() or 1,
    )  # fmt: skip
    try:
        return clips_per_second(loader, batch_size, batches, 1)
    finally:
        loader.close()


# ----------------------------------------------------------------------------- the run


def write_videos(folder: Path, count: int, seconds: float, height: int, width: int, codec: str) -> VideoList:
    """``count`` synthetic videos (moving shapes over textures) and a list file of all of them."""
    written = make_synthetic_dataset(folder, num_videos=count, frames=round(seconds * FPS), height=height, width=width,
                                     fps=FPS, codec=codec, val_fraction=0.5)  # fmt: skip
    paths = sorted(written["videos"].iterdir())
    (folder / "all.txt").write_text("".join(f"{p} {i % 4}\n" for i, p in enumerate(paths)))
    return VideoList.from_file(folder / "all.txt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--videos", type=int, default=20, help="videos per length")
    parser.add_argument("--seconds", type=float, nargs="+", default=[2, 4], help="video lengths (30 fps)")
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"), help="video frame size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="dataloader worker counts")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side and setting (median kept)")
    parser.add_argument("--clips", type=int, default=40, help="clips timed for the per-clip decode/transform split")
    parser.add_argument("--sides", nargs="+", default=["vjepa2", "pyav", "decord", "torchcodec", "dali"],
                        help="what to measure (missing optional decoders are reported and skipped)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 short small videos, 0 workers, 1 repeat, 2 batches of 2")
    add_output_args(parser, "data_<device>.json")
    return parser


def machine_load() -> dict:
    """Load average and (Linux) CPU pressure: how busy the machine was besides this run.
    ``cpu_stall_us``: the kernel's running total of time some task waited for a CPU."""
    load = {"loadavg_1m": os.getloadavg()[0], "time": time.monotonic()}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        load["cpu_pressure_some_avg10"] = float(some[1].split("=")[1])
        load["cpu_stall_us"] = int(some[4].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return load


def stalled_percent(start: dict, end: dict) -> float | None:
    """Share of the time between two :func:`machine_load` readings in which some task waited
    for a CPU (2 workers and the main process on 2 cores cause some of it themselves)."""
    if "cpu_stall_us" not in start or "cpu_stall_us" not in end:
        return None
    return 100 * (end["cpu_stall_us"] - start["cpu_stall_us"]) / 1e6 / (end["time"] - start["time"])


def available(side: str) -> str | None:
    """None when ``side`` can run here, else why not."""
    need = {"vjepa2": "decord", "decord": "decord", "torchcodec": "torchcodec", "dali": "nvidia.dali"}.get(side)
    if need and importlib.util.find_spec(need.split(".")[0]) is None:
        return f"{need} not installed"
    if need == "torchcodec":
        try:
            import torchcodec.decoders  # noqa: F401  (fails without the system FFmpeg)
        except Exception as exc:
            return f"torchcodec unusable: {type(exc).__name__}: {exc}"
    return None


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.videos, args.seconds, args.size, args.batches, args.batch_size = 4, [1], [64, 96], 2, 2
        args.repeats, args.clips, args.workers = 1, 4, [0]
    torch.set_num_threads(1)  # parallelism comes from the workers, as in training
    random.seed(0)
    np.random.seed(0)
    load_start = machine_load()
    sides = [s for s in args.sides if s != "dali"]
    skipped = {s: available(s) for s in sides if available(s)}
    loader_sides = [s for s in sides if s not in skipped]
    results, breakdown, threads = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        lists = {sec: write_videos(Path(tmp) / f"h264_{sec:g}s", args.videos, sec, *args.size, "h264") for sec in args.seconds}
        # The loader measurements first and together (the ratios), then the per-clip splits.
        rates: dict[tuple[float, str, int], list[float]] = {}
        load_before = machine_load()
        for seconds, videos in lists.items():
            for rep in range(args.repeats):
                for workers in args.workers:
                    shift = rep % max(1, len(loader_sides))  # rotate the order of the sides
                    for side in loader_sides[shift:] + loader_sides[:shift]:
                        if side == "vjepa2":
                            loader = vjepa2_loader(videos, args.batch_size, workers)
                        else:
                            loader = salt_loader(videos, side, args.batch_size, workers)
                        rate = clips_per_second(loader, args.batch_size, args.batches, max(1, workers))
                        rates.setdefault((seconds, side, workers), []).append(rate)
                        print(f"{seconds:g} s videos, {workers} workers, {side:10}: {rate:6.1f} clips/s")
        load_measured = machine_load()
        for seconds, videos in lists.items():
            for side in loader_sides:
                for workers in args.workers:
                    runs = rates[(seconds, side, workers)]
                    base = rates.get((seconds, "vjepa2", workers))
                    results.append({
                        "path": side, "codec": "h264", "video_seconds": seconds, "workers": workers,
                        "clips_per_s": statistics.median(runs), "runs": runs,
                        "vs_vjepa2": statistics.median(runs) / statistics.median(base) if base else None, "note": None,
                    })  # fmt: skip
                total = 1e3 / statistics.median(rates[(seconds, side, 0)]) if (seconds, side, 0) in rates else None
                split = per_clip_ms(side, videos, args.clips)
                breakdown.append({"path": side, "video_seconds": seconds, **split, "total_ms": total})
            threads[f"{seconds:g}"] = thread_check(videos, args.clips)
            for side, why in skipped.items():
                results.append({"path": side, "codec": "h264", "video_seconds": seconds, "workers": None,
                                "clips_per_s": None, "note": why})  # fmt: skip
        for seconds, videos in lists.items():
            if "dali" in args.sides:
                why = available("dali")
                vp9 = None if why else write_videos(Path(tmp) / f"vp9_{seconds:g}s", args.videos, seconds, *args.size, "vp9")
                for device, codec, files in (("cpu", "vp9", vp9), ("gpu", "h264", videos)):
                    if device == "gpu" and not torch.cuda.is_available():
                        continue
                    rate = None if why else dali_rate(files, device, args.batch_size, args.batches)
                    results.append({"path": f"dali-{device}", "codec": codec, "video_seconds": seconds, "workers": None,
                                    "clips_per_s": rate, "note": why or "DALI's own threads, no workers"})  # fmt: skip
                    print(f"{seconds:g} s videos, dali-{device} ({codec}): " + (f"{rate:6.1f} clips/s" if rate else why))
    print()
    print("| videos | workers | " + " | ".join(f"{s} clips/s" for s in loader_sides) + " |")
    for seconds in args.seconds:
        for workers in args.workers:
            cells = []
            for s in loader_sides:
                row = next(r for r in results if (r["path"], r["video_seconds"], r["workers"]) == (s, seconds, workers))
                ratio = f" ({row['vs_vjepa2']:.2f}x)" if row["vs_vjepa2"] and s != "vjepa2" else ""
                cells.append(f"{row['clips_per_s']:.1f}{ratio}")
            print(f"| {seconds:g} s | {workers} | " + " | ".join(cells) + " |")
    for seconds, t in threads.items():
        print(f"{seconds} s threads (ms per clip): " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in t.items()))
    for b in breakdown:
        print(f"{b['video_seconds']:g} s {b['path']:10}: decode {b['decode_ms']:5.1f} ms, transform {b['transform_ms']:5.1f} ms"
              + (f", total {b['total_ms']:5.1f} ms per clip" if b["total_ms"] else ""))  # fmt: skip

    record = {
        "benchmark": "data",
        **environment(),
        "clip": {"frames": CLIP_FRAMES, "frame_step": FRAME_STEP, "size": SIZE, "augmentation": "random resized crop + flip + normalise, multi-block masks"},
        "videos": {"count": args.videos, "seconds": args.seconds, "height": args.size[0], "width": args.size[1], "fps": FPS,
                   "codec": "h264 (libx264 veryfast crf 12, default GOP and B-frames)"},  # fmt: skip
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "repeats": args.repeats,
        "protocol": "one process, torch.set_num_threads(1), sides rotated between repeats, median of the repeats",
        "machine_load": {
            "start": load_start, "after_the_loader_runs": load_measured, "end": machine_load(),
            "cpu_stalled_percent_during_the_loader_runs": stalled_percent(load_before, load_measured),
        },  # fmt: skip
        "results": results,
        "per_clip": breakdown,
        "threads_per_clip_ms": threads,
    }
    name = "data_" + record["device"].replace(" ", "_") + ".json"
    write_json(output_path(args, name), record)
    return record


if __name__ == "__main__":
    main()
