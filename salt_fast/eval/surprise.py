"""Intuitive-physics surprise (the paper's Appendix E.1, after Garrido et al. 2025): how badly does
the model predict what happens next?

A window of ``context_frames + predict_frames`` frames slides over the video (``stride`` frames
apart). The encoder f sees the context frames' tokens; the predictor g predicts every token of
the following frames; the target h gives what it should have predicted, and the window's
surprise is the stage's training loss between the two:

- salt / vjepa runs: h is the target encoder (the Stage-2 teacher, or the V-JEPA EMA encoder)
  on the whole window, and the surprise is the L1 distance to its LayerNorm'd latents;
- pixel (Stage-1) runs: g is the pixel decoder, h the per-tubelet normalised pixels of the
  predicted frames, and the surprise their mean squared error.

The predictor uses the mask token of the run's FutureFrames configuration when it has one
(training asked it exactly this question: the later frames from the earlier ones), else the
first configuration's (``--mask-index`` overrides). A video's surprise is the mean (the paper's
choice) or max over its windows. An item of the
list is a **pair** (``possible impossible``: correct when the impossible video is more
surprising) or an IntPhys-style matched **quadruplet** (``possible possible impossible
impossible``, built from two first and two second halves so that both sets hold the same
frames, see :mod:`salt_fast.data.physics`: correct when the impossible pair's total surprise is
larger). Accuracy comes with a 95% Wilson score interval (binomial over items).

Controls: ``--checkpoint random:PRESET`` (encoder, predictor and target encoder all randomly
initialised, PRESET for both encoders, the default predictor), or a run with
``--control random`` (the run's architecture, every model at its random init) or
``--control random-student`` (the run's trained target, a random encoder + predictor: what the
target side alone gives). Random weights are seeded by ``--control-seed``.

    python -m salt_fast.eval.surprise --checkpoint runs/salt --items physics_teleport_quads.txt \\
        --context-frames 4 --predict-frames 4 --resolution 64 --out surprise.json

Lists: one item per line, 2 or 4 paths (relative paths resolve against the list's folder;
``#`` comments allowed); ``--pairs`` is an alias of ``--items``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salt_fast.cli import HelpFormatter, UsageError, one_line_errors
from salt_fast.config import ModelConfig, config_from_dict
from salt_fast.data import EvalTransform, decode_frames, probe
from salt_fast.kernels.pixel_loss import pixel_targets_reference
from salt_fast.masking import MASK_SETS, FutureFrames
from salt_fast.metrics import ProgressBar, write_result
from salt_fast.runtime import autocast_for
from salt_fast.stages import STAGES

from .encoders import load_run_models

__all__ = [
    "CONTROLS",
    "SurpriseModel",
    "accuracy_summary",
    "clip_surprise",
    "future_mask_index",
    "item_correct",
    "judge_items",
    "load_surprise_model",
    "load_video",
    "load_videos",
    "pair_accuracy",
    "read_items",
    "read_pairs",
    "score_items",
    "score_models",
    "surprise_scores",
    "video_surprise",
    "wilson_interval",
    "window_surprise",
]

# What replaces a run's trained weights: nothing, everything, or the encoder and predictor only.
CONTROLS = ("none", "random", "random-student")
Z95 = 1.959963984540054  # the two-sided 95% normal quantile


@dataclass
class SurpriseModel:
    """The three models of the paper's Eq. 2: f (``encoder``), g (``predictor``, or a Stage-1 pixel
    decoder) and h (``target``: a target encoder, or None for a pixel decoder, whose target is the
    per-tubelet normalised pixels). ``mask_index`` picks the predictor's mask token."""

    encoder: nn.Module
    predictor: nn.Module
    target: nn.Module | None
    mask_index: int = 0

    def to(self, device: torch.device | str) -> SurpriseModel:
        for m in (self.encoder, self.predictor, self.target):
            if m is not None:
                m.to(device).eval().requires_grad_(False)
        return self


def _check_window(encoder: nn.Module, context_frames: int, predict_frames: int, stride: int) -> None:
    tubelet = encoder.cfg.tubelet_size
    if context_frames < tubelet or context_frames % tubelet or predict_frames < tubelet or predict_frames % tubelet:
        raise ValueError(
            f"context_frames ({context_frames}) and predict_frames ({predict_frames}) must be positive multiples of "
            f"the tubelet size {tubelet}"
        )
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def _window_starts(video: Tensor, length: int, stride: int) -> list[int]:
    if video.ndim != 4 or video.shape[1] < length:
        raise ValueError(f"expected a video [3, T, H, W] with T >= {length} frames, got shape {tuple(video.shape)}")
    return list(range(0, video.shape[1] - length + 1, stride))


@torch.no_grad()
def clip_surprise(model: SurpriseModel, clips: Tensor, context_frames: int, targets: dict | None = None) -> Tensor:
    """Surprise of each clip ``[B, 3, L, H, W]`` (its first ``context_frames`` frames are the
    context, the rest is predicted): float32 ``[B]`` on the CPU. ``targets``: a cache of target
    outputs on these clips, shared by models with the same target module (or pixel targets)."""
    targets = {} if targets is None else targets
    encoder = model.encoder
    device = next(encoder.parameters()).device
    clips = clips.to(device)
    grid = encoder.token_grid(clips.shape)
    n_context = context_frames // encoder.cfg.tubelet_size * grid[1] * grid[2]
    ids = torch.arange(grid[0] * grid[1] * grid[2], device=device)
    B = clips.shape[0]
    context_ids, target_ids = ids[:n_context].expand(B, -1), ids[n_context:].expand(B, -1)
    key = ("pixels", encoder.cfg.tubelet_size, encoder.cfg.patch_size) if model.target is None else id(model.target)
    with autocast_for(device):
        context = encoder(clips, context_ids)
        pred = model.predictor(context, context_ids, target_ids, grid, model.mask_index).float()
        if key not in targets and model.target is not None:
            target = model.target(clips).float()
            targets[key] = F.layer_norm(target, (target.shape[-1],))
    if model.target is None:  # a pixel decoder: Stage 1's own target and loss
        if key not in targets:
            targets[key] = pixel_targets_reference(clips, encoder.cfg.tubelet_size, encoder.cfg.patch_size)
        return (pred - targets[key][:, n_context:]).square().mean(dim=(1, 2)).cpu()
    return (pred - targets[key][:, n_context:]).abs().mean(dim=(1, 2)).cpu()


@torch.no_grad()
def window_surprise(
    encoder: nn.Module,
    predictor: nn.Module,
    target_encoder: nn.Module | None,
    video: Tensor,
    context_frames: int,
    predict_frames: int,
    stride: int = 2,
    mask_index: int = 0,
    batch_size: int = 16,
) -> Tensor:
    """Surprise of every window of ``video [3, T, H, W]`` (normalized like training input).

    Window ``w`` covers frames ``[w * stride, w * stride + context_frames + predict_frames)``;
    both frame counts must be multiples of the tubelet size. ``target_encoder=None``: the
    predictor is a pixel decoder (see the module docstring). Returns float32 ``[num_windows]``.
    """
    _check_window(encoder, context_frames, predict_frames, stride)
    length = context_frames + predict_frames
    starts = _window_starts(video, length, stride)
    model = SurpriseModel(encoder, predictor, target_encoder, mask_index)
    chunks = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]
    return torch.cat([clip_surprise(model, torch.stack([video[:, s : s + length] for s in c]), context_frames) for c in chunks])


def video_surprise(windows: Tensor, reduce: str = "mean") -> float:
    """One number per video from its window surprises: ``"mean"`` or ``"max"``."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return float(windows.mean() if reduce == "mean" else windows.max())


@torch.no_grad()
def score_models(
    models: Mapping[str, SurpriseModel],
    videos: Sequence[Tensor],
    context_frames: int,
    predict_frames: int,
    stride: int = 2,
    reduce: str = "mean",
    batch_size: int = 64,
) -> dict[str, list[float]]:
    """The surprise of each video (``[3, T, H, W]``, normalized like training input) under each
    model: the windows of all videos go through the models in batches of ``batch_size``, each
    video once per model, and a target module that several models share (a run and its
    random-student control) runs once per batch."""
    length = context_frames + predict_frames
    for model in models.values():
        _check_window(model.encoder, context_frames, predict_frames, stride)
    windows = [(v, s) for v, video in enumerate(videos) for s in _window_starts(video, length, stride)]
    values: dict[str, list[Tensor]] = {name: [] for name in models}
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        clips, targets = torch.stack([videos[v][:, s : s + length] for v, s in chunk]), {}
        for name, model in models.items():
            values[name].append(clip_surprise(model, clips, context_frames, targets))
    owner = torch.tensor([v for v, _ in windows])
    scores = {}
    for name, chunks in values.items():
        flat = torch.cat(chunks) if chunks else torch.zeros(0)
        scores[name] = [video_surprise(flat[owner == v], reduce) for v in range(len(videos))]
    return scores


def surprise_scores(model: SurpriseModel, videos: Sequence[Tensor], *args, **kwargs) -> list[float]:
    """The surprise of each video under one model (the arguments of :func:`score_models`)."""
    return score_models({"model": model}, videos, *args, **kwargs)["model"]


def load_video(path: str | Path, resolution: int, frame_step: int = 1, max_frames: int | None = None) -> Tensor:
    """Every ``frame_step``-th frame of a video, centre-cropped to ``resolution``: float ``[3, T, S, S]``."""
    total = probe(path).num_frames
    indices = list(range(0, total, frame_step))[:max_frames]
    return EvalTransform(size=resolution)(decode_frames(path, indices))


def load_videos(paths, resolution: int, frame_step: int = 1, progress: bool = False) -> dict[Path, Tensor]:
    """Each distinct path decoded once (:func:`load_video`), for scoring by several models."""
    unique = list(dict.fromkeys(Path(p) for p in paths))
    bar = ProgressBar(len(unique), desc="decode", unit="video", enabled=progress)
    videos = {}
    for path in unique:
        videos[path] = load_video(path, resolution, frame_step)
        bar.update(1)
    bar.close()
    return videos


# --------------------------------------------------------------------------------------------
# Items and accuracy


def read_items(path: str | Path, sizes: Sequence[int] = (2, 4)) -> list[tuple[Path, ...]]:
    """Items of a list file: lines of ``len in sizes`` paths (2: a pair, 4: a quadruplet)."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"item list not found: {source}")
    shapes = " or ".join({2: "'possible impossible'", 4: "'possible possible impossible impossible'"}[n] for n in sizes)
    items = []
    for lineno, raw in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in sizes:
            raise UsageError(f"{source}:{lineno}: expected {shapes} paths, got {line!r}")
        items.append(tuple(p if Path(p).is_absolute() else source.parent / p for p in map(Path, parts)))
    if not items:
        raise UsageError(f"item list has no items: {source}")
    return items


def read_pairs(path: str | Path) -> list[tuple[Path, Path]]:
    """``possible impossible`` path pairs, one per line (:func:`read_items` of pairs only)."""
    return read_items(path, sizes=(2,))


def item_correct(surprises: Sequence[float]) -> bool:
    """A pair ``(possible, impossible)``: the impossible video is strictly more surprising. A
    quadruplet ``(possible, possible, impossible, impossible)``: the impossible two are, in total."""
    if len(surprises) == 2:
        return surprises[1] > surprises[0]
    if len(surprises) == 4:
        return surprises[2] + surprises[3] > surprises[0] + surprises[1]
    raise ValueError(f"an item has 2 or 4 videos, got {len(surprises)}")


def pair_accuracy(surprise_possible: Sequence[float], surprise_impossible: Sequence[float]) -> float:
    """Fraction (%) of pairs whose impossible video is strictly more surprising."""
    if len(surprise_possible) != len(surprise_impossible) or not surprise_possible:
        raise ValueError("need two equally long, non-empty lists of surprises")
    wins = sum(b > a for a, b in zip(surprise_possible, surprise_impossible))
    return 100.0 * wins / len(surprise_possible)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (fractions in [0, 1]; 95% by default)."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(correct: Sequence[bool]) -> dict:
    """``{"accuracy": %, "correct": k, "n": n, "ci95": [lo %, hi %]}`` (Wilson score interval)."""
    k, n = sum(map(bool, correct)), len(correct)
    lo, hi = wilson_interval(k, n)
    return {"accuracy": 100.0 * k / n, "correct": k, "n": n, "ci95": [100.0 * lo, 100.0 * hi]}


def score_items(
    model: SurpriseModel,
    items: Sequence[Sequence[Path]],
    videos: Mapping[Path, Tensor],
    context_frames: int,
    predict_frames: int,
    stride: int = 2,
    reduce: str = "mean",
    batch_size: int = 64,
) -> dict:
    """Accuracy over ``items`` (pairs and / or quadruplets of paths into ``videos``, decoded once
    with :func:`load_videos`), each distinct video scored once: :func:`accuracy_summary` plus
    ``per_item``, every item's paths, per-video surprises and verdict."""
    unique = list(dict.fromkeys(Path(p) for item in items for p in item))
    scores = surprise_scores(model, [videos[p] for p in unique], context_frames, predict_frames, stride, reduce, batch_size)
    return judge_items(items, dict(zip(unique, scores)))


def judge_items(items: Sequence[Sequence[Path]], scores: Mapping[Path, float]) -> dict:
    """:func:`accuracy_summary` of ``items`` given each video's surprise, plus ``per_item``: every
    item's paths, per-video surprises and verdict."""
    rows = []
    for item in items:
        values = [scores[Path(p)] for p in item]
        rows.append({"videos": [str(p) for p in item], "surprise": values, "correct": item_correct(values)})
    return {**accuracy_summary([r["correct"] for r in rows]), "per_item": rows}


# --------------------------------------------------------------------------------------------
# Models


def future_mask_index(mask_set: str) -> int:
    """The mask token a run trained for predicting later frames (its FutureFrames configuration),
    else 0 (the first configuration's)."""
    configs = MASK_SETS[mask_set]
    return next((i for i, c in enumerate(configs) if isinstance(c, FutureFrames)), 0)


def _random_models(stage_name: str, model_cfg: ModelConfig, num_masks: int, seed: int):
    with torch.random.fork_rng(devices=[]):  # a fixed init, without touching the caller's RNG
        torch.manual_seed(seed)
        return STAGES[stage_name].build(model_cfg, num_masks, load_teacher=False)


def load_surprise_model(
    source: str | Path, control: str = "none", seed: int = 0, mask_index: int | None = None
) -> tuple[SurpriseModel, dict]:
    """The models surprise reads from ``source`` (a salt / vjepa / pixel run directory or training
    checkpoint, or ``random:PRESET``), with ``control`` applied (see the module docstring);
    random weights come from ``seed``. ``mask_index``: the predictor's mask token (default: the
    run's FutureFrames configuration if it has one, else 0). Returns the model (CPU, eval mode)
    and a description of it for results."""
    if control not in CONTROLS:
        raise UsageError(f"control must be one of {', '.join(CONTROLS)}, got {control!r}")
    text = str(source)
    if text.startswith("random:"):
        if control != "none":
            raise UsageError(f"{text} is already random throughout: --control {control} applies to a training run")
        preset = text.removeprefix("random:")
        learner, teacher = _random_models("salt", ModelConfig(encoder=preset, teacher=preset), 1, seed)
        encoder, predictor, target = learner.encoder, learner.head, teacher
        described = {"checkpoint": text, "stage": "salt", "step": 0, "control": "random", "seed": seed, "masking": None}
        default_index = 0
    else:
        run = load_run_models(source)
        cfg = config_from_dict(run.config)
        latent = run.stage.predicts_latents
        if control == "random-student" and not latent:
            raise UsageError(
                f"{run.path} is a {run.stage.name!r} run: it has no target encoder to keep (--control random-student)"
            )
        encoder, predictor, target = run.encoder, run.predictor, run.teacher if latent else None
        if control != "none":
            learner, teacher = _random_models(cfg.stage, cfg.model, len(MASK_SETS[cfg.masking.configs]), seed)
            encoder, predictor = learner.encoder, learner.head
            if control == "random" and latent:
                target = teacher
        described = {"checkpoint": str(run.path), "stage": run.stage.name, "step": 0 if control == "random" else run.step,
                     "control": control, "seed": None if control == "none" else seed, "masking": cfg.masking.configs}  # fmt: skip
        default_index = future_mask_index(cfg.masking.configs)
    index = default_index if mask_index is None else mask_index
    if not 0 <= index < len(predictor.mask_tokens):
        raise UsageError(f"mask index {index} out of range: the predictor has {len(predictor.mask_tokens)} mask tokens")
    described.update(mask_index=index, target="pixel" if target is None else "latent")
    return SurpriseModel(encoder, predictor, target, index).to("cpu"), described


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m salt_fast.eval.surprise", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a salt, vjepa or pixel training checkpoint or run directory, or random:PRESET")
    parser.add_argument("--control", default="none", choices=CONTROLS,
                        help="replace the run's weights by random ones: all of them, or the encoder and predictor only")  # fmt: skip
    parser.add_argument("--control-seed", type=int, default=0, help="seed of the random weights (controls, random:PRESET)")
    parser.add_argument("--items", "--pairs", dest="items", required=True,
                        help="list of items: 'possible impossible' or 'possible possible impossible impossible' lines")  # fmt: skip
    parser.add_argument("--context-frames", type=int, default=8, help="frames the encoder sees (a multiple of the tubelet size)")
    parser.add_argument("--predict-frames", type=int, default=8, help="frames predicted after them (a multiple of the tubelet size)")
    parser.add_argument("--stride", type=int, default=2, help="frames between the starts of consecutive windows")
    parser.add_argument("--frame-step", type=int, default=1, help="use every n-th frame of the videos")
    parser.add_argument("--resolution", type=int, default=224, help="frame side in pixels (short side resized to it, then cropped)")
    parser.add_argument("--reduce", default="mean", choices=("mean", "max"), help="how a video's surprise comes from its windows' surprises")
    parser.add_argument("--mask-index", type=int, default=None,
                        help="the predictor's mask token (default: the run's FutureFrames configuration if any, else 0)")  # fmt: skip
    parser.add_argument("--out", default=None, help="results JSON (default: none, the result is only printed)")
    return parser


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    items = read_items(args.items)
    model, described = load_surprise_model(args.checkpoint, args.control, args.control_seed, args.mask_index)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    videos = load_videos([p for item in items for p in item], args.resolution, args.frame_step, progress=True)
    length = args.context_frames + args.predict_frames
    for path, video in videos.items():
        if video.shape[1] < length:
            raise UsageError(f"{path} has {video.shape[1]} frames at --frame-step {args.frame_step}: a window needs {length}")
    try:
        scored = score_items(model, items, videos, args.context_frames, args.predict_frames, args.stride, args.reduce)
    except ValueError as exc:  # window sizes that do not fit the model's tubelets
        raise UsageError(str(exc)) from None
    sizes = [len(item) for item in items]
    result = {
        "accuracy": scored["accuracy"], "correct": scored["correct"], "n": scored["n"], "ci95": scored["ci95"],
        "interval": "Wilson score, 95%", "pairs": sizes.count(2), "quadruplets": sizes.count(4),
        "model": described, "per_item": scored["per_item"], "args": vars(args),
    }  # fmt: skip
    lo, hi = scored["ci95"]
    print(f"accuracy {scored['accuracy']:.1f}% (95% CI {lo:.1f}-{hi:.1f}) over {scored['n']} items "
          f"({result['pairs']} pairs, {result['quadruplets']} quadruplets)")  # fmt: skip
    if args.out:
        write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
