"""Crash-safe training checkpoints, RNG state capture, and encoder export (safetensors).

Checkpoint file layout (``step_XXXXXXXX.pt``)::

    <torch.save payload, N bytes> <JSON record> <8-byte little-endian len(JSON)> b"SFCKPT01"

The JSON record is ``{"format": 1, "step": step, "payload_bytes": N, "sha256": hex}``. The
payload is streamed through SHA-256 while ``torch.save`` writes it (no extra in-memory copy of
the serialized state), and ``load_checkpoint`` verifies length and digest before unpickling.
A checksum (rather than "re-load after writing") is used because it also catches corruption
that happens *after* the save (bit rot, partial copies, a truncating rsync), and because torch's
zip reader does not verify per-record CRCs, so flipped bytes inside tensor data would otherwise
load silently. Read these files with ``load_checkpoint`` (payload is unpickled with
``weights_only=False``: only load checkpoints you trust).

Every final file is produced by: write to a temp file in the same directory, flush, fsync,
``os.replace`` onto the final name, fsync the directory. Old checkpoints are pruned only after
the new one is in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import struct
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:  # numpy is optional for the RNG helpers
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "checkpoint_step",
    "export_encoder",
    "is_checkpoint_file",
    "list_checkpoints",
    "load_checkpoint",
    "load_encoder_weights",
    "load_latest",
    "read_export_metadata",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 1
_MAGIC = b"SFCKPT01"
_TAIL = struct.Struct("<Q")  # length of the JSON record
_NAME_RE = re.compile(r"^step_(\d+)\.pt$")
_TMP_PREFIX = ".tmp-"
_EXPORT_FORMAT_KEY = "salt_fast_format"


class CheckpointError(RuntimeError):
    """A checkpoint / export file is corrupt, unreadable, or does not match the target."""


class CheckpointWarning(UserWarning):
    """A corrupt checkpoint was skipped in favour of an older one."""


# ----------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path, Any], None]) -> None:
    """``write(tmp_path, fileobj)`` fills a temp file next to ``path``; it then replaces ``path``.

    On any failure the temp file is removed and ``path`` (if it existed) is untouched.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=directory, prefix=f"{_TMP_PREFIX}{path.name}.", suffix=".partial"
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(tmp, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


class _HashingWriter:
    """File-like sink for ``torch.save`` that hashes and counts what passes through."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.nbytes += len(b)
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_step(path) -> int | None:
    """The step in a ``step_*.pt`` file name, or None for any other name."""
    m = _NAME_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(directory) -> list[Path]:
    """``step_*.pt`` files in ``directory``, newest (highest step) first. Temp/foreign files are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        step = checkpoint_step(p)
        if step is not None and p.is_file():
            found.append((step, p))
    found.sort(key=lambda sp: (sp[0], sp[1].name), reverse=True)
    return [p for _, p in found]


def save_checkpoint(directory, step: int, state: dict, keep: int = 3) -> Path:
    """Atomically write ``directory/step_{step:08d}.pt`` and prune all but the newest ``keep``.

    The file just written is never pruned, even if stale checkpoints with higher step numbers
    exist in the directory (e.g. after resuming from an older one because the newest was corrupt).
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    path = directory / f"step_{step:08d}.pt"

    def write(_tmp: Path, f) -> None:
        sink = _HashingWriter(f)
        torch.save(state, sink)
        record = {
            "format": FORMAT_VERSION,
            "step": step,
            "payload_bytes": sink.nbytes,
            "sha256": sink.sha.hexdigest(),
        }
        blob = json.dumps(record, sort_keys=True).encode()
        f.write(blob)
        f.write(_TAIL.pack(len(blob)))
        f.write(_MAGIC)

    _atomic_write(path, write)

    # Prune only now that the new checkpoint is durable under its final name.
    for old in list_checkpoints(directory)[keep:]:
        if old.name == path.name:
            continue
        try:
            old.unlink()
        except FileNotFoundError:
            pass
    return path


def _read_verified_payload(path: Path) -> tuple[dict, bytes]:
    """Return (record, payload bytes) after checking framing, length and SHA-256."""
    data = path.read_bytes()
    trailer = len(_MAGIC) + _TAIL.size
    if len(data) < trailer or data[-len(_MAGIC) :] != _MAGIC:
        raise CheckpointError(
            f"{path}: missing end marker (truncated or not a salt_fast checkpoint)"
        )
    (rec_len,) = _TAIL.unpack_from(data, len(data) - trailer)
    rec_start = len(data) - trailer - rec_len
    if rec_len <= 0 or rec_start < 0:
        raise CheckpointError(f"{path}: invalid integrity record length {rec_len}")
    try:
        record = json.loads(data[rec_start : len(data) - trailer])
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable integrity record ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {record!r}")
    if record.get("payload_bytes") != rec_start:
        raise CheckpointError(
            f"{path}: payload is {rec_start} bytes, integrity record says {record.get('payload_bytes')}"
        )
    payload = memoryview(data)[:rec_start]
    digest = hashlib.sha256(payload).hexdigest()
    if digest != record.get("sha256"):
        raise CheckpointError(
            f"{path}: checksum mismatch (sha256 {digest} != recorded {record.get('sha256')})"
        )
    return record, payload


def is_checkpoint_file(path) -> bool:
    """Whether ``path`` ends with ``save_checkpoint``'s end marker (cheap: reads 8 bytes; no verification)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - len(_MAGIC)))
            return f.read() == _MAGIC
    except OSError:
        return False


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and verify one checkpoint written by ``save_checkpoint``.

    Raises FileNotFoundError if ``path`` does not exist, CheckpointError if it is corrupt or
    cannot be unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        record, payload = _read_verified_payload(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    expected_step = checkpoint_step(path)
    if expected_step is not None and record.get("step") != expected_step:
        raise CheckpointError(
            f"{path}: file name says step {expected_step}, record says {record.get('step')}"
        )
    try:
        # weights_only=False: the state holds arbitrary python objects (RNG states, sampler state...).
        return torch.load(
            io.BytesIO(payload), map_location=map_location, weights_only=False
        )
    except Exception as e:
        raise CheckpointError(
            f"{path}: torch.load failed ({type(e).__name__}: {e})"
        ) from e


def load_latest(directory, map_location="cpu") -> tuple[Path, dict] | None:
    """Load the newest readable checkpoint in ``directory``.

    Corrupt/unreadable ones are skipped with one CheckpointWarning each. Returns None when the
    directory holds no checkpoint; raises CheckpointError if all of them are corrupt.
    """
    failures = []
    for path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except FileNotFoundError as e:  # deleted between listing and loading
            failures.append((path, str(e)))
        except CheckpointError as e:
            failures.append((path, str(e)))
            warnings.warn(
                f"skipping corrupt checkpoint {path}: {e}",
                CheckpointWarning,
                stacklevel=2,
            )
    if not failures:
        return None
    listing = "\n".join(f"  {p}: {why}" for p, why in failures)
    raise CheckpointError(
        f"all {len(failures)} checkpoint(s) in {directory} are unreadable:\n{listing}"
    )


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict:
    """Snapshot of python ``random``, numpy's global RNG, torch CPU and every CUDA generator."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if _np is not None:
        state["numpy"] = _np.random.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore a snapshot from ``rng_state`` (works after ``map_location`` moved tensors anywhere)."""
    if "python" in state:
        py = state["python"]
        # Pickling round trips may turn the inner tuple into a list; random.setstate wants a tuple.
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        if _np is None:  # pragma: no cover
            warnings.warn(
                "numpy RNG state present but numpy is not installed; not restored",
                stacklevel=2,
            )
        else:
            _np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn(
                "checkpoint holds CUDA RNG states but CUDA is unavailable; not restored",
                stacklevel=2,
            )
            return
        n = torch.cuda.device_count()
        if n != len(cuda):
            warnings.warn(
                f"checkpoint holds {len(cuda)} CUDA RNG states but {n} devices are visible; "
                f"restoring the first {min(n, len(cuda))}",
                stacklevel=2,
            )
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(torch.as_tensor(s).cpu().to(torch.uint8), device=i)


# ----------------------------------------------------------------------------- encoder export


def _safetensors():
    try:
        import safetensors
        import safetensors.torch
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "encoder export needs the 'safetensors' package: pip install safetensors"
        ) from e
    return safetensors


def export_encoder(
    encoder: torch.nn.Module, path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``encoder.state_dict()`` alone as safetensors, atomically.

    ``metadata`` values that are not strings are stored as JSON strings.
    """
    st = _safetensors()
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, value in encoder.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory (tied weights, views): give each its own copy.
        if (
            ptr in seen_storages
            or t.untyped_storage().nbytes() != t.numel() * t.element_size()
        ):
            t = t.clone()
        seen_storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    meta = {_EXPORT_FORMAT_KEY: "1"}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {k!r}")
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)

    def write(tmp: Path, f) -> None:
        st.torch.save_file(tensors, str(tmp), metadata=meta)
        # save_file wrote through its own handle; fsync it before the rename.
        with open(tmp, "rb+") as g:
            os.fsync(g.fileno())

    _atomic_write(path, write)
    return path


def _open_export(path: Path):
    st = _safetensors()
    if not path.is_file():
        raise FileNotFoundError(f"encoder export not found: {path}")
    try:
        return st.safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def read_export_metadata(path) -> dict[str, str]:
    """The string metadata stored by ``export_encoder`` (JSON values are left as strings)."""
    path = Path(path)
    with _open_export(path) as f:
        return dict(f.metadata() or {})


def load_encoder_weights(encoder: torch.nn.Module, path, strict: bool = True):
    """Load an ``export_encoder`` file into ``encoder``.

    All checks happen before the module is touched: missing/unexpected keys (when ``strict``) and
    shape mismatches (always) raise CheckpointError listing the keys. Returns the result of
    ``encoder.load_state_dict``.
    """
    path = Path(path)
    target = encoder.state_dict()
    with _open_export(path) as f:
        try:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor headers ({e})") from e
        missing = sorted(set(target) - set(keys))
        unexpected = sorted(set(keys) - set(target))
        mismatched = [
            f"{k}: file {shapes[k]} vs module {tuple(target[k].shape)}"
            for k in sorted(set(keys) & set(target))
            if shapes[k] != tuple(target[k].shape)
        ]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise CheckpointError(
                f"{path} does not match {type(encoder).__name__}: "
                + " | ".join(problems)
            )
        try:
            tensors = {k: f.get_tensor(k) for k in keys if k in target}
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor data ({e})") from e
    return encoder.load_state_dict(tensors, strict=strict)
