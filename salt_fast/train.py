"""SALT training: Stage 1 (``pixel``), Stage 2 (``salt``) and the V-JEPA 2 baseline (``vjepa``).

    torchrun --nproc_per_node=N salt_fast/train.py --config configs/salt_vit_l.yaml optim.steps=1000
    python -m salt_fast.train --config configs/quickstart_pixel.yaml          # one process

One step: the loader's batch (clips, masks for this step) -> [salt/vjepa: the frozen teacher
on all tokens, no grad] -> the loss of every mask configuration -> backward -> global-norm
clip -> AdamW with the step's lr and weight decay -> [vjepa: EMA teacher update]. Every
``checkpoint.every`` steps an atomic checkpoint; at the end the encoder is exported as
safetensors (the next stage's teacher).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from salt_fast import checkpoint as ckpt
from salt_fast.config import TrainConfig, config_to_dict, load_config, save_config
from salt_fast.data import TrainTransform, VideoClips, VideoList, make_synthetic_dataset, video_loader
from salt_fast.data.lists import Mixture
from salt_fast.data.loader import Batch, BatchCollator, epoch_order
from salt_fast.masking import MULTI_BLOCK, MULTI_RANDOM_TUBE, RANDOM_TUBE, MaskSampler
from salt_fast.flops import peak_flops, step_flops
from salt_fast.metrics import MetricsLogger, ProgressBar, peak_memory_mb, plot_metrics
from salt_fast.models import build_encoder, build_pixel_decoder, build_predictor
from salt_fast.models.vit import set_activation_checkpointing
from salt_fast.objectives import pixel_loss, salt_loss
from salt_fast.optim import build_optimizer, ema_update, set_schedules

MASK_CONFIGS = {"multi_block": MULTI_BLOCK, "random_tube": RANDOM_TUBE, "multi_random_tube": MULTI_RANDOM_TUBE}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    bf16: bool
    autocast: object  # a context-manager factory


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """torchrun's environment -> process group (NCCL on GPU, gloo on CPU), device, precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    bf16 = cfg.runtime.precision == "bf16" or (cfg.runtime.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    os.environ["SALT_FAST_KERNELS"] = cfg.runtime.kernels
    return Runtime(rank, world_size, device, bf16, autocast)


def barrier(rt: Runtime) -> None:
    if rt.world_size > 1:
        dist.barrier()


def encoder_from(cfg: TrainConfig, preset: str, overrides: dict) -> nn.Module:
    return build_encoder(preset, rope_mode=cfg.model.rope_mode, attn_backend=cfg.model.attn_backend, **overrides)


class Learner(nn.Module):
    """What the optimizer trains: an encoder and its head (pixel decoder or predictor); its
    forward is the stage's loss, so DDP/FSDP see one module."""

    def __init__(self, stage: str, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stage, self.encoder, self.head = stage, encoder, head

    def forward(self, clips, masks, grid, teacher_out=None):
        if self.stage == "pixel":
            return pixel_loss(self.encoder, self.head, clips, masks, grid)
        return salt_loss(self.encoder, self.head, clips, teacher_out, masks, grid)


def build_models(cfg: TrainConfig, num_masks: int) -> tuple[Learner, nn.Module | None]:
    """The learner and, for salt/vjepa, the teacher. A salt teacher is loaded (and checked
    against its preset) here, before any step runs."""
    m = cfg.model
    encoder = encoder_from(cfg, m.encoder, m.encoder_overrides)
    if cfg.stage == "pixel":
        head = build_pixel_decoder(encoder.embed_dim, encoder.cfg.tubelet_size, encoder.cfg.patch_size,
                                   encoder.cfg.in_chans, num_masks, **m.predictor_overrides)  # fmt: skip
        return Learner("pixel", encoder, head), None
    if cfg.stage == "salt":
        if not m.teacher_checkpoint:
            raise ValueError("stage 'salt' needs model.teacher_checkpoint: the exported Stage-1 encoder (.safetensors)")
        teacher = encoder_from(cfg, m.teacher, m.teacher_overrides)
        ckpt.load_encoder_weights(teacher, m.teacher_checkpoint)  # missing file / wrong shapes: clear error
    else:  # vjepa: the teacher is an EMA copy of the student
        teacher = copy.deepcopy(encoder)
    head = build_predictor(encoder.embed_dim, teacher.embed_dim, num_masks, **m.predictor_overrides)
    return Learner(cfg.stage, encoder, head), teacher.eval().requires_grad_(False)


def build_data(cfg: TrainConfig, rt: Runtime, grid, start_step: int):
    d = cfg.data
    if d.train_lists:
        lists = [VideoList.from_file(p) for p in d.train_lists]
        source = lists[0] if len(lists) == 1 and d.weights is None else Mixture(lists, d.weights)
    else:  # the built-in synthetic videos, written once by rank 0
        root = Path(d.synthetic_dir or Path(cfg.output_dir) / "synthetic")
        listing = root / "motion_train.txt"
        if rt.rank == 0 and not listing.exists():
            make_synthetic_dataset(root, num_videos=d.synthetic_videos, frames=max(32, d.frames * d.frame_step // 2),
                                   height=max(64, d.resolution), width=max(64, d.resolution), seed=cfg.seed)  # fmt: skip
        barrier(rt)
        source = VideoList.from_file(listing)
    masks = MaskSampler(grid, MASK_CONFIGS[cfg.masking.configs], seed=cfg.seed, truncation=cfg.masking.truncation)
    if d.decoder == "dali":
        return dali_batches(cfg, rt, source, masks, start_step)
    dataset = VideoClips(source, TrainTransform(size=d.resolution), d.frames, d.frame_step, seed=cfg.seed)
    return video_loader(
        dataset, epoch_order(source, cfg.seed), d.batch_size, masks, rank=rt.rank, world_size=rt.world_size,
        start_step=start_step, num_workers=d.num_workers, max_bad_fraction=d.max_bad_fraction,
        pin_memory=rt.device.type == "cuda",
    )  # fmt: skip


def dali_batches(cfg: TrainConfig, rt: Runtime, source, masks: MaskSampler, start_step: int):
    """Endless :class:`Batch` es from NVIDIA DALI (NVDEC on GPU; VP8/VP9/MJPEG on CPU).

    DALI reads and shuffles the files itself (sharded by rank), so a resumed run gets the
    masks of its steps but not the exact clips the interrupted run would have seen.
    """
    from salt_fast.data.dali import DaliVideoLoader

    if isinstance(source, Mixture):
        raise ValueError("data.decoder=dali reads one file list; mixtures need data.decoder=cpu")
    d = cfg.data
    loader = DaliVideoLoader(
        [str(p) for p in source.paths], list(source.labels), batch_size=d.batch_size, train=True,
        device="gpu" if rt.device.type == "cuda" else "cpu", clip_frames=d.frames, frame_step=d.frame_step,
        size=d.resolution, shard_id=rt.rank, num_shards=rt.world_size, seed=cfg.seed + start_step,
        device_id=rt.device.index,
    )  # fmt: skip
    collate = BatchCollator(masks, d.max_bad_fraction, rt.rank, rt.world_size)
    step = start_step
    while True:
        for clips, labels in loader:
            yield Batch(clips, labels, collate.masks(clips.shape[0], step), [])
            step += 1


def wrap(learner: Learner, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    """Activation checkpointing, then DDP or FSDP2 across processes, then torch.compile."""
    if cfg.runtime.activation_checkpointing:
        set_activation_checkpointing(learner)
    model: nn.Module = learner
    if rt.world_size > 1 and cfg.runtime.distributed == "fsdp":
        if cfg.stage == "vjepa":
            raise ValueError("stage 'vjepa' updates its EMA teacher from full weights every step: use runtime.distributed=ddp")
        from torch.distributed.fsdp import fully_shard

        for blocks in (learner.encoder.blocks, learner.head.predictor_blocks):
            for block in blocks:
                fully_shard(block)
        fully_shard(learner)
    elif rt.world_size > 1:
        model = nn.parallel.DistributedDataParallel(learner, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return torch.compile(model) if cfg.runtime.compile else model


def architecture(config: dict) -> dict:
    """The parts of a run's config that decide what its checkpoint's weights are."""
    model = config.get("model", {})
    keys = ("encoder", "encoder_overrides", "teacher", "teacher_overrides", "predictor_overrides", "rope_mode")
    return {"stage": config.get("stage"), "masking": config.get("masking", {}).get("configs"), **{k: model.get(k) for k in keys}}


def mean_across(value: torch.Tensor, rt: Runtime) -> float:
    if rt.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= rt.world_size
    return value.item()


def masks_to(masks: list, device: torch.device) -> list:
    """The step's MaskBatch es on ``device`` (padding masks included when present)."""
    return [type(m)(*(None if t is None else t.to(device, non_blocking=True) for t in m)) for m in masks]


def train_step(cfg: TrainConfig, rt: Runtime, model, learner, teacher, optimizer, clips, masks, grid, step: int):
    """One optimizer step; the benchmarks time exactly this.

    Sets the step's lr and weight decay, runs the frozen teacher (no grad) and the stage's
    loss, stops before the update on a non-finite loss, clips the global grad norm, steps
    AdamW and, for vjepa, the EMA teacher. Returns ``(loss, per_config_losses, grad_norm, schedule)``.
    """
    o = cfg.optim
    sched = set_schedules(
        optimizer, step, steps=o.steps, warmup_steps=o.warmup_steps, lr_start=o.lr_start, lr_peak=o.lr_peak,
        lr_end=o.lr_end, wd_start=o.weight_decay_start, wd_end=o.weight_decay_end,
    )  # fmt: skip
    with rt.autocast():
        teacher_out = None
        if teacher is not None:
            with torch.no_grad():
                teacher_out = teacher(clips)  # once per clip, all tokens, eval mode
        loss, per_config = model(clips, masks, grid, teacher_out)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss.item()} at step {step}; stopping before the update")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(learner.parameters(), o.grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    if cfg.stage == "vjepa":
        ema_update(teacher, learner.encoder, o.ema_momentum)
    return loss, per_config, grad_norm, sched


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns a summary dict."""
    rt = setup_runtime(cfg)
    out = Path(cfg.output_dir)
    if rt.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    num_masks = len(MASK_CONFIGS[cfg.masking.configs])
    learner, teacher = build_models(cfg, num_masks)
    learner.to(rt.device)
    if teacher is not None:
        # A frozen salt teacher runs in bf16 whenever training does (half the memory and
        # traffic); the vjepa EMA teacher stays fp32 so its small updates are not lost.
        teacher.to(rt.device, dtype=torch.bfloat16 if rt.bf16 and cfg.stage == "salt" else None)
    model = wrap(learner, cfg, rt)
    # After wrapping: FSDP2 replaces the parameters with sharded ones.
    optimizer = build_optimizer([learner], betas=tuple(cfg.optim.betas), lr=cfg.optim.lr_start)

    start_step = 0
    if cfg.checkpoint.resume != "never":
        found = (
            ckpt.load_latest(out / "checkpoints")
            if cfg.checkpoint.resume == "auto"
            else (Path(cfg.checkpoint.resume), ckpt.load_checkpoint(cfg.checkpoint.resume))
        )
        if found is not None:
            path, state = found
            saved = architecture(state.get("config", {}))
            if saved != architecture(config_to_dict(cfg)):
                raise ValueError(
                    f"{path} was written by a run with another stage or model ({saved}); "
                    f"use a fresh output_dir or checkpoint.resume=never"
                )
            set_model_state_dict(learner, state["model"], options=StateDictOptions(full_state_dict=True))
            set_optimizer_state_dict(learner, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
            if cfg.stage == "vjepa":
                teacher.load_state_dict(state["teacher"])
            ckpt.set_rng_state(state["rng"][rt.rank] if isinstance(state["rng"], list) else state["rng"])
            start_step = state["step"]
            if rt.rank == 0:
                print(f"resumed from {path} at step {start_step}")

    frames, res = cfg.data.frames, cfg.data.resolution
    grid = learner.encoder.token_grid((1, learner.encoder.cfg.in_chans, frames, res, res))
    loader = build_data(cfg, rt, grid, start_step)
    logger = MetricsLogger(out, rank=rt.rank, tensorboard=cfg.log.tensorboard)
    progress = ProgressBar(cfg.optim.steps, initial=start_step, enabled=cfg.log.progress and rt.rank == 0)
    o = cfg.optim
    losses: list[float] = []
    clips_seen, wait, window_flops, window_start = 0, 0.0, 0, time.perf_counter()
    batches = iter(loader)
    n_all = grid[0] * grid[1] * grid[2]
    peak = peak_flops(rt.device)

    for step in range(start_step, o.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        clips = batch.clips.to(rt.device, non_blocking=True)
        masks = masks_to(batch.masks, rt.device)
        try:
            loss, per_config, grad_norm, sched = train_step(cfg, rt, model, learner, teacher, optimizer, clips, masks, grid, step)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(
                f"{exc}. The last good checkpoint in {out / 'checkpoints'} is intact "
                "(lower optim.lr_peak or raise optim.warmup_steps?)"
            ) from None

        clips_seen += clips.shape[0] * rt.world_size
        window_flops += step_flops(learner.encoder, learner.head, masks, n_all, teacher)
        loss_value = mean_across(loss, rt)
        losses.append(loss_value)
        progress.update(1, loss=f"{loss_value:.4f}")
        done = step + 1
        if done % cfg.log.every == 0 or done == o.steps:
            elapsed = time.perf_counter() - window_start
            logger.log(
                done,
                loss=loss_value,
                **{f"loss_mask{i}": mean_across(v, rt) for i, v in enumerate(per_config)},
                lr=sched["lr"],
                weight_decay=sched["wd"],
                grad_norm=float(grad_norm),
                clips_per_s=clips_seen / elapsed,
                tflops_per_gpu=window_flops / elapsed / 1e12,  # exact count of this process's work
                mfu=window_flops / elapsed / peak if peak else 0.0,  # against the dense bf16 peak
                data_wait_s=wait,
                skipped_files=len(batch.skipped),
                peak_memory_mb=peak_memory_mb(rt.device) or 0.0,
            )
            clips_seen, wait, window_flops, window_start = 0, 0.0, 0, time.perf_counter()
        if done % cfg.checkpoint.every == 0 or done == o.steps:
            full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered unsharded on rank 0
            state = {
                "step": done,
                "model": get_model_state_dict(learner, options=full),
                "optimizer": get_optimizer_state_dict(learner, optimizer, options=full),
                "rng": ckpt.rng_state(),
                "config": config_to_dict(cfg),
            }
            if cfg.stage == "vjepa":
                state["teacher"] = teacher.state_dict()
            if rt.world_size > 1:  # every rank's RNG, so a resume continues each one
                gathered = [None] * rt.world_size
                dist.all_gather_object(gathered, state["rng"])
                state["rng"] = gathered
            if rt.rank == 0:
                ckpt.save_checkpoint(out / "checkpoints", done, state, keep=cfg.checkpoint.keep)
            barrier(rt)

    progress.close()
    logger.close()
    summary = {"stage": cfg.stage, "steps": o.steps, "output_dir": str(out)}
    weights = get_model_state_dict(learner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rt.rank == 0:
        export = out / "encoder.safetensors"
        meta = {"preset": cfg.model.encoder, "overrides": cfg.model.encoder_overrides, "rope_mode": cfg.model.rope_mode,
                "stage": cfg.stage}  # fmt: skip
        encoder = encoder_from(cfg, cfg.model.encoder, cfg.model.encoder_overrides)  # plain, unsharded
        encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")})
        ckpt.export_encoder(encoder, export, metadata=meta)
        plot = plot_metrics(out / "metrics.csv", out / "loss.png")
        summary.update(
            first_loss=losses[0] if losses else math.nan,
            last_loss=losses[-1] if losses else math.nan,
            encoder=str(export),
            checkpoints=str(out / "checkpoints"),
            metrics=str(out / "metrics.csv"),
            plot=str(plot) if plot else None,
        )
    barrier(rt)
    if rt.world_size > 1:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml); defaults are the paper's")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.steps=100")
    args = parser.parse_args(argv)
    summary = train(load_config(args.config, args.overrides))
    if "last_loss" in summary:
        print(
            f"\n{summary['stage']}: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}\n"
            f"  encoder     {summary['encoder']}\n  checkpoints {summary['checkpoints']}\n"
            f"  metrics     {summary['metrics']}\n  plot        {summary['plot']}"
        )
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
