"""Training objectives built from the models and the fused losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from salt_fast.kernels import latent_l1_loss, pixel_mse_loss
from salt_fast.masking import MaskBatch


def salt_loss(
    student: nn.Module,
    predictor: nn.Module,
    video: Tensor,
    teacher_out: Tensor,
    masks: Sequence[MaskBatch],
    grid: tuple[int, int, int],
    check_ids: bool = True,
) -> tuple[Tensor, list[Tensor]]:
    """SALT Stage 2: predict the frozen teacher's layer-normed latents at the masked tokens.

    For each mask configuration ``i``: the student encodes its context tokens, the predictor
    (mask token ``i``) predicts the target tokens, and the L1 to ``LayerNorm(teacher_out)`` at
    the target ids is taken; the loss is the mean over configurations.

    Args:
        video: ``[B, C, T, H, W]`` clips.
        teacher_out: ``[B, N, D_teacher]`` raw teacher output on all tokens (computed once per
            clip, without grad).
        masks: one ``MaskBatch`` per configuration (from ``MaskSampler``).
        grid: ``(T, H, W)`` token grid of ``video``.
        check_ids: check the masks' ids on the device (no host sync); False for ids that are
            right by construction (``MaskSampler``'s).

    Returns:
        ``(loss, per_config_losses)``, scalars.
    """
    losses = []
    for index, m in enumerate(masks):
        context = student(video, m.context, m.context_valid, check_ids=check_ids)
        pred = predictor(context, m.context, m.target, grid, index, m.context_valid, m.target_valid, check_ids=check_ids)
        losses.append(latent_l1_loss(pred, teacher_out, m.target, valid=m.target_valid, check_ids=check_ids))
    return torch.stack(losses).mean(), losses


def pixel_loss(
    encoder: nn.Module,
    decoder: nn.Module,
    video: Tensor,
    masks: Sequence[MaskBatch],
    grid: tuple[int, int, int],
    check_ids: bool = True,
) -> tuple[Tensor, list[Tensor]]:
    """SALT Stage 1 (V-Pixel): reconstruct the normalised pixels of the masked tubelets.

    For each mask configuration: encoder on the context, the pixel decoder at the targets,
    MSE to each target tubelet's per-channel normalised pixels (VideoMAE's target, fused in
    ``pixel_mse_loss``); the loss is the mean over configurations. The per-patch normalisation
    makes the target independent of the clip's ImageNet normalisation.
    """
    tubelet, patch = encoder.cfg.tubelet_size, encoder.cfg.patch_size
    losses = []
    for index, m in enumerate(masks):
        context = encoder(video, m.context, m.context_valid, check_ids=check_ids)
        pred = decoder(context, m.context, m.target, grid, index, m.context_valid, m.target_valid, check_ids=check_ids)
        losses.append(pixel_mse_loss(pred, video, m.target, tubelet, patch, valid=m.target_valid, check_ids=check_ids))
    return torch.stack(losses).mean(), losses
