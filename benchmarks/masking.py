"""Mask sampling throughput: C++ (salt_fast._C) vs the NumPy reference, single thread.

One "batch" is MaskSampler.sample(24, step) on the 8x14x14 grid with MULTI_BLOCK (short + long
range) and "min" truncation: both configurations sampled and collated into id tensors, i.e.
everything a V-JEPA-style collator does for the masks. Each backend gets a warm-up, then runs
for about --seconds with a fresh step every batch (a pure function of the step, so every
batch is new work). Writes benchmarks/results/masking_cpu.json.

    python benchmarks/masking.py [--seconds 2] [--batch 24] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from salt_fast import masking as M

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return out or "uncommitted"
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def worktree_dirty() -> bool | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return bool(out.strip())
    except (OSError, subprocess.CalledProcessError):
        return None


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per backend")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "masking_cpu.json")
    args = parser.parse_args()

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

    record = {
        "benchmark": "masking",
        "device": cpu_model(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "commit": git_commit(),
        "worktree_dirty": worktree_dirty(),  # True: the measured code may differ from the commit
        "batch": args.batch,
        "grid": list(grid),
        "configs": [repr(c) for c in M.MULTI_BLOCK],
        "truncation": "min",
        "seconds_per_backend": args.seconds,
        "backends": results,
        "speedup_cpp_over_python": speedup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
