"""A few SALT (Stage 2) steps of a tiny model on random clips: the whole data path, end to end.

    python -m salt_fast.demo [--steps 5] [--batch-size 2] [--frames 16] [--resolution 224]

Frozen teacher on all tokens -> multi-block masks -> student on the context tokens ->
predictor with one mask token per mask configuration -> L1 to the layer-normed teacher
latents at the target tokens, averaged over the two configurations -> AdamW step.
"""

from __future__ import annotations

import argparse
import time

import torch

from salt_fast.masking import MaskSampler
from salt_fast.models import build_encoder, build_predictor
from salt_fast.objectives import salt_loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="vit_tiny", help="teacher encoder preset")
    parser.add_argument("--student", default="vit_tiny", help="student encoder preset")
    parser.add_argument("--depth", type=int, default=4, help="blocks per encoder and predictor (tiny run)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=112, help="224 for the paper's 8x14x14 grid")
    parser.add_argument("--truncation", default="min", choices=["min", "random", "pad"])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    """Run the demo; returns the last step's loss."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    teacher = build_encoder(args.teacher, depth=args.depth).eval().requires_grad_(False)
    student = build_encoder(args.student, depth=args.depth)
    predictor = build_predictor(student.embed_dim, teacher.embed_dim, depth=args.depth)
    clips = torch.randn(args.batch_size, 3, args.frames, args.resolution, args.resolution)
    grid = student.token_grid(clips.shape)
    sampler = MaskSampler(grid, seed=args.seed, truncation=args.truncation)
    optimizer = torch.optim.AdamW([*student.parameters(), *predictor.parameters()], lr=1e-3, betas=(0.9, 0.95))

    n_tokens = grid[0] * grid[1] * grid[2]
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(
        f"salt_fast demo: teacher {args.teacher} ({count(teacher):.1f}M, frozen), student {args.student} "
        f"({count(student):.1f}M), predictor ({count(predictor):.1f}M); {args.batch_size} clips of "
        f"{args.frames}x{args.resolution}x{args.resolution} -> {grid[0]}x{grid[1]}x{grid[2]} = {n_tokens} tokens"
    )
    loss = torch.tensor(float("nan"))
    for step in range(args.steps):
        start = time.perf_counter()
        masks = sampler(args.batch_size)
        with torch.no_grad():
            target = teacher(clips)  # once per clip, all tokens
        loss, losses = salt_loss(student, predictor, clips, target, masks, grid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        kept = " ".join(
            f"[config {i}: context {m.context.shape[1]}, targets {m.target.shape[1]}, L1 {value.item():.4f}]"
            for i, (m, value) in enumerate(zip(masks, losses))
        )
        print(f"step {step}: loss {loss.item():.4f} {kept} {time.perf_counter() - start:.2f}s")
    return loss.item()


if __name__ == "__main__":
    main()
