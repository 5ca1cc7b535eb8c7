"""Find the encoder (and, for surprise, the predictor and teacher) inside whatever a run left.

Accepted sources:

- an exported encoder, ``encoder.safetensors`` (``train.py`` writes one at the end of every
  run; its metadata names the preset, overrides and RoPE mode);
- a training checkpoint ``step_*.pt`` written by ``train.py``, or a run directory (its
  newest checkpoint is used); its saved config rebuilds the models exactly;
- a V-JEPA 2 checkpoint (``torch.save`` of ``encoder`` / ``target_encoder`` entries; see
  :mod:`salt_fast.vjepa2`): its target encoder unless ``which="encoder"``;
- ``random:PRESET`` (e.g. ``random:vit_tiny``): a randomly initialized encoder, the floor
  every learned encoder must beat.
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from salt_fast import checkpoint as ckpt
from salt_fast.config import config_from_dict
from salt_fast.masking import MASK_SETS
from salt_fast.models import Predictor, VisionTransformer, build_encoder
from salt_fast.stages import STAGES, Stage

__all__ = ["WHICH", "RunModels", "add_encoder_args", "load_encoder", "load_run_models"]

# Which encoder of a training run to read: the trained one, its teacher, or the stage's choice.
WHICH = ("auto", "encoder", "teacher")


def _parse_overrides(text: str | None) -> dict:
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)  # exports written before the metadata became JSON


def _export_encoder(path: Path) -> VisionTransformer:
    meta = ckpt.read_export_metadata(path)
    if "preset" not in meta:
        raise ckpt.CheckpointError(f"{path} has no 'preset' metadata: it was not written by salt_fast's export_encoder")
    overrides = _parse_overrides(meta.get("overrides"))
    if "rope_mode" in meta:
        overrides.setdefault("rope_mode", meta["rope_mode"])
    encoder = build_encoder(meta["preset"], **overrides)
    ckpt.load_encoder_weights(encoder, path)
    return encoder


@dataclass
class RunModels:
    """The models of one training checkpoint, on the CPU in eval mode.

    ``encoder`` is the trained encoder (the student in Stage 2); ``teacher`` is the frozen
    Stage-2 teacher or the V-JEPA EMA target encoder (None for Stage 1); ``predictor`` the
    Stage-2/V-JEPA predictor or the Stage-1 pixel decoder.
    """

    stage: Stage
    step: int
    encoder: VisionTransformer
    predictor: Predictor
    teacher: VisionTransformer | None
    config: dict
    path: Path


def _read_checkpoint(path: Path) -> tuple[Path, dict]:
    """A checkpoint file, or the newest readable checkpoint of a run directory (a corrupt newest
    one falls back to the previous one, with a warning)."""
    if path.is_file():
        return path, ckpt.load_checkpoint(path)
    for directory in (path / "checkpoints", path):
        found = ckpt.load_latest(directory) if directory.is_dir() else None
        if found is not None:
            return found
    raise FileNotFoundError(f"no training checkpoint (step_*.pt) in {path} or {path / 'checkpoints'}")


def load_run_models(path: str | Path) -> RunModels:
    """Rebuild a run's models from a training checkpoint file or a run directory (newest checkpoint).

    The saved config decides the shapes, so the weights load strictly; a salt teacher is read
    from the export the config names (its frozen weights are not stored in the checkpoint).
    """
    path, state = _read_checkpoint(Path(path))
    if "config" not in state or "model" not in state:
        raise ckpt.CheckpointError(f"{path} is not a salt_fast training checkpoint (no 'config' / 'model' entries)")
    cfg = config_from_dict(state["config"])
    stage = STAGES[cfg.stage]
    learner, teacher = stage.build(cfg.model, len(MASK_SETS[cfg.masking.configs]))
    learner.load_state_dict(state["model"])
    stage.restore_extras(teacher, state)
    learner.eval().requires_grad_(False)
    return RunModels(stage, int(state["step"]), learner.encoder, learner.head, teacher, state["config"], path)


def _vjepa2_encoder(path: Path, which: str) -> nn.Module:
    """The target encoder (``auto`` / ``teacher``, what V-JEPA 2 evaluates) or the encoder of a V-JEPA 2 file."""
    from salt_fast.vjepa2 import Vjepa2CheckpointError, load_vjepa2_checkpoint

    try:
        models = load_vjepa2_checkpoint(path)
    except Vjepa2CheckpointError as exc:
        raise ckpt.CheckpointError(
            f"{path} is neither a salt_fast training checkpoint (no end marker: truncated?) nor a V-JEPA 2 checkpoint: {exc}"
        ) from None
    encoder = models.encoder if which == "encoder" else models.target_encoder or models.encoder
    if encoder is None:
        raise ckpt.CheckpointError(f"{path} holds no encoder (only a predictor)")
    return encoder


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    """The ``--checkpoint`` / ``--which`` pair of every CLI that reads one encoder (see :func:`load_encoder`)."""
    parser.add_argument("--checkpoint", required=True, help="encoder.safetensors, a training checkpoint / run dir, or random:PRESET")
    parser.add_argument("--which", default="auto", choices=WHICH,
                        help="which encoder of a training checkpoint (auto: the stage's choice, the EMA target encoder for V-JEPA, "
                        "the trained encoder otherwise)")  # fmt: skip


def load_encoder(source: str | Path, which: str = "auto") -> VisionTransformer:
    """An encoder in eval mode, frozen, on the CPU.

    Args:
        source: an ``encoder.safetensors`` export, a training checkpoint or run directory, a
            V-JEPA 2 checkpoint file, or ``random:PRESET``.
        which: for training checkpoints, ``"encoder"`` (the trained encoder), ``"teacher"``
            (the V-JEPA EMA target encoder or the Stage-2 teacher) or ``"auto"``: the EMA
            target encoder for V-JEPA runs (what V-JEPA 2 evaluates), the trained encoder otherwise.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    text = str(source)
    if text.startswith("random:"):
        with torch.random.fork_rng(devices=[]):  # a fixed init, without touching the caller's RNG
            torch.manual_seed(0)
            encoder: nn.Module = build_encoder(text.removeprefix("random:"))
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"encoder checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            encoder = _export_encoder(path)
        elif path.is_file() and not ckpt.is_checkpoint_file(path):
            encoder = _vjepa2_encoder(path, which)
        else:
            run = load_run_models(path)
            use_teacher = (run.stage.eval_encoder if which == "auto" else which) == "teacher"
            if use_teacher and run.teacher is None:
                raise ValueError(f"{run.path} is a {run.stage.name!r} run: it has no teacher")
            encoder = run.teacher if use_teacher else run.encoder
    return encoder.eval().requires_grad_(False)
