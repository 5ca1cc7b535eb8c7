"""Mask sampling throughput: C++ (salt_fast._C) vs the NumPy reference, single thread.

One "batch" is MaskSampler.sample(24, step) on the 8x14x14 grid with MULTI_BLOCK (short + long
range) and "min" truncation: both configurations sampled and collated into id tensors, i.e.
everything a V-JEPA-style collator does for the masks. Each backend gets a warm-up, then runs
for about --seconds with a fresh step every batch (a pure function of the step, so every
batch is new work). Writes benchmarks/results/local/masking_cpu.json (untracked; --refresh:
the committed benchmarks/results/masking_cpu.json).

    python benchmarks/masking.py [--seconds 2] [--batch 24] [--refresh | --out PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast import masking as M  # noqa: E402

def time_backend(backend: str, batch: int, grid: tuple[int, int, int], seconds: float) -> dict:
    sampler = M.MaskSampler(grid, M.MULTI_BLOCK, seed=0, truncation="min", backend=backend)
    step = 0
    warm_end = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_end:
        sampler.sample(batch, step)
        step += 1
    n = 0
    start = time.perf_counter()
    while True:
        sampler.sample(batch, step + n)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"batches": n, "seconds": elapsed, "batches_per_s": n / elapsed, "ms_per_batch": 1e3 * elapsed / n}


def mask_statistics(batch: int, grid: tuple[int, int, int], batches: int) -> dict:
    """Per configuration: token fractions masked before truncation, and kept after "min"
    truncation (V-JEPA 2's), averaged over ``batches`` batches."""
    n = grid[0] * grid[1] * grid[2]
    padded = M.MaskSampler(grid, M.MULTI_BLOCK, seed=0, truncation="pad")
    truncated = M.MaskSampler(grid, M.MULTI_BLOCK, seed=0, truncation="min")
    sums = [dict.fromkeys(("masked", "context_kept", "targets_kept"), 0.0) for _ in M.MULTI_BLOCK]
    for step in range(batches):
        for acc, full, cut in zip(sums, padded.sample(batch, step), truncated.sample(batch, step)):
            acc["masked"] += full.target_valid.sum().item() / (batch * n)
            acc["context_kept"] += cut.context.shape[1] / n
            acc["targets_kept"] += cut.target.shape[1] / n
    names = ("short_range", "long_range")
    return {name: {k: v / batches for k, v in acc.items()} for name, acc in zip(names, sums)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per backend")
    parser.add_argument("--batch", type=int, default=24, help="clips per sampled batch")
    parser.add_argument("--stat-batches", type=int, default=200, help="batches for the mask statistics")
    add_output_args(parser, "masking_cpu.json")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    torch.set_num_threads(1)  # the bar is single-thread; the C++ path is single-threaded anyway
    grid = (8, 14, 14)
    backends = ["cpp", "python"] if M.cpp_available() else ["python"]
    results = {b: time_backend(b, args.batch, grid, args.seconds) for b in backends}

    print(f"mask sampling, batch {args.batch}, grid {grid}, MULTI_BLOCK, truncation 'min', 1 thread")
    print(f"{'backend':<8} {'batches/s':>10} {'ms/batch':>10}")
    for b, r in results.items():
        print(f"{b:<8} {r['batches_per_s']:>10.1f} {r['ms_per_batch']:>10.4f}")
    speedup = None
    if "cpp" in results:
        speedup = results["cpp"]["batches_per_s"] / results["python"]["batches_per_s"]
        print(f"speedup cpp / python: {speedup:.1f}x")
    else:
        print("salt_fast._C not built: only the Python reference was timed")

    stats = mask_statistics(args.batch, grid, args.stat_batches)
    for name, st in stats.items():
        print(
            f"{name}: {st['masked']:.1%} of tokens masked; after 'min' truncation the batch keeps "
            f"{st['context_kept']:.1%} context and {st['targets_kept']:.1%} targets"
        )
    record = {
        "benchmark": "masking",
        **environment(),
        "batch": args.batch,
        "grid": list(grid),
        "configs": [repr(c) for c in M.MULTI_BLOCK],
        "truncation": "min",
        "seconds_per_backend": args.seconds,
        "backends": results,
        "speedup_cpp_over_python": speedup,
        "mask_statistics": {"batches": args.stat_batches, **stats},
    }
    write_json(output_path(args, "masking_cpu.json"), record)


if __name__ == "__main__":
    main()
