"""Frozen attentive probe (the paper's Section 3 and Appendix D): how good is an encoder's representation?

    python -m salt_fast.eval.probe --checkpoint runs/x/encoder.safetensors \\
        --train-list train.txt --val-list val.txt [--protocol fast|full] [--out probe.json]
    torchrun --nproc_per_node=8 -m salt_fast.eval.probe ...     # encoding split across GPUs

The encoder is frozen (eval mode, no grad, bf16 autocast on GPU). Every probe head of the
sweep (one for the fast protocol, lr x wd = 20 for the full one) trains at once on the same
encoder outputs, so the encoder runs once per clip whatever the number of heads.

- **fast**: 1 clip x 1 view, lr 1e-3, wd 0.01, 20 epochs, batch 256.
- **full**: ``num_clips`` clips x 3 spatial views; the 20-head sweep; the best head is reported.

Training sees each clip-view as its own example with the video's label; evaluation averages
the softmax over a video's clips and views. Without augmentation (the default) the features
are deterministic, so the dataset is encoded once and the heads train from that cache (memory:
``videos x views x tokens x width x 2`` bytes); ``augment=True`` re-encodes randomly cropped
clips every epoch instead.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from salt_fast.data import EvalTransform, TrainTransform, VideoClips, VideoDecodeError, VideoList, decode_frames, probe
from salt_fast.data.lists import is_image
from salt_fast.data.sampling import clip_indices, eval_clip_starts
from salt_fast.cli import HelpFormatter, one_line_errors
from salt_fast.metrics import ProgressBar, write_result
from salt_fast.models.probe import AttentiveProbe
from salt_fast.optim import lr_at, param_groups
from salt_fast.runtime import autocast_for

from .encoders import add_encoder_args, load_encoder

log = logging.getLogger("salt_fast.eval")

__all__ = [
    "PROTOCOLS",
    "EvalClips",
    "ProbeConfig",
    "Features",
    "encode_dataset",
    "evaluate_heads",
    "main",
    "run_probe",
    "train_heads",
]


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe run depends on. ``ProbeConfig.protocol("fast" | "full", **overrides)``."""

    frames: int = 16
    frame_step: int = 4
    resolution: int = 224
    num_clips: int = 1
    num_views: int = 1  # 1 (centre crop) or 3 (spatial views)
    epochs: int = 20
    batch_size: int = 256
    lrs: tuple[float, ...] = (1e-3,)
    wds: tuple[float, ...] = (0.01,)
    warmup_epochs: float = 0.0
    depth: int = 3
    num_heads: int = 16
    augment: bool = False
    hflip: float = 0.0  # with augment; off by default: mirroring flips direction labels (SSv2, motion)
    seed: int = 0
    num_workers: int = 2
    encode_batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("frames", "frame_step", "resolution", "num_clips", "epochs", "batch_size", "num_heads", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"probe {name} must be >= 1, got {getattr(self, name)}")
        if self.num_views not in (1, 3):
            raise ValueError(f"probe num_views must be 1 or 3, got {self.num_views}")
        if not self.lrs or not self.wds or min(self.lrs) <= 0 or min(self.wds) < 0:
            raise ValueError(f"probe lrs must be positive and wds non-negative, got {self.lrs} and {self.wds}")
        if self.depth < 0 or self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"need depth >= 0 and 0 <= warmup_epochs <= epochs, got {self.depth}, {self.warmup_epochs}")

    @classmethod
    def protocol(cls, name: str, **overrides) -> ProbeConfig:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown probe protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
        return replace(PROTOCOLS[name], **overrides)

    @property
    def sweep(self) -> list[tuple[float, float]]:
        """``(lr, wd)`` of every head, lr-major."""
        return [(lr, wd) for lr in self.lrs for wd in self.wds]


PROTOCOLS: dict[str, ProbeConfig] = {
    "fast": ProbeConfig(),
    # K400 uses 8 clips, SSv2 2: pass num_clips for the dataset at hand.
    "full": ProbeConfig(num_clips=8, num_views=3, lrs=(5e-3, 3e-3, 1e-3, 3e-4, 1e-4), wds=(0.8, 0.4, 0.1, 0.01)),
}


# ----------------------------------------------------------------------------- data


class EvalClips(Dataset):
    """Deterministic evaluation clips: ``ds[i] -> (clips [clips*views, 3, T, S, S], label, i)``.

    ``num_clips`` clips evenly spaced over the video (:func:`eval_clip_starts`), each cut into
    ``num_views`` spatial views. A file that fails to decode gives ``None`` (logged once); the
    collate function drops it and the run reports how many were skipped: evaluation must not
    silently replace a video by another one.
    """

    def __init__(self, videos: VideoList, cfg: ProbeConfig) -> None:
        self.videos, self.cfg = videos, cfg
        self.transform = EvalTransform(size=cfg.resolution, crops=cfg.num_views)

    def __len__(self) -> int:
        return len(self.videos)

    def clips(self, path: str) -> Tensor:
        """uint8 ``[num_clips, T, H, W, 3]`` of one video."""
        cfg = self.cfg
        if is_image(path):
            return decode_frames(path, [0] * cfg.frames)[None]
        total = probe(path).num_frames
        starts = eval_clip_starts(total, cfg.frames, cfg.frame_step, cfg.num_clips)
        indices = np.concatenate([clip_indices(total, cfg.frames, cfg.frame_step, start=s) for s in starts])
        return decode_frames(path, indices).unflatten(0, (len(starts), cfg.frames))

    def __getitem__(self, index: int):
        path, label = self.videos[index]
        try:
            frames = self.clips(str(path))
        except (VideoDecodeError, ValueError) as exc:
            log.warning("skipping %s: %s", path, getattr(exc, "reason", exc))
            return None
        views = [self.transform(clip) for clip in frames]  # [3, T, S, S] or [views, 3, T, S, S]
        x = torch.stack(views) if self.cfg.num_views == 1 else torch.cat(views)
        return x, label, index


def _collate(samples):
    kept = [s for s in samples if s is not None]
    if not kept:
        return None, len(samples)
    clips = torch.stack([s[0] for s in kept])
    labels = torch.tensor([s[1] for s in kept])
    index = torch.tensor([s[2] for s in kept])
    return (clips, labels, index), len(samples) - len(kept)


# ----------------------------------------------------------------------------- features


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def encode(encoder: nn.Module, clips: Tensor) -> Tensor:
    """``clips [B, V, 3, T, H, W] -> tokens [B, V, N, D]`` (frozen encoder, every token)."""
    B, V = clips.shape[:2]
    with autocast_for(clips.device):
        tokens = encoder(clips.flatten(0, 1))
    return tokens.unflatten(0, (B, V))


@dataclass
class Features:
    """Encoded dataset: ``tokens [n, V, N, D]`` (fp16 on the CPU), ``labels [n]``, and the
    number of videos that failed to decode."""

    tokens: Tensor
    labels: Tensor
    skipped: int = 0


def encode_dataset(
    encoder: nn.Module,
    videos: VideoList,
    cfg: ProbeConfig,
    device: torch.device | str = "cpu",
    desc: str = "encode",
    show_progress: bool = True,
) -> Features:
    """Encode every video once (each rank its share, then gathered on every rank, in list order)."""
    device = torch.device(device)
    rank, world = _dist()
    dataset = EvalClips(videos, cfg)
    shard = list(range(rank, len(dataset), world))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=cfg.encode_batch_size, collate_fn=_collate,
        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
    )  # fmt: skip
    encoder.to(device)
    tokens, labels, order, skipped = [], [], [], 0
    bar = ProgressBar(len(loader), enabled=show_progress and rank == 0, desc=desc, unit="batch")
    for batch, bad in loader:
        skipped += bad
        if batch is not None:
            clips, y, index = batch
            tokens.append(encode(encoder, clips.to(device, non_blocking=True)).to("cpu", torch.float16))
            labels.append(y)
            order.append(index)
        bar.update(1)
    bar.close()
    part = (
        torch.cat(tokens) if tokens else torch.empty(0),
        torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64),
        torch.cat(order) if order else torch.empty(0, dtype=torch.int64),
        skipped,
    )
    parts = [part]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, part)
    kept = [p for p in parts if p[0].numel()]
    if not kept:
        raise RuntimeError(f"none of the {len(videos)} videos of {videos.source or 'the list'} could be decoded")
    index = torch.cat([p[2] for p in kept])
    sort = index.argsort()
    return Features(torch.cat([p[0] for p in kept])[sort], torch.cat([p[1] for p in kept])[sort], sum(p[3] for p in parts))


# ----------------------------------------------------------------------------- heads


def build_heads(embed_dim: int, num_classes: int, cfg: ProbeConfig, seed: int | None = None) -> nn.ModuleList:
    """One :class:`AttentiveProbe` per ``(lr, wd)`` of the sweep, each with its own init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed if seed is None else seed)
        return nn.ModuleList(AttentiveProbe(embed_dim, num_classes, cfg.depth, cfg.num_heads) for _ in cfg.sweep)


def _optimizer(heads: nn.ModuleList, cfg: ProbeConfig) -> torch.optim.AdamW:
    groups = []
    for head, (lr, wd) in zip(heads, cfg.sweep):
        for g in param_groups(head):
            groups.append({**g, "base_lr": lr, "weight_decay": wd if g["apply_wd"] else 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lrs[0], betas=(0.9, 0.999))


def _sync_grads(heads: nn.Module, world: int) -> None:
    if world == 1:
        return
    for p in heads.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def train_heads(
    heads: nn.ModuleList,
    batches,
    steps_per_epoch: int,
    cfg: ProbeConfig,
    device: torch.device | str = "cpu",
    *,
    world: int = 1,
    show_progress: bool = True,
) -> list[float]:
    """Train every head on the same batches: ``batches(epoch)`` yields ``(tokens [B, N, D], labels [B])``.

    Warmup then cosine decay of each head's lr; each head's loss is its own cross-entropy
    (summed, so heads do not interact). Returns the mean loss of each head over the last epoch.
    """
    device = torch.device(device)
    heads.to(device).train()
    optimizer = _optimizer(heads, cfg)
    steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    # One update per optimizer step (one batch through every head): epochs x steps_per_epoch in all.
    bar = ProgressBar(steps, enabled=show_progress, desc="probe", unit="step")
    step, last = 0, torch.zeros(len(heads))
    for epoch in range(cfg.epochs):
        totals, count = torch.zeros(len(heads)), 0
        for tokens, labels in batches(epoch):
            factor = lr_at(min(step, steps - 1), steps=steps, warmup_steps=warmup, lr_start=0.0, lr_peak=1.0, lr_end=0.0)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast_for(device):
                losses = torch.stack([F.cross_entropy(head(tokens).float(), labels) for head in heads])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            _sync_grads(heads, world)
            optimizer.step()
            reported = losses.detach()
            if world > 1:  # the loss of the global batch, not of this rank's slice
                dist.all_reduce(reported)
                reported /= world
            totals += reported.cpu()
            count += 1
            step += 1
            bar.update(1, loss=f"{losses.min().item():.3f}")
        last = totals / max(count, 1)
    bar.close()
    heads.eval()
    return last.tolist()


@torch.no_grad()
def evaluate_heads(heads: nn.ModuleList, features: Features, device: torch.device | str = "cpu", batch_size: int = 256) -> list[float]:
    """Top-1 (%) of each head: softmax averaged over each video's clips and views."""
    device = torch.device(device)
    heads.eval().to(device)
    correct = torch.zeros(len(heads))
    n, V = features.tokens.shape[:2]
    for start in range(0, n, batch_size):
        x = features.tokens[start : start + batch_size].to(device)
        y = features.labels[start : start + batch_size].to(device)
        with autocast_for(device):
            flat = x.flatten(0, 1).float()
            for i, head in enumerate(heads):
                probs = head(flat).float().softmax(-1).unflatten(0, (x.shape[0], V)).mean(1)
                correct[i] += (probs.argmax(-1) == y).sum().item()
    return (100.0 * correct / max(n, 1)).tolist()


def _cached_batches(features: Features, cfg: ProbeConfig, rank: int = 0, world: int = 1):
    """Every clip-view is an example; each epoch a fresh seeded permutation; rank ``r`` takes
    its ``batch_size`` slice of each global batch (the same examples as one process)."""
    tokens = features.tokens.flatten(0, 1)
    labels = features.labels.repeat_interleave(features.tokens.shape[1])
    n = tokens.shape[0]
    per_rank = max(1, cfg.batch_size // world)
    global_batch = per_rank * world
    steps = max(1, math.ceil(n / global_batch))

    def batches(epoch: int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for s in range(steps):
            chunk = order[s * global_batch : (s + 1) * global_batch]
            mine = chunk[rank * per_rank : (rank + 1) * per_rank]
            if mine.numel() == 0:
                mine = chunk[:1]  # keep every rank stepping in lockstep
            yield tokens[mine].float(), labels[mine]

    return batches, steps


def _augmented_batches(encoder: nn.Module, videos: VideoList, cfg: ProbeConfig, device, rank: int, world: int):
    """Random-crop clips (no flips unless ``cfg.hflip``) encoded on the fly; rank ``r`` reads its share of each epoch."""
    dataset = VideoClips(videos, TrainTransform(size=cfg.resolution, hflip=cfg.hflip), cfg.frames, cfg.frame_step, seed=cfg.seed)
    per_rank = max(1, cfg.batch_size // world)
    steps = max(1, len(dataset) // (per_rank * world))

    def batches(epoch: int):
        order = np.random.default_rng((cfg.seed, epoch)).permutation(len(dataset))[rank::world][: steps * per_rank]
        loader = DataLoader(
            torch.utils.data.Subset(dataset, [(epoch, int(i)) for i in order]), batch_size=per_rank,
            num_workers=cfg.num_workers, collate_fn=lambda s: (torch.stack([x.clip for x in s]), torch.tensor([x.label for x in s])),
        )  # fmt: skip
        for clips, labels in loader:
            yield encode(encoder, clips.to(device)[:, None]).squeeze(1).float(), labels

    return batches, steps


# ----------------------------------------------------------------------------- the whole run


def run_probe(
    encoder: nn.Module,
    train_list: VideoList | str | Path,
    val_list: VideoList | str | Path,
    cfg: ProbeConfig = PROTOCOLS["fast"],
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Probe a frozen encoder: encode, train every head of the sweep, report top-1 per head.

    Returns ``{"top1": best head's val top-1 (%), "best": {lr, wd, top1}, "heads": [...],
    "train_videos", "val_videos", "skipped_videos", "num_classes", "config", "time_s"}``.
    """
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = _dist()
    train_list = train_list if isinstance(train_list, VideoList) else VideoList.from_file(train_list)
    val_list = val_list if isinstance(val_list, VideoList) else VideoList.from_file(val_list)
    num_classes = num_classes or max(train_list.num_classes, val_list.num_classes)
    encoder = encoder.eval().requires_grad_(False).to(device)

    val = encode_dataset(encoder, val_list, cfg, device, desc="encode val", show_progress=show_progress)
    if cfg.augment:
        batches, steps = _augmented_batches(encoder, train_list, cfg, device, rank, world)
        skipped_train = 0
    else:
        train = encode_dataset(encoder, train_list, cfg, device, desc="encode train", show_progress=show_progress)
        batches, steps = _cached_batches(train, cfg, rank, world)
        skipped_train = train.skipped
    heads = build_heads(encoder.embed_dim, num_classes, cfg)
    train_loss = train_heads(heads, batches, steps, cfg, device, world=world, show_progress=show_progress and rank == 0)
    top1 = evaluate_heads(heads, val, device)
    rows = [{"lr": lr, "wd": wd, "top1": acc, "train_loss": loss} for (lr, wd), acc, loss in zip(cfg.sweep, top1, train_loss)]
    best = max(rows, key=lambda r: r["top1"])
    return {
        "top1": best["top1"],
        "best": best,
        "heads": rows,
        "num_classes": num_classes,
        "train_videos": len(train_list),
        "val_videos": len(val_list),
        "skipped_videos": skipped_train + val.skipped,
        "config": asdict(cfg),
        "time_s": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- command line


def _parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _protocol_value(field: str) -> str:
    """``"the protocol's, 16"`` or, where the protocols differ, ``"the protocol's: fast 1, full 8"``."""

    def show(value) -> str:
        return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)

    values = {name: show(getattr(cfg, field)) for name, cfg in sorted(PROTOCOLS.items())}
    if len(set(values.values())) == 1:
        return f"the protocol's, {next(iter(values.values()))}"
    return "the protocol's: " + ", ".join(f"{name} {value}" for name, value in values.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m salt_fast.eval.probe", description=__doc__, formatter_class=HelpFormatter)
    add_encoder_args(parser)
    parser.add_argument("--train-list", required=True, help="training videos: 'path label' lines")
    parser.add_argument("--val-list", required=True, help="validation videos: 'path label' lines")
    parser.add_argument("--protocol", default="fast", choices=sorted(PROTOCOLS), help="probe protocol the flags below override")
    parser.add_argument("--out", default=None,
                        help="results JSON (default: probe_<protocol>.json in the checkpoint's parent folder; in . for random:PRESET)")

    def protocol_flag(flag: str, text: str, type=int) -> None:  # default None: the protocol's value
        field = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=type, help=f"{text} (default: {_protocol_value(field)})")

    protocol_flag("--frames", "frames per clip")
    protocol_flag("--frame-step", "stride between the frames of a clip")
    protocol_flag("--resolution", "clip side in pixels (short side resized to it, then cropped)")
    protocol_flag("--num-clips", "clips per video, evenly spaced")
    protocol_flag("--num-views", "spatial views per clip (1 or 3)")
    protocol_flag("--epochs", "probe training epochs")
    protocol_flag("--batch-size", "probe training batch size (clip-views)")
    protocol_flag("--lrs", "comma-separated peak learning rates of the sweep, e.g. 1e-3,3e-4", _parse_floats)
    protocol_flag("--wds", "comma-separated weight decays of the sweep, e.g. 0.1,0.01", _parse_floats)
    parser.add_argument("--augment", action="store_true", help="random crops every epoch, re-encoded (no feature cache)")
    protocol_flag("--num-workers", "data-loading worker processes")
    protocol_flag("--seed", "seed of the probe heads and the batch order")
    return parser


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    fields = ("frames", "frame_step", "resolution", "num_clips", "num_views", "epochs", "batch_size", "lrs", "wds", "num_workers", "seed")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    if args.augment:
        overrides["augment"] = True
    cfg = ProbeConfig.protocol(args.protocol, **overrides)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, _ = _dist()
    encoder = load_encoder(args.checkpoint, args.which)
    result = run_probe(encoder, args.train_list, args.val_list, cfg, device)
    result.update(checkpoint=str(args.checkpoint), protocol=args.protocol, train_list=args.train_list, val_list=args.val_list)
    if rank == 0:
        default = Path(args.checkpoint).parent if not str(args.checkpoint).startswith("random:") else Path(".")
        out = Path(args.out) if args.out else default / f"probe_{args.protocol}.json"
        write_result(out, result)
        best = result["best"]
        print(f"top-1 {best['top1']:.2f}% (lr {best['lr']:g}, wd {best['wd']:g}; {len(result['heads'])} heads) -> {out}")
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
