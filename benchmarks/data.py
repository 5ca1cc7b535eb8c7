"""Data pipeline throughput: training clips per second for each decoder path.

The same synthetic videos (written once, 224x224, H.264 and VP9) feed every path; a clip
is 16 frames with frame step 4, random resized crop to 224, flip and normalisation: what
one SALT training sample costs. Paths:

* ``pyav`` / ``torchcodec`` / ``decord``: salt_fast's CPU loader (``VideoClips`` +
  ``video_loader``) with that decoder, for 0..N dataloader workers. decord is what V-JEPA 2
  uses: it is the baseline.
* ``dali-cpu`` (VP9 only; DALI's CPU decoder cannot read H.264) and ``dali-gpu`` (NVDEC,
  when a GPU is present).

    python benchmarks/data.py [--videos 16] [--batches 6] [--batch-size 8] [--workers 0 1 2] [--refresh | --out PATH]

Writes benchmarks/results/local/data_<device>.json (untracked; --refresh: the committed
benchmarks/results/data_<device>.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast.data import TrainTransform, VideoClips, VideoList, make_synthetic_dataset, video_loader  # noqa: E402
from salt_fast.data.loader import epoch_order  # noqa: E402

CLIP_FRAMES, FRAME_STEP, SIZE = 16, 4, 224


def time_batches(batches, count: int) -> float:
    """Clips per second over ``count`` batches, after one warm-up batch (worker start-up)."""
    iterator = iter(batches)
    next(iterator)
    clips, start = 0, time.perf_counter()
    for _ in range(count):
        clips += next(iterator)[0].shape[0]
    return clips / (time.perf_counter() - start)


def cpu_path(videos: VideoList, backend: str, workers: int, batch_size: int, count: int) -> float:
    dataset = VideoClips(videos, TrainTransform(size=SIZE), CLIP_FRAMES, FRAME_STEP, backend=backend)
    return time_batches(video_loader(dataset, epoch_order(videos), batch_size, num_workers=workers), count)


def dali_path(videos: VideoList, device: str, batch_size: int, count: int) -> float:
    from salt_fast.data.dali import DaliVideoLoader

    files = [str(p) for p in videos.paths] * ((count + 1) * batch_size // len(videos) + 1)
    loader = DaliVideoLoader(
        files, [0] * len(files), batch_size=batch_size, device=device, clip_frames=CLIP_FRAMES,
        frame_step=FRAME_STEP, size=SIZE, num_threads=os.cpu_count() or 1,
    )  # fmt: skip
    return time_batches(loader, count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--videos", type=int, default=16, help="synthetic videos per codec")
    parser.add_argument("--frames", type=int, default=96, help="frames per synthetic video")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per path")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({0, 1, os.cpu_count() or 1}),
                        help="dataloader worker counts to time the CPU decoders with")  # fmt: skip
    add_output_args(parser, "data_<device>.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)  # parallelism comes from the workers, as in training

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        lists = {
            codec: VideoList.from_file(
                make_synthetic_dataset(
                    Path(tmp) / codec, num_videos=args.videos, frames=args.frames, height=SIZE,
                    width=SIZE, codec=codec,
                )["motion_train"]
            )
            for codec in ("h264", "vp9")
        }  # fmt: skip
        backends = [b for b in ("pyav", "torchcodec", "decord") if b == "pyav" or importlib.util.find_spec(b)]
        for codec, videos in lists.items():
            for backend in backends:
                for workers in args.workers:
                    try:
                        rate = cpu_path(videos, backend, workers, args.batch_size, args.batches)
                    except Exception as exc:  # a missing or broken optional decoder is a result too
                        rate, note = None, f"{type(exc).__name__}: {exc}"
                    else:
                        note = None
                    results.append({"path": backend, "codec": codec, "workers": workers, "clips_per_s": rate, "note": note})
                    print(f"{codec:5} {backend:11} workers {workers}: " + (f"{rate:7.1f} clips/s" if rate else note))
            dali_devices = (["cpu"] if codec == "vp9" else []) + (["gpu"] if torch.cuda.is_available() else [])
            for device in dali_devices if importlib.util.find_spec("nvidia.dali") else []:
                rate = dali_path(videos, device, args.batch_size, args.batches)
                results.append({"path": f"dali-{device}", "codec": codec, "workers": None, "clips_per_s": rate, "note": None})
                print(f"{codec:5} dali-{device:7}           : {rate:7.1f} clips/s")

    record = {
        "benchmark": "data",
        **environment(),
        "clip": {"frames": CLIP_FRAMES, "frame_step": FRAME_STEP, "size": SIZE, "augmentation": "random resized crop + flip"},
        "videos": args.videos,
        "video_frames": args.frames,
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "results": results,
    }
    name = "data_" + record["device"].replace(" ", "_") + ".json"
    write_json(output_path(args, name), record)
    return record


if __name__ == "__main__":
    main()
