"""The narrow predictor (Stage 2) and the pixel decoder (Stage 1): one architecture.

Input: the encoder's context tokens with their flat ids, plus the ids of the target
tokens. The context is projected to the predictor width, one learned mask token (per mask
configuration) is placed at every target id, and both run through RoPE blocks together.
With full attention and explicit RoPE positions the order of tokens does not matter, so
context and targets are simply concatenated: no sort, no unsort. Only the target rows are
normalized and projected to the output width.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from salt_fast.kernels.masked_tokens import assemble_predictor_input

from .vit import Block, Grid, ViTConfig, forward_blocks, init_weights

# The paper's Table 4: 12 blocks of width 384, 16 heads (head_dim 24), MLP 4x.
PREDICTOR_CONFIG = ViTConfig(embed_dim=384, depth=12, num_heads=16, mlp_hidden=1536)


class Predictor(nn.Module):
    """Predicts ``out_dim`` features at target ids from context tokens of width ``in_dim``.

    Args:
        in_dim: width of the context tokens (the student encoder's width).
        out_dim: width of the predictions (the teacher's width, or ``tubelet*patch^2*3``
            pixels for the Stage-1 decoder).
        cfg: body shape; ``PREDICTOR_CONFIG`` by default.
        num_mask_tokens: one learned mask token per mask configuration.
        attn_backend: how attention runs (a runtime choice, not part of the weights).
    """

    def __init__(
        self, in_dim: int, out_dim: int, cfg: ViTConfig = PREDICTOR_CONFIG, num_mask_tokens: int = 2, attn_backend: str = "sdpa"
    ) -> None:
        super().__init__()
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}")
        self.cfg = cfg
        self.in_dim, self.out_dim = in_dim, out_dim
        self.predictor_embed = nn.Linear(in_dim, cfg.embed_dim)
        # V-JEPA 2 default: mask tokens start at zero.
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) for _ in range(num_mask_tokens))
        self.predictor_blocks = nn.ModuleList(Block(cfg, attn_backend) for _ in range(cfg.depth))
        self.predictor_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.predictor_proj = nn.Linear(cfg.embed_dim, out_dim)
        init_weights(self, self.predictor_blocks, cfg.init_std)

    def forward(
        self,
        context: Tensor,
        context_ids: Tensor,
        target_ids: Tensor,
        grid: Grid,
        mask_index: int = 0,
        context_valid: Tensor | None = None,
        target_valid: Tensor | None = None,
        *,
        check_ids: bool = True,
    ) -> Tensor:
        """Predict the target tokens.

        Args:
            context: ``[B, Kc, in_dim]`` encoder outputs at ``context_ids``.
            context_ids: ``[B, Kc]`` flat ids of the context tokens.
            target_ids: ``[B, Kt]`` flat ids to predict.
            grid: ``(T, H, W)`` token grid the ids refer to.
            mask_index: which mask configuration (selects the mask token).
            context_valid, target_valid: optional bool ``[B, Kc]`` / ``[B, Kt]``, False
                for padding slots (``truncation="pad"`` batches).
            check_ids: check on the device (no host sync) that the ids lie on ``grid``; skip it
                for ids that are right by construction, e.g. from ``MaskSampler``.

        Returns:
            ``[B, Kt, out_dim]`` predictions, row ``k`` for ``target_ids[:, k]``.
        """
        B, Kc, _ = context.shape
        Kt = target_ids.shape[1]
        if context_ids.shape != (B, Kc) or target_ids.shape[0] != B:
            raise ValueError(
                f"context {tuple(context.shape)}, context_ids {tuple(context_ids.shape)} and target_ids "
                f"{tuple(target_ids.shape)} disagree: expected [B, Kc, D], [B, Kc], [B, Kt]"
            )
        if not 0 <= mask_index < len(self.mask_tokens):
            raise ValueError(f"mask_index {mask_index} out of range for {len(self.mask_tokens)} mask tokens")
        x, ids = assemble_predictor_input(
            self.predictor_embed(context), context_ids, target_ids, self.mask_tokens[mask_index], check_ids=False
        )
        valid = None
        if context_valid is not None or target_valid is not None:
            valid = torch.cat(
                (
                    context_valid if context_valid is not None else context_ids.new_ones(B, Kc, dtype=torch.bool),
                    target_valid if target_valid is not None else target_ids.new_ones(B, Kt, dtype=torch.bool),
                ),
                dim=1,
            )
        x = forward_blocks(self.predictor_blocks, x, ids, grid, self.cfg, valid, check_ids=check_ids)
        return self.predictor_proj(self.predictor_norm(x[:, Kc:]))


def build_predictor(
    student_dim: int, teacher_dim: int, num_mask_tokens: int = 2, cfg: ViTConfig = PREDICTOR_CONFIG,
    attn_backend: str = "sdpa", **overrides,
) -> Predictor:  # fmt: skip
    """Stage-2 predictor: input width follows the student, output width the teacher; body ``cfg`` with ``overrides``."""
    return Predictor(student_dim, teacher_dim, replace(cfg, **overrides), num_mask_tokens, attn_backend)


def build_pixel_decoder(
    encoder_dim: int, tubelet_size: int = 2, patch_size: int = 16, in_chans: int = 3, num_mask_tokens: int = 2,
    cfg: ViTConfig = PREDICTOR_CONFIG, attn_backend: str = "sdpa", **overrides,
) -> Predictor:  # fmt: skip
    """Stage-1 decoder: the predictor body with ``tubelet * patch^2 * in_chans`` (1536) outputs per token."""
    out_dim = tubelet_size * patch_size * patch_size * in_chans
    return Predictor(encoder_dim, out_dim, replace(cfg, **overrides), num_mask_tokens, attn_backend)
