"""What every benchmark shares: what it records beside its numbers (device, versions, commit),
its ``--help`` formatting, and where it writes.

Where results go: a run writes into ``benchmarks/results/local/`` (git-ignored), so trying a
benchmark never rewrites the committed results; ``--refresh`` writes into the committed
``benchmarks/results/`` instead (to update them on purpose); ``--out PATH`` wins over both.
Every script declares these flags with :func:`add_output_args` and picks its file with
:func:`output_path`.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from salt_fast.cli import HelpFormatter
from salt_fast.metrics import write_result

__all__ = [
    "LOCAL", "LOCAL_RESULTS", "RESULTS", "ROOT", "HelpFormatter", "add_output_args", "cpu_model", "environment",
    "output_path", "results_dir", "shown", "write_json", "write_text",
]  # fmt: skip

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"  # committed: written only with --refresh
LOCAL = "local"  # the git-ignored subfolder of a results folder, where a run writes by default
LOCAL_RESULTS = RESULTS / LOCAL


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (for messages and help texts)."""
    path = Path(path)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def add_output_args(parser: argparse.ArgumentParser, default_name: str, what: str = "results JSON") -> None:
    """``--out PATH`` and ``--refresh``; ``default_name`` is the file's name in the results folder
    (a pattern such as ``data_<device>.json`` where the script derives it from the run)."""
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"{what} path, overriding --refresh (default: {default_name} in {shown(LOCAL_RESULTS)}/, "
        f"or in {shown(RESULTS)}/ with --refresh)",
    )  # fmt: skip
    parser.add_argument(
        "--refresh", action="store_true",
        help=f"refresh the committed results: write into {shown(RESULTS)}/ instead of the untracked {shown(LOCAL_RESULTS)}/",
    )  # fmt: skip


def results_dir(args: argparse.Namespace, committed: Path | None = None) -> Path:
    """The committed results folder (``committed``, default :data:`RESULTS`) with ``--refresh``,
    its untracked local/ subfolder otherwise."""
    committed = RESULTS if committed is None else Path(committed)
    return committed if args.refresh else committed / LOCAL


def output_path(args: argparse.Namespace, name: str, committed: Path | None = None) -> Path:
    """``--out`` when given, else ``name`` in :func:`results_dir`."""
    return Path(args.out) if args.out is not None else results_dir(args, committed) / name


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
    print(f"wrote {shown(Path(path))}")


def write_text(path: Path, text: str) -> None:
    """Write a text file (parent folders created) and say where it went."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {shown(path)}")
