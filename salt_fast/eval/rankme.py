"""RankMe (Garrido et al., 2023): the effective rank of an encoder's embeddings.

``exp(H(p))`` with ``p_k = sigma_k / sum(sigma) + eps`` over the singular values ``sigma`` of
the ``[n, D]`` embedding matrix: D for perfectly spread embeddings, 1 for collapsed ones.

    python -m salt_fast.eval.rankme --checkpoint encoder.safetensors --list videos.txt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from salt_fast.data import VideoList

from salt_fast.cli import HelpFormatter, one_line_errors
from salt_fast.metrics import write_result

from .encoders import add_encoder_args, load_encoder
from .probe import ProbeConfig, encode_dataset

__all__ = ["encoder_rankme", "rankme"]


def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """Effective rank of ``embeddings [n, D]`` (computed in float64)."""
    if embeddings.ndim != 2 or min(embeddings.shape) < 1:
        raise ValueError(f"expected a non-empty [n, D] matrix, got shape {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(embeddings.double())
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def encoder_rankme(
    encoder: nn.Module, videos: VideoList, cfg: ProbeConfig, device: torch.device | str = "cpu", show_progress: bool = True
) -> dict:
    """RankMe of mean-pooled clip embeddings (one per video: tokens, clips and views averaged).

    Returns ``{"rankme", "videos", "embed_dim", "skipped_videos"}``.
    """
    features = encode_dataset(encoder.eval(), videos, cfg, device, desc="encode", show_progress=show_progress)
    pooled = features.tokens.float().mean(dim=(1, 2))  # [n, D]
    return {
        "rankme": rankme(pooled),
        "videos": pooled.shape[0],
        "embed_dim": pooled.shape[1],
        "skipped_videos": features.skipped,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m salt_fast.eval.rankme", description=__doc__, formatter_class=HelpFormatter)
    add_encoder_args(parser)
    parser.add_argument("--list", required=True, help="videos to embed: 'path label' lines (labels unused)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--frame-step", type=int, default=4, help="stride between the frames of a clip")
    parser.add_argument("--resolution", type=int, default=224, help="clip side in pixels (short side resized to it, then cropped)")
    parser.add_argument("--out", default=None, help="results JSON (default: none, the result is only printed)")
    return parser


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = ProbeConfig(frames=args.frames, frame_step=args.frame_step, resolution=args.resolution)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = encoder_rankme(load_encoder(args.checkpoint, args.which), VideoList.from_file(args.list), cfg, device)
    result["checkpoint"] = str(args.checkpoint)
    print(f"RankMe {result['rankme']:.2f} of {result['embed_dim']} dims over {result['videos']} videos")
    if args.out:
        write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
