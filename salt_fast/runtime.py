"""The training runtime: processes and devices, the models of a run, its batches, and one step.

Everything the training loop does besides looping lives here, so that the loop
(``salt_fast.train``), the throughput benchmark and anything else that runs training steps
share it:

- :func:`setup_runtime`: torchrun's environment -> process group (NCCL on GPU, gloo on CPU),
  device, precision (bf16 autocast or fp32), and the kernels switch.
- :func:`build_run`: the stage's models on the device (the teacher in the stage's dtype), the
  distributed wrap (activation checkpointing, DDP or FSDP2, torch.compile) and AdamW.
- :func:`build_batches`: the run's batches from its lists (or the built-in synthetic videos),
  starting at a step, with that step's masks attached.
- :func:`train_step`: one optimizer step; the benchmarks time exactly this.

Saving and restoring a run's training state is :mod:`salt_fast.checkpoint`'s.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from salt_fast import checkpoint as ckpt
from salt_fast.data import TrainTransform, VideoClips, VideoList, make_synthetic_dataset, video_loader
from salt_fast.data.lists import Mixture
from salt_fast.data.loader import Batch, BatchCollator, epoch_order
from salt_fast.masking import MASK_SETS, MaskBatch, MaskSampler
from salt_fast.models.vit import Grid, set_activation_checkpointing
from salt_fast.optim import build_optimizer, set_schedules
from salt_fast.stages import STAGES, Learner, Stage

if TYPE_CHECKING:
    from salt_fast.config import RuntimeConfig, TrainConfig

__all__ = [
    "COMPILE_MODES",
    "DISTRIBUTED",
    "PRECISIONS",
    "NonFiniteLoss",
    "NonFiniteWatch",
    "OutputDirInUse",
    "Run",
    "Runtime",
    "StepResult",
    "autocast_for",
    "barrier",
    "build_batches",
    "build_run",
    "lock_output_dir",
    "masks_to",
    "mean_across",
    "setup_runtime",
    "train_step",
    "wrap",
]

PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast on GPU, fp32 on CPU (faster there)
DISTRIBUTED = ("ddp", "fsdp")  # data parallelism across processes
# torch.compile modes; "reduce-overhead" replays the step's kernels as CUDA graphs, which a step
# with no host sync (train_step) allows.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class NonFiniteLoss(RuntimeError):
    """A step's loss or gradient norm was NaN or infinite: the step was not applied and nothing
    non-finite was saved; the newest checkpoint is the last good state."""


def autocast_for(device: torch.device, bf16: bool | None = None) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16`` (default: on CUDA devices), else nothing."""
    if bf16 is None:
        bf16 = device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@dataclass
class Runtime:
    """This process: its rank among ``world_size``, its device, and whether it trains in bf16."""

    rank: int
    world_size: int
    device: torch.device
    bf16: bool

    def autocast(self) -> AbstractContextManager:
        return autocast_for(self.device, self.bf16)


class OutputDirInUse(RuntimeError):
    """Another live run holds the output_dir's lock."""


@contextmanager
def lock_output_dir(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of ``path/.lock`` (it records this process's pid) for the body.
    The lock goes with the process in any way it ends, so a killed run never blocks the next.
    Raises OutputDirInUse when another live run holds it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise OutputDirInUse(
                f"output_dir {path} is in use by another run (pid {f.read().strip() or '?'} holds {path / '.lock'}); "
                "wait for it or stop it, or choose another output_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield  # closing the file releases the lock


def _stop_with_launcher() -> None:
    """Ask Linux to end this process when its parent dies. Under torchrun the parent is the
    launcher: a SIGKILL to it would otherwise leave every rank training on, orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the README says how to stop a run there
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def setup_runtime(cfg: RuntimeConfig) -> Runtime:
    """torchrun's environment -> process group (NCCL on GPU, gloo on CPU), device, precision.
    Under torchrun, each rank also ends when the launcher dies."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _stop_with_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    os.environ["SALT_FAST_KERNELS"] = cfg.kernels
    return Runtime(rank, world_size, device, bf16)


def barrier(rt: Runtime) -> None:
    if rt.world_size > 1:
        dist.barrier()


def mean_across(value: Tensor, rt: Runtime) -> float:
    """The mean of a scalar tensor over every process, as a float (a host sync)."""
    if rt.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= rt.world_size
    return value.item()


def masks_to(masks: list[MaskBatch], device: torch.device) -> list[MaskBatch]:
    """The step's MaskBatch es on ``device`` (padding masks included when present)."""
    return [type(m)(*(None if t is None else t.to(device, non_blocking=True) for t in m)) for m in masks]


def wrap(learner: Learner, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    """Activation checkpointing, then DDP or FSDP2 across processes, then torch.compile."""
    if cfg.runtime.activation_checkpointing:
        set_activation_checkpointing(learner)
    model: nn.Module = learner
    if rt.world_size > 1 and cfg.runtime.distributed == "fsdp":
        if not learner.stage.fsdp:
            raise ValueError(f"stage {learner.stage.name!r} cannot shard its learner: use runtime.distributed=ddp")
        from torch.distributed.fsdp import fully_shard

        for blocks in (learner.encoder.blocks, learner.head.predictor_blocks):
            for block in blocks:
                fully_shard(block)
        fully_shard(learner)
    elif rt.world_size > 1:
        model = nn.parallel.DistributedDataParallel(learner, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return torch.compile(model, mode=cfg.runtime.compile_mode) if cfg.runtime.compile else model


@dataclass
class Run:
    """Everything a training step needs. ``model`` is ``learner`` as wrapped for DDP / FSDP2 /
    compile (call it for the loss); ``learner`` is the plain module (parameters, state dicts)."""

    cfg: TrainConfig
    rt: Runtime
    stage: Stage
    learner: Learner
    model: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    grid: Grid  # the token grid of the run's clips

    @property
    def tokens_per_clip(self) -> int:
        t, h, w = self.grid
        return t * h * w


def build_run(cfg: TrainConfig, rt: Runtime, load_teacher: bool = True) -> Run:
    """The stage's models (identical initial weights on every rank: seeded with ``cfg.seed``)
    on ``rt.device``, wrapped, with AdamW over the learner. A salt teacher is loaded and checked
    here, before any step (``load_teacher=False``: random weights of the same shapes)."""
    stage = STAGES[cfg.stage]
    torch.manual_seed(cfg.seed)
    learner, teacher = stage.build(cfg.model, len(MASK_SETS[cfg.masking.configs]), load_teacher)
    learner.to(rt.device)
    if teacher is not None:
        teacher.to(rt.device, dtype=stage.teacher_dtype(rt.bf16))
    model = wrap(learner, cfg, rt)
    # After wrapping: FSDP2 replaces the parameters with sharded ones.
    optimizer = build_optimizer([learner], betas=tuple(cfg.optim.betas), lr=cfg.optim.lr_start)
    clip = (1, learner.encoder.cfg.in_chans, cfg.data.frames, cfg.data.resolution, cfg.data.resolution)
    return Run(cfg, rt, stage, learner, model, teacher, optimizer, learner.encoder.token_grid(clip))


class StepResult(NamedTuple):
    """What one step leaves on the device (reading any of it is a host sync)."""

    loss: Tensor  # scalar, this process's
    per_config: list[Tensor]  # the loss of each mask configuration
    grad_norm: Tensor  # global, before clipping
    schedule: dict[str, float]  # {"lr", "wd"} of the step (host values)
    applied: Tensor  # 0-dim bool: False when the loss or the grad norm was not finite


def train_step(run: Run, clips: Tensor, masks: list[MaskBatch], step: int) -> StepResult:
    """One optimizer step on ``clips [B, C, T, H, W]`` with the step's masks (on the device).

    Sets the step's lr and weight decay, runs the teacher (no grad) and the stage's loss,
    backpropagates, clips the global grad norm and steps AdamW, then runs the stage's per-step
    hook (the V-JEPA EMA). A step whose loss or grad norm is not finite is skipped *on the
    device* (the fused AdamW's ``found_inf``; the hook gets ``applied``), so the step never
    waits for the host; :class:`NonFiniteWatch` reports it at the next logging step.
    """
    o = run.cfg.optim
    schedule = set_schedules(
        run.optimizer, step, steps=o.steps, warmup_steps=o.warmup_steps, lr_start=o.lr_start, lr_peak=o.lr_peak,
        lr_end=o.lr_end, wd_start=o.weight_decay_start, wd_end=o.weight_decay_end,
    )  # fmt: skip
    with run.rt.autocast():
        teacher_out = None
        if run.teacher is not None:
            with torch.no_grad():
                teacher_out = run.teacher(clips)  # once per clip, all tokens, eval mode
        loss, per_config = run.model(clips, masks, run.grid, teacher_out, check_ids=False)  # the sampler's ids
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.learner.parameters(), o.grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    applied = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)  # the same on every rank (all-reduced grads)
    run.optimizer.found_inf = (~applied).float()  # read by the fused AdamW: no update, no moment change
    run.optimizer.step()
    run.stage.after_step(run.learner, run.teacher, o, applied)
    return StepResult(loss, per_config, grad_norm, schedule, applied)


class NonFiniteWatch:
    """Remembers, on the device, the first step that was not applied; :meth:`check` (a host sync:
    call it where the loop syncs anyway) stops the run with :class:`NonFiniteLoss` naming it."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet; else step as metrics.csv counts
        self.values = torch.zeros(2, device=device)  # its loss and grad norm

    def update(self, result: StepResult, step: int) -> None:
        new = (self.first == 0) & ~result.applied
        self.first = torch.where(new, step + 1, self.first)
        values = torch.stack([result.loss.detach().float(), result.grad_norm.detach().float()])
        self.values = torch.where(new, values, self.values)

    def check(self, output_dir: str | os.PathLike) -> None:
        step = int(self.first)
        if step:
            loss, norm = self.values.tolist()
            raise NonFiniteLoss(
                f"step {step} (as metrics.csv counts) has loss {loss:g} and gradient norm {norm:g}: it was not "
                f"applied, nor any later non-finite step. {ckpt.resume_hint(output_dir)} "
                "(lower optim.lr_peak or raise optim.warmup_steps?)"
            )


# --------------------------------------------------------------------------------------------
# Batches


def build_batches(cfg: TrainConfig, rt: Runtime, grid: Grid, start_step: int) -> Iterator[Batch]:
    """Endless batches of this process's share of every global batch from ``start_step`` on,
    each with its step's masks: from ``data.train_lists``, or the built-in synthetic videos
    (written once, by rank 0, to ``data.synthetic_dir``)."""
    d = cfg.data
    if d.train_lists:
        lists = [VideoList.from_file(p) for p in d.train_lists]
        source = lists[0] if len(lists) == 1 and d.weights is None else Mixture(lists, d.weights)
    else:
        root = Path(d.synthetic_dir or Path(cfg.output_dir) / "synthetic")
        listing = root / "motion_train.txt"
        if rt.rank == 0 and not listing.exists():
            make_synthetic_dataset(root, num_videos=d.synthetic_videos, frames=max(32, d.frames * d.frame_step // 2),
                                   height=max(64, d.resolution), width=max(64, d.resolution), seed=cfg.seed)  # fmt: skip
        barrier(rt)
        source = VideoList.from_file(listing)
    masks = MaskSampler(grid, MASK_SETS[cfg.masking.configs], seed=cfg.seed, truncation=cfg.masking.truncation)
    if d.decoder == "dali":
        return _dali_batches(cfg, rt, source, masks, start_step)
    dataset = VideoClips(source, TrainTransform(size=d.resolution), d.frames, d.frame_step, seed=cfg.seed)
    return iter(video_loader(
        dataset, epoch_order(source, cfg.seed), d.batch_size, masks, rank=rt.rank, world_size=rt.world_size,
        start_step=start_step, num_workers=d.num_workers, max_bad_fraction=d.max_bad_fraction,
        pin_memory=rt.device.type == "cuda",
    ))  # fmt: skip


def _dali_batches(cfg: TrainConfig, rt: Runtime, source, masks: MaskSampler, start_step: int) -> Iterator[Batch]:
    """Endless batches from NVIDIA DALI (NVDEC on GPU; VP8/VP9/MJPEG on CPU).

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
        device_id=rt.device.index, max_bad_fraction=d.max_bad_fraction,
    )  # fmt: skip
    collate = BatchCollator(masks, d.max_bad_fraction, rt.rank, rt.world_size)
    step, skipped = start_step, list(loader.skipped)  # files skipped at start-up: reported with the first batch
    while True:
        for clips, labels in loader:
            yield Batch(clips, labels, collate.masks(clips.shape[0], step), skipped)
            skipped, step = [], step + 1
