"""SALT's latent loss: L1 between predictions and layer-normed teacher latents at target ids.

Plain PyTorch reference; stands alone (imports nothing from salt_fast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .masked_tokens import gather_tokens

__all__ = ["latent_l1_loss"]


def latent_l1_loss(pred: Tensor, target: Tensor, ids: Tensor, eps: float = 1e-5, valid: Tensor | None = None) -> Tensor:
    """``mean |pred - LayerNorm(target)[ids]|`` over tokens and channels.

    Args:
        pred: ``[B, K, D]`` predictor outputs for the target tokens.
        target: ``[B, N, D]`` raw teacher output over all tokens (no grad needed).
        ids: ``[B, K]`` flat ids of the target tokens.
        eps: LayerNorm epsilon (no affine); 1e-5 as V-JEPA 2's ``F.layer_norm`` default.
        valid: optional ``[B, K]`` bool, False for padding slots, which are left out of the mean.

    Returns:
        Scalar fp32 loss.
    """
    rows = gather_tokens(target, ids).float()  # normalizing only the K gathered rows is the same math
    normed = F.layer_norm(rows, rows.shape[-1:], eps=eps)
    err = (pred.float() - normed).abs()
    if valid is None:
        return err.mean()
    weight = valid.to(err.dtype).unsqueeze(-1)
    return (err * weight).sum() / (weight.sum() * err.shape[-1]).clamp_min(1)
