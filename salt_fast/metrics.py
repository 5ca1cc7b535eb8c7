"""Training metrics: CSV + TensorBoard logging, a progress bar, plots, memory, throughput and result files.

TensorBoard, tqdm and matplotlib are optional: without them the logger writes only the
CSV, the progress bar prints a plain line now and then, and ``plot_metrics`` returns None;
each emits one warning per process.

CSV layout (``output_dir/metrics.csv``): first column ``step``, then the metric columns.
The columns are ``columns`` when given at construction, otherwise the keys of the first
logged row in order. A later row with new keys extends the header: the file is rewritten
to a temporary file with the wider header (old rows get empty cells) and atomically
replaced, so a crash at any moment leaves a complete, valid CSV. Missing keys in a row
are written as empty cells. Every row is flushed as it is written. When the CSV already
exists (a resumed run) it is appended to with its existing header, after the rows of the
steps the resumed run will log again are cut (``resume_step``), so every step appears once.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

__all__ = ["LogWindow", "MetricsLogger", "ProgressBar", "peak_memory_mb", "plot_metrics", "write_result"]

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _scalar(value) -> float | int | str:
    if isinstance(value, torch.Tensor):
        value = value.detach().item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    return float(value)


class MetricsLogger:
    """Appends one row per ``log(step, **scalars)`` to ``output_dir/metrics.csv`` and, when
    TensorBoard is installed and ``tensorboard=True``, to ``output_dir/tb``.

    Only rank 0 writes (other ranks create nothing); tensors are converted with ``.item()``.
    ``resume_step``: a run continuing after step ``s`` drops the rows and TensorBoard events of
    steps after ``s`` that an earlier, interrupted run wrote (it logs them again).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        rank: int = 0,
        tensorboard: bool = True,
        columns: Iterable[str] | None = None,
        filename: str = "metrics.csv",
        resume_step: int | None = None,
    ) -> None:
        self.rank = rank
        self.enabled = rank == 0
        self.output_dir = Path(output_dir)
        self.csv_path = self.output_dir / filename
        self._file = None
        self._writer: csv.DictWriter | None = None
        self._tb = None
        self._columns: list[str] = ["step", *(c for c in (columns or ()) if c != "step")]
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path, newline="") as f:
                header = next(csv.reader(f), [])
            self._columns = header + [c for c in self._columns if c not in header]
            if self._columns != header or resume_step is not None:
                self._rewrite(self._columns, until=resume_step)
            self._open()
        elif columns is not None:
            self._open(write_header=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as e:  # not installed, or a broken install (e.g. a protobuf mismatch)
                _warn_once("tensorboard", f"tensorboard unavailable ({e!r}); metrics go to the CSV only")
            else:
                purge = None if resume_step is None else resume_step + 1  # events of steps >= it go
                self._tb = SummaryWriter(log_dir=str(self.output_dir / "tb"), purge_step=purge)

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def _open(self, write_header: bool = False) -> None:
        self._file = open(self.csv_path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self._columns, restval="")
        if write_header:
            self._writer.writeheader()
            self._flush()

    def _flush(self) -> None:
        self._file.flush()  # to the OS: a crash of the process loses no row

    def _rewrite(self, columns: list[str], until: int | None = None) -> None:
        """Rewrite the CSV with a (wider) header and only the rows of steps <= ``until`` (all when
        None), atomically (temp file + ``os.replace``)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with open(self.csv_path, newline="") as src, open(tmp, "w", newline="") as dst:
            writer = csv.DictWriter(dst, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(row for row in csv.DictReader(src) if until is None or int(row["step"]) <= until)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.csv_path)

    def log(self, step: int, **scalars) -> None:
        if not self.enabled:
            return
        row = {k: _scalar(v) for k, v in scalars.items()}
        row["step"] = int(step)
        new = [k for k in row if k not in self._columns]
        if self._file is None:  # first row of a fresh file
            self._columns += new
            self._open(write_header=True)
        elif new:
            self._columns += new
            self._rewrite(self._columns)
            self._open()
        self._writer.writerow(row)
        self._flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _fmt_value(value) -> str:
    value = _scalar(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressBar:
    """Progress: tqdm when installed, else one plain line every ``print_every`` seconds (and at
    the last one). ``update(n=1, **postfix)`` advances and shows the postfix values (e.g.
    ``loss=...``), the rate in ``unit``/s (what is counted: ``"step"``, ``"batch"``, ``"pair"``...)
    and the ETA. Pass ``enabled=(rank == 0)``."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        enabled: bool = True,
        desc: str = "train",
        unit: str = "step",
        print_every: float = 30.0,
        file=None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total, self.n = int(total), int(initial)
        self.enabled = enabled
        self.desc = desc
        self.unit = unit
        self.print_every = print_every
        self._file = file
        self._clock = clock
        self._initial = int(initial)
        self._start = clock()
        self._last_print = self._start
        self._tqdm = None
        self._postfix: dict = {}
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            _warn_once("tqdm", "tqdm is not installed; progress is printed as plain lines")
        else:
            self._tqdm = tqdm(
                total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True, file=file, mininterval=1.0
            )

    @property
    def rate(self) -> float:
        """Units per second since construction."""
        elapsed = self._clock() - self._start
        done = self.n - self._initial
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds to ``total`` at the current rate (inf before the first step)."""
        rate = self.rate
        return max(self.total - self.n, 0) / rate if rate > 0 else math.inf

    def format(self, **postfix) -> str:
        pct = 100.0 * self.n / self.total if self.total else 100.0
        parts = [f"{self.desc} {self.n}/{self.total} ({pct:.0f}%)"]
        parts += [f"{k} {_fmt_value(v)}" for k, v in postfix.items()]
        parts += [f"{self.rate:.2f} {self.unit}/s", f"ETA {_fmt_duration(self.eta)}"]
        return " | ".join(parts)

    def update(self, n: int = 1, **postfix) -> None:
        """Advance by ``n``; ``postfix`` values replace the shown ones (kept until replaced)."""
        self.n += n
        if not self.enabled:
            return
        self._postfix.update(postfix)
        if self._tqdm is not None:
            if postfix:
                self._tqdm.set_postfix({k: _fmt_value(v) for k, v in self._postfix.items()}, refresh=False)
            self._tqdm.update(n)
            return
        now = self._clock()
        if now - self._last_print >= self.print_every or self.n >= self.total:
            self._last_print = now
            print(self.format(**self._postfix), file=self._file or sys.stdout, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_metrics(
    csv_path: str | os.PathLike, out_png: str | os.PathLike, keys: Iterable[str] = ("loss",)
) -> Path | None:
    """One panel per key (value against step) from a ``MetricsLogger`` CSV, saved as a PNG.

    Keys absent from the CSV are skipped. Returns the PNG path, or None (with a warning)
    when matplotlib is missing or none of the keys has data. Uses the Agg canvas directly,
    so pyplot's global backend is left alone.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        _warn_once("matplotlib", "matplotlib is not installed; no plots")
        return None
    series: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in keys}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            for key, (xs, ys) in series.items():
                value = row.get(key)
                if value not in (None, "") and row.get("step") not in (None, ""):
                    xs.append(float(row["step"]))
                    ys.append(float(value))
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        warnings.warn(f"none of {tuple(keys)} has data in {csv_path}; no plot", RuntimeWarning, stacklevel=2)
        return None
    fig = Figure(figsize=(7, 2.6 * len(series)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, (xs, ys)) in zip(axes, series.items()):
        ax.plot(xs, ys, lw=1.0)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if key.startswith("loss") and min(ys) > 0:
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def _cuda_device(device) -> torch.device | None:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return device


def peak_memory_mb(device: str | torch.device | int = "cuda") -> float | None:
    """``torch.cuda.max_memory_allocated`` in MiB since the last reset; None off CUDA."""
    if isinstance(device, int):
        device = torch.device("cuda", device)
    dev = _cuda_device(device)
    return None if dev is None else torch.cuda.max_memory_allocated(dev) / 2**20


class LogWindow:
    """What the training log reports for the steps since the last :meth:`reset`: clips/s, the
    achieved FLOP/s (and MFU against a peak) and the time spent waiting for data."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.clips, self.flops, self.data_wait_s = 0, 0, 0.0
        self._start = self._clock()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent inside counts as waiting for data."""
        start = self._clock()
        try:
            yield
        finally:
            self.data_wait_s += self._clock() - start

    def add(self, clips: int, flops: int) -> None:
        """One step's clips (all processes) and this process's FLOPs."""
        self.clips += clips
        self.flops += flops

    def rates(self, peak_flops: float | None = None) -> dict[str, float]:
        """``clips_per_s``, ``tflops_per_gpu``, ``mfu`` (0 without a known peak) and ``data_wait_s``."""
        elapsed = max(self._clock() - self._start, 1e-9)
        return {
            "clips_per_s": self.clips / elapsed,
            "tflops_per_gpu": self.flops / elapsed / 1e12,
            "mfu": self.flops / elapsed / peak_flops if peak_flops else 0.0,
            "data_wait_s": self.data_wait_s,
        }


def write_result(path: str | Path, result: dict) -> Path:
    """Write a results JSON (parent folders created, indented, trailing newline); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
