"""Training stages as objects: everything that differs between Stage 1, Stage 2 and the baseline.

A stage owns its models (the trained encoder, its head, and its teacher with the teacher's
dtype), its loss, its per-step hook, what it adds to a checkpoint, which data parallelism it
supports, its 6ND accounting, and what evaluation reads from its runs. The training loop
(:mod:`salt_fast.runtime`), evaluation, FLOPs and the benchmarks ask the stage object; none of
them tests a stage's name.

- ``pixel`` (SALT Stage 1, "V-Pixel"; the paper's Section 2.2): encoder + pixel decoder, MSE to
  the per-tubelet normalised pixels of the masked tokens. No teacher.
- ``salt`` (SALT Stage 2): student + predictor regress the frozen Stage-1 teacher's
  layer-normed latents with L1. The teacher is loaded from an export and runs once per clip,
  without grad, in bf16 whenever training runs in bf16.
- ``vjepa`` (the V-JEPA 2 baseline; Section 2.1): Stage 2 with an EMA copy of the student as
  the teacher, updated after every step and saved in every checkpoint.

Adding a stage: subclass :class:`Stage`, overriding what differs, and add an instance to
:data:`STAGES`; the config's ``stage=`` choices, the CLIs and the benchmarks read that registry.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from salt_fast import checkpoint as ckpt
from salt_fast.flops import six_nd
from salt_fast.masking import MaskBatch
from salt_fast.models import Predictor, VisionTransformer, build_pixel_decoder, build_predictor
from salt_fast.models.vit import Grid
from salt_fast.objectives import pixel_loss, salt_loss
from salt_fast.optim import ema_update

if TYPE_CHECKING:
    from salt_fast.config import ModelConfig, OptimConfig

__all__ = ["PAPER_BATCH", "STAGES", "Learner", "PixelStage", "SaltStage", "Stage", "VjepaStage"]

PAPER_BATCH = 3072  # the paper's global batch (its Table 5), for every stage's run


class Learner(nn.Module):
    """What the optimizer trains: an encoder and its head (pixel decoder or predictor). Its
    forward is the stage's loss, so DDP / FSDP wrap one module and see one forward."""

    def __init__(self, stage: Stage, encoder: VisionTransformer, head: Predictor) -> None:
        super().__init__()
        self.stage, self.encoder, self.head = stage, encoder, head

    def forward(
        self, clips: Tensor, masks: Sequence[MaskBatch], grid: Grid, teacher_out: Tensor | None = None,
        check_ids: bool = True,
    ) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
        """clips ``[B, C, T, H, W]``; one ``MaskBatch`` per mask configuration; ``teacher_out``
        ``[B, N, D_teacher]`` for stages with a teacher; ``check_ids=False`` skips the device-side
        check of the masks' ids (ours are right by construction). Returns ``(loss, per_config_losses)``."""
        return self.stage.loss(self.encoder, self.head, clips, masks, grid, teacher_out, check_ids)


class Stage:
    """The base: a stage with a teacher-free predictor of latents. Subclasses override what differs."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, shown in the config's description
    # The step count of this stage's ViT-L run in the paper (Fig. 2: an 80k-step teacher, then a
    # 160k-step student; V-JEPA 2 trains for all 240k); the benchmarks project GPU-hours from it.
    paper_steps: ClassVar[int]
    loads_teacher: ClassVar[bool] = False  # its teacher is a separate model (model.teacher), loaded from an export
    fsdp: ClassVar[bool] = True  # whether the learner may be sharded with FSDP2
    eval_encoder: ClassVar[str] = "encoder"  # what evaluation reads by default: "encoder" or "teacher"
    predicts_latents: ClassVar[bool] = True  # the head predicts teacher latents (surprise needs that)

    def build(
        self, model: ModelConfig, num_masks: int, load_teacher: bool = True
    ) -> tuple[Learner, VisionTransformer | None]:
        """The learner and the teacher (frozen, eval mode; None without one), on the CPU in fp32.

        Built in a fixed order (encoder, teacher, head), so a seed gives the same weights.
        ``load_teacher=False`` leaves a loaded teacher at its random init (benchmarks: same
        shapes, same cost).
        """
        backend = model.attn_backend
        encoder = VisionTransformer(model.encoder_vit(), backend)
        teacher = self.build_teacher(model, encoder, load_teacher)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        head = self.build_head(model, encoder, teacher, num_masks)
        return Learner(self, encoder, head), teacher

    def check_inputs(self, model: ModelConfig) -> None:
        """Check the files this stage will read (its teacher) before anything is built or written;
        raise ValueError / FileNotFoundError / CheckpointError naming the problem."""

    def build_teacher(self, model: ModelConfig, encoder: VisionTransformer, load: bool) -> VisionTransformer | None:
        return None

    def build_head(
        self, model: ModelConfig, encoder: VisionTransformer, teacher: VisionTransformer | None, num_masks: int
    ) -> Predictor:
        """The predictor: input width follows the student, output width the teacher."""
        return build_predictor(encoder.embed_dim, teacher.embed_dim, num_masks, model.predictor_vit(),
                               model.attn_backend)  # fmt: skip

    def loss(
        self, encoder: nn.Module, head: nn.Module, clips: Tensor, masks: Sequence[MaskBatch], grid: Grid,
        teacher_out: Tensor | None, check_ids: bool = True,
    ) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
        return salt_loss(encoder, head, clips, teacher_out, masks, grid, check_ids)

    def teacher_dtype(self, bf16: bool) -> torch.dtype | None:
        """The dtype the teacher runs in (None: as built, fp32) when training does or does not use bf16."""
        return None

    def after_step(self, learner: Learner, teacher: nn.Module | None, optim: OptimConfig, applied: Tensor) -> None:
        """Called after every optimizer step; ``applied`` (0-dim bool, on the device) is False when
        the step was skipped as non-finite: decide on the device, without a host sync."""

    def checkpoint_extras(self, teacher: nn.Module | None) -> dict:
        """What this stage adds to a training checkpoint besides the learner and optimizer."""
        return {}

    def restore_extras(self, teacher: nn.Module | None, state: dict) -> None:
        """Inverse of :meth:`checkpoint_extras`."""

    def six_nd(self, n_encoder: float, n_predictor: float, tokens: int, samples: float,
               n_teacher: float | None = None, **kwargs) -> dict[str, float]:  # fmt: skip
        """The paper's 6ND estimate of this stage (Appendix F); see :func:`salt_fast.flops.six_nd`."""
        return six_nd(n_encoder, n_predictor, tokens, samples, n_teacher=n_teacher, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PixelStage(Stage):
    name = "pixel"
    summary = "stage 1"
    paper_steps = 80_000
    predicts_latents = False

    def build_head(self, model, encoder, teacher, num_masks):
        e = encoder.cfg
        return build_pixel_decoder(encoder.embed_dim, e.tubelet_size, e.patch_size, e.in_chans, num_masks,
                                   model.predictor_vit(), model.attn_backend)  # fmt: skip

    def loss(self, encoder, head, clips, masks, grid, teacher_out, check_ids=True):
        return pixel_loss(encoder, head, clips, masks, grid, check_ids)

    def six_nd(self, n_encoder, n_predictor, tokens, samples, n_teacher=None, **kwargs):
        return six_nd(n_encoder, n_predictor, tokens, samples, n_teacher=None, **kwargs)


class SaltStage(Stage):
    name = "salt"
    summary = "stage 2, frozen teacher"
    paper_steps = 160_000
    loads_teacher = True

    def check_inputs(self, model):
        if not model.teacher_checkpoint:
            raise ValueError("stage 'salt' needs the exported Stage-1 encoder (.safetensors)")
        with torch.device("meta"):  # shapes only: no memory, no init
            teacher = VisionTransformer(model.teacher_vit())
        ckpt.check_encoder_weights(teacher, model.teacher_checkpoint)

    def build_teacher(self, model, encoder, load):
        if load and not model.teacher_checkpoint:
            raise ValueError("stage 'salt' needs model.teacher_checkpoint: the exported Stage-1 encoder (.safetensors)")
        teacher = VisionTransformer(model.teacher_vit(), model.attn_backend)
        if load:
            ckpt.load_encoder_weights(teacher, model.teacher_checkpoint)  # missing file / wrong shapes: clear error
        return teacher

    def teacher_dtype(self, bf16):
        # Frozen: bf16 halves its memory and traffic and loses nothing that training would need.
        return torch.bfloat16 if bf16 else None

    def six_nd(self, n_encoder, n_predictor, tokens, samples, n_teacher=None, **kwargs):
        if n_teacher is None:
            raise ValueError("stage 'salt' needs n_teacher, the frozen teacher's parameter count")
        return six_nd(n_encoder, n_predictor, tokens, samples, n_teacher=n_teacher, **kwargs)


class VjepaStage(Stage):
    name = "vjepa"
    summary = "EMA baseline"
    paper_steps = 240_000
    fsdp = False  # the EMA reads the full student after every step
    eval_encoder = "teacher"  # V-JEPA 2 evaluates its EMA target encoder

    def build_teacher(self, model, encoder, load):
        return copy.deepcopy(encoder)  # the EMA starts as the student; it stays fp32 so small updates are kept

    def after_step(self, learner, teacher, optim, applied):
        ema_update(teacher, learner.encoder, optim.ema_momentum, apply=applied)

    def checkpoint_extras(self, teacher):
        return {"teacher": teacher.state_dict()}

    def restore_extras(self, teacher, state):
        teacher.load_state_dict(state["teacher"])

    def six_nd(self, n_encoder, n_predictor, tokens, samples, n_teacher=None, **kwargs):
        return six_nd(n_encoder, n_predictor, tokens, samples, n_teacher=n_encoder, **kwargs)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (PixelStage(), SaltStage(), VjepaStage())}
