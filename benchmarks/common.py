"""What every benchmark records beside its numbers: device, versions, commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from salt_fast.eval.probe import write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Device, library versions and the commit measured (``worktree_dirty``: it had local edits)."""
    status = _git("status", "--porcelain", "--", ".", ":!benchmarks/results")  # results are not code
    env = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "commit": _git("rev-parse", "HEAD") or "uncommitted",
        "worktree_dirty": None if status is None else bool(status),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def write_json(path: Path, record: dict) -> None:
    write_result(path, record)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
