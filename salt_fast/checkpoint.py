"""Crash-safe training checkpoints, RNG state capture, and encoder export (safetensors).

Checkpoint file layout (``step_XXXXXXXX.pt``)::

    <torch.save payload, N bytes> <JSON record> <8-byte little-endian len(JSON)> b"SFCKPT01"

The JSON record is ``{"format": 1, "step": step, "payload_bytes": N, "sha256": hex}``. The
payload is streamed through SHA-256 while ``torch.save`` writes it (no extra in-memory copy of
the serialized state), and ``load_checkpoint`` verifies length and digest before unpickling.
A checksum (rather than "re-load after writing") is used because it also catches corruption
that happens *after* the save (bit rot, partial copies, a truncating rsync), and because torch's
zip reader does not verify per-record CRCs, so flipped bytes inside tensor data would otherwise
load silently. Read these files with ``load_checkpoint``: the payload is unpickled with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only and
never runs code; a file holding anything else is refused (:class:`UnsafeCheckpointError`),
so a checkpoint from someone else cannot execute code when it is loaded.

Every final file is produced by: write to a temp file in the same directory, flush, fsync,
``os.replace`` onto the final name, fsync the directory. Old checkpoints are pruned only after
the new one is in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import struct
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from salt_fast.models import VisionTransformer

if TYPE_CHECKING:
    from salt_fast.runtime import Run

try:  # numpy is optional for the RNG helpers
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

__all__ = [
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointWarning",
    "NonFiniteState",
    "UnsafeCheckpointError",
    "architecture",
    "check_encoder_weights",
    "checkpoint_step",
    "export_encoder",
    "export_run_encoder",
    "is_checkpoint_file",
    "list_checkpoints",
    "load_checkpoint",
    "load_encoder_weights",
    "load_latest",
    "read_export_metadata",
    "remove_partial_files",
    "restore_training_state",
    "resume_hint",
    "rng_state",
    "save_checkpoint",
    "save_training_state",
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


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects other than tensors and plain data; it is refused, never unpickled."""


class CheckpointMismatch(CheckpointError, ValueError):
    """A checkpoint was written by a run with another stage or model than the one resuming it."""


class NonFiniteState(CheckpointError):
    """A run's model state holds NaN or infinite values: it is not written."""


class CheckpointWarning(UserWarning):
    """A corrupt checkpoint was skipped in favour of an older one."""


def _legacy_numpy_globals() -> list:
    """What RNG states written before they became plain data need: NumPy's MT19937 key was an
    ndarray. These types rebuild an array from bytes and nothing else, so such files stay loadable."""
    if _np is None:
        return []
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, _np.ndarray, _np.dtype, type(_np.dtype(_np.uint32))]


_LEGACY_GLOBALS = _legacy_numpy_globals()


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
    cannot be read, UnsafeCheckpointError if it holds anything but tensors and plain data.
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
        with torch.serialization.safe_globals(_LEGACY_GLOBALS):
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(payload))
        except Exception:  # noqa: BLE001 - only used to name what was refused
            found = []
        what = ", ".join(g for g in found if g not in {_global_name(o) for o in _LEGACY_GLOBALS}) or str(e).splitlines()[0]
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain data ({what}); "
            "salt_fast reads checkpoints with torch.load(weights_only=True) and never runs code from a file"
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path}: torch.load failed ({type(e).__name__}: {e})") from e


def _global_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def load_latest(directory, map_location="cpu") -> tuple[Path, dict] | None:
    """Load the newest readable checkpoint in ``directory``.

    Corrupt/unreadable ones are skipped with one CheckpointWarning each. Returns None when the
    directory holds no checkpoint; raises CheckpointError if all of them are corrupt. An unsafe
    one (objects other than tensors and plain data) is not skipped: it stops the search, as
    someone other than salt_fast wrote it.
    """
    failures = []
    for path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except FileNotFoundError as e:  # deleted between listing and loading
            failures.append((path, str(e)))
        except UnsafeCheckpointError:
            raise
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
    """Snapshot of python ``random``, numpy's global RNG, torch CPU and every CUDA generator,
    as tensors and plain data (so ``torch.load(weights_only=True)`` reads it)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if _np is not None:
        _, keys, pos, has_gauss, cached = _np.random.get_state()
        state["numpy"] = {"keys": torch.from_numpy(keys.astype(_np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip
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
        elif isinstance(state["numpy"], dict):
            n = state["numpy"]
            keys = torch.as_tensor(n["keys"]).numpy().astype(_np.uint32)
            _np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        else:  # written before the state became plain data: NumPy's own tuple
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


def _check_export(f, path: Path, encoder: torch.nn.Module, strict: bool) -> list[str]:
    """The keys of the open export ``f`` after checking them against ``encoder`` (shapes only)."""
    target = encoder.state_dict()
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
        raise CheckpointError(f"{path} does not match {type(encoder).__name__}: " + " | ".join(problems))
    return keys


def check_encoder_weights(encoder: torch.nn.Module, path, strict: bool = True) -> None:
    """Check an ``export_encoder`` file against ``encoder`` from its headers alone (no tensor data
    is read, and ``encoder`` may live on the meta device); raises like :func:`load_encoder_weights`."""
    path = Path(path)
    with _open_export(path) as f:
        _check_export(f, path, encoder, strict)


def load_encoder_weights(encoder: torch.nn.Module, path, strict: bool = True):
    """Load an ``export_encoder`` file into ``encoder``.

    All checks happen before the module is touched: missing/unexpected keys (when ``strict``) and
    shape mismatches (always) raise CheckpointError listing the keys. Returns the result of
    ``encoder.load_state_dict``.
    """
    path = Path(path)
    with _open_export(path) as f:
        keys = _check_export(f, path, encoder, strict)
        target = encoder.state_dict()
        try:
            tensors = {k: f.get_tensor(k) for k in keys if k in target}
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor data ({e})") from e
    return encoder.load_state_dict(tensors, strict=strict)


def remove_partial_files(directory) -> list[Path]:
    """Delete the temporary files that a write killed midway left in ``directory`` (only
    ``.tmp-*.partial``, the names :func:`_atomic_write` uses); returns what was removed.
    Call it only while no other process writes there (a run holds its output_dir's lock)."""
    directory = Path(directory)
    removed = []
    for p in directory.glob(f"{_TMP_PREFIX}*.partial") if directory.is_dir() else ():
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


# ----------------------------------------------------------------------------- a run's training state


def architecture(config: dict) -> dict:
    """The parts of a run's config (as a dict) that decide what its checkpoint's weights are."""
    model = config.get("model", {})
    keys = ("encoder", "encoder_overrides", "teacher", "teacher_overrides", "predictor_overrides", "rope_mode")
    return {"stage": config.get("stage"), "masking": config.get("masking", {}).get("configs"), **{k: model.get(k) for k in keys}}


def _full_state() -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=True)  # unsharded, gathered on the CPU


def resume_hint(output_dir) -> str:
    """Which checkpoint a resume of the run in ``output_dir`` would continue from, as a sentence."""
    found = list_checkpoints(Path(output_dir) / "checkpoints")
    if not found:
        return "No checkpoint was written yet: a rerun starts from step 0."
    return f"A resume continues from {found[0]}, the last good state."


def _state_is_finite(run: Run) -> bool:
    """Every parameter of the learner and the teacher is finite, on every process (one host sync)."""
    modules = [run.learner] + ([run.teacher] if run.teacher is not None else [])
    local = [p.to_local() if hasattr(p, "to_local") else p for m in modules for p in m.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local]).all().to(torch.int32)
    if run.rt.world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def save_training_state(run: Run, step: int) -> None:
    """Checkpoint ``run`` after ``step`` steps into ``output_dir/checkpoints`` (collective: every
    rank calls it; rank 0 writes). Holds the learner and optimizer as full (unsharded) state dicts,
    every rank's RNG state, the config, and what the stage adds (the V-JEPA EMA teacher).

    Raises NonFiniteState, writing nothing, when a parameter is NaN or infinite: a checkpoint is
    only ever a good state, and older ones are pruned only after a newer one is on disk.
    """
    rt, cfg = run.rt, run.cfg
    if not _state_is_finite(run):
        raise NonFiniteState(
            f"the model state after step {step} is not finite; it was not saved. {resume_hint(cfg.output_dir)}"
        )
    state = {
        "step": step,
        "model": get_model_state_dict(run.learner, options=_full_state()),
        "optimizer": get_optimizer_state_dict(run.learner, run.optimizer, options=_full_state()),
        "rng": rng_state(),
        "config": cfg.to_dict(),
        **run.stage.checkpoint_extras(run.teacher),
    }
    if rt.world_size > 1:  # every rank's RNG, so a resume continues each one
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, state["rng"])
        state["rng"] = gathered
    if rt.rank == 0:
        save_checkpoint(Path(cfg.output_dir) / "checkpoints", step, state, keep=cfg.checkpoint.keep)
    if rt.world_size > 1:
        dist.barrier()


def restore_training_state(run: Run) -> int:
    """Resume ``run`` as ``checkpoint.resume`` says (auto: the newest valid checkpoint of its
    output_dir, if any; never; or a path). Restores the learner, optimizer, the stage's extras
    and this rank's RNG state; returns the step to continue from (0 for a fresh run). First
    removes the temporary files of checkpoint or export writes that a kill interrupted.

    Raises CheckpointMismatch when the checkpoint was written by a run with another stage or model.
    """
    resume, directory = run.cfg.checkpoint.resume, Path(run.cfg.output_dir) / "checkpoints"
    if run.rt.rank == 0:  # debris of writes a kill interrupted; the run holds its output_dir's lock
        for folder in (directory, directory.parent):
            remove_partial_files(folder)
    if resume == "never":
        return 0
    found = load_latest(directory) if resume == "auto" else (Path(resume), load_checkpoint(resume))
    if found is None:
        return 0
    path, state = found
    saved = architecture(state.get("config", {}))
    if saved != architecture(run.cfg.to_dict()):
        raise CheckpointMismatch(
            f"{path} was written by a run with another stage or model ({saved}); "
            f"use a fresh output_dir or checkpoint.resume=never"
        )
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(run.learner, state["model"], options=options)
    set_optimizer_state_dict(run.learner, run.optimizer, state["optimizer"], options=options)
    run.stage.restore_extras(run.teacher, state)
    set_rng_state(state["rng"][run.rt.rank] if isinstance(state["rng"], list) else state["rng"])
    if run.rt.rank == 0:
        print(f"resumed from {path} at step {state['step']}")
    return state["step"]


def export_run_encoder(run: Run, path) -> Path | None:
    """Write the run's trained encoder alone to ``path`` (safetensors; the next stage's teacher),
    with the metadata that rebuilds it. Collective; rank 0 writes and gets the path, others None."""
    weights = get_model_state_dict(run.learner, options=_full_state())
    if run.rt.rank != 0:
        return None
    m = run.cfg.model
    encoder = VisionTransformer(m.encoder_vit())  # plain, unsharded
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")})
    meta = {"preset": m.encoder, "overrides": m.encoder_overrides, "rope_mode": m.rope_mode, "stage": run.stage.name}
    return export_encoder(encoder, path, metadata=meta)
