"""Intuitive-physics surprise (the paper's Appendix E.1): how badly does the model predict what happens next?

A window of ``context_frames + predict_frames`` frames slides over the video (``stride``
frames apart). The encoder sees the context frames' tokens; the predictor predicts the
latents of every token of the following frames; the target encoder (the Stage-2 teacher or
the V-JEPA EMA encoder) encodes the whole window, and the window's surprise is the L1
distance between the prediction and the LayerNorm'd target, the training loss itself. A
video's surprise is the mean (or max) over its windows; on (possible, impossible) pairs, a
pair is correct when the impossible video is the more surprising one.

    python -m salt_fast.eval.surprise --checkpoint runs/salt --pairs pairs.txt \\
        --context-frames 8 --predict-frames 8 --resolution 224

``pairs.txt``: one ``possible_path impossible_path`` per line (relative paths resolve
against the file's folder; ``#`` comments allowed).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salt_fast.data import EvalTransform, decode_frames, probe
from salt_fast.cli import HelpFormatter, UsageError, one_line_errors
from salt_fast.metrics import ProgressBar

from .encoders import load_run_models
from salt_fast.metrics import write_result
from salt_fast.runtime import autocast_for


__all__ = ["pair_accuracy", "read_pairs", "video_surprise", "window_surprise"]


@torch.no_grad()
def window_surprise(
    encoder: nn.Module,
    predictor: nn.Module,
    target_encoder: nn.Module,
    video: Tensor,
    context_frames: int,
    predict_frames: int,
    stride: int = 2,
    mask_index: int = 0,
    batch_size: int = 16,
) -> Tensor:
    """Surprise of every window of ``video [3, T, H, W]`` (normalized like training input).

    Window ``w`` covers frames ``[w * stride, w * stride + context_frames + predict_frames)``;
    both frame counts must be multiples of the tubelet size. Returns float32 ``[num_windows]``.
    """
    tubelet = encoder.cfg.tubelet_size
    if context_frames < tubelet or context_frames % tubelet or predict_frames < tubelet or predict_frames % tubelet:
        raise ValueError(
            f"context_frames ({context_frames}) and predict_frames ({predict_frames}) must be positive multiples of "
            f"the tubelet size {tubelet}"
        )
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    length = context_frames + predict_frames
    frames = video.shape[1]
    if video.ndim != 4 or frames < length:
        raise ValueError(f"expected a video [3, T, H, W] with T >= {length} frames, got shape {tuple(video.shape)}")
    device = next(encoder.parameters()).device
    starts = list(range(0, frames - length + 1, stride))
    grid = encoder.token_grid((1, video.shape[0], length, *video.shape[2:]))
    per_step = grid[1] * grid[2]
    n_context = context_frames // tubelet * per_step
    all_ids = torch.arange(grid[0] * per_step, device=device)
    out = []
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        clips = torch.stack([video[:, s : s + length] for s in chunk]).to(device)
        B = clips.shape[0]
        context_ids = all_ids[:n_context].expand(B, -1)
        target_ids = all_ids[n_context:].expand(B, -1)
        with autocast_for(device):
            target = target_encoder(clips)[:, n_context:]
            context = encoder(clips, context_ids)
            pred = predictor(context, context_ids, target_ids, grid, mask_index)
        target = F.layer_norm(target.float(), (target.shape[-1],))
        out.append((pred.float() - target).abs().mean(dim=(1, 2)).cpu())
    return torch.cat(out)


def load_video(path: str | Path, resolution: int, frame_step: int = 1, max_frames: int | None = None) -> Tensor:
    """Every ``frame_step``-th frame of a video, centre-cropped to ``resolution``: float ``[3, T, S, S]``."""
    total = probe(path).num_frames
    indices = list(range(0, total, frame_step))[:max_frames]
    return EvalTransform(size=resolution)(decode_frames(path, indices))


def video_surprise(windows: Tensor, reduce: str = "mean") -> float:
    """One number per video from its window surprises: ``"mean"`` or ``"max"``."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return float(windows.mean() if reduce == "mean" else windows.max())


def read_pairs(path: str | Path) -> list[tuple[Path, Path]]:
    """``possible impossible`` path pairs, one per line."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"pair list not found: {source}")
    pairs = []
    for lineno, raw in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}:{lineno}: expected 'possible_path impossible_path', got {line!r}")
        pairs.append(tuple(p if Path(p).is_absolute() else source.parent / p for p in map(Path, parts)))
    if not pairs:
        raise ValueError(f"pair list has no pairs: {source}")
    return pairs


def pair_accuracy(surprise_possible: Sequence[float], surprise_impossible: Sequence[float]) -> float:
    """Fraction (%) of pairs whose impossible video is strictly more surprising."""
    if len(surprise_possible) != len(surprise_impossible) or not surprise_possible:
        raise ValueError("need two equally long, non-empty lists of surprises")
    wins = sum(b > a for a, b in zip(surprise_possible, surprise_impossible))
    return 100.0 * wins / len(surprise_possible)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m salt_fast.eval.surprise", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a salt or vjepa training checkpoint, or its run directory")
    parser.add_argument("--pairs", required=True, help="'possible_path impossible_path' lines")
    parser.add_argument("--context-frames", type=int, default=8, help="frames the encoder sees (a multiple of the tubelet size)")
    parser.add_argument("--predict-frames", type=int, default=8, help="frames predicted after them (a multiple of the tubelet size)")
    parser.add_argument("--stride", type=int, default=2, help="frames between the starts of consecutive windows")
    parser.add_argument("--frame-step", type=int, default=1, help="use every n-th frame of the videos")
    parser.add_argument("--resolution", type=int, default=224, help="frame side in pixels (short side resized to it, then cropped)")
    parser.add_argument("--reduce", default="mean", choices=("mean", "max"), help="how a video's surprise comes from its windows' surprises")
    parser.add_argument("--out", default=None, help="results JSON (default: none, the result is only printed)")
    return parser


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    run = load_run_models(args.checkpoint)
    if not run.stage.predicts_latents:
        raise UsageError(f"{run.path} is a {run.stage.name!r} run: surprise needs a predictor of latents (a salt or vjepa run)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [m.to(device) for m in (run.encoder, run.predictor, run.teacher)]
    pairs = read_pairs(args.pairs)
    scores: list[dict] = []
    bar = ProgressBar(len(pairs), desc="surprise", unit="pair")
    for possible, impossible in pairs:
        row = {}
        for name, path in (("possible", possible), ("impossible", impossible)):
            video = load_video(path, args.resolution, args.frame_step)
            windows = window_surprise(*models, video, args.context_frames, args.predict_frames, args.stride)
            row[name] = video_surprise(windows, args.reduce)
            row[f"{name}_path"] = str(path)
        scores.append(row)
        bar.update(1)
    bar.close()
    accuracy = pair_accuracy([r["possible"] for r in scores], [r["impossible"] for r in scores])
    result = {"accuracy": accuracy, "pairs": scores, "checkpoint": str(run.path), "step": run.step, **vars(args)}
    print(f"pairwise accuracy {accuracy:.1f}% over {len(scores)} pairs")
    if args.out:
        write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
