"""The attentive probe: a small trainable head on frozen encoder tokens (the paper's Appendix D).

3 self-attention blocks (no RoPE: the encoder's tokens already carry their positions), then
one cross-attention block in which a single learned query attends to the tokens, then a
Linear to the classes. Same structure as V-JEPA 2's attentive classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vit import MLP, Block, ViTConfig, init_weights


class CrossAttention(nn.Module):
    """Queries ``[B, Q, D]`` attend to tokens ``[B, N, D]``; q from the queries, k and v from the tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        B, Q, D = queries.shape
        N, h = tokens.shape[1], self.num_heads
        q = self.q(queries).view(B, Q, h, D // h).transpose(1, 2)
        k, v = self.kv(tokens).view(B, N, 2, h, D // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, Q, D))


class CrossAttentionBlock(nn.Module):
    """``q + xattn(q, norm1(x))``, then ``+ mlp(norm2(.))``: the query is not normalized,
    so the learned query keeps its scale (V-JEPA 2's pooler convention)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        x = queries + self.xattn(queries, self.norm1(tokens))
        return x + self.mlp(self.norm2(x))


class AttentiveProbe(nn.Module):
    """Frozen-feature classifier: ``forward(tokens [B, N, D]) -> logits [B, num_classes]``.

    Args:
        embed_dim: width of the encoder tokens.
        num_classes: output classes.
        depth: self-attention blocks before the cross-attention (3 in the paper).
        num_heads: 16 in the paper; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width over ``embed_dim``.
    """

    def __init__(self, embed_dim: int, num_classes: int, depth: int = 3, num_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a probe needs at least 2 classes, got {num_classes}")
        if embed_dim % num_heads:
            raise ValueError(f"probe heads ({num_heads}) must divide the encoder width ({embed_dim})")
        cfg = ViTConfig(embed_dim=embed_dim, depth=max(depth, 1), num_heads=num_heads, mlp_hidden=int(embed_dim * mlp_ratio))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pool = CrossAttentionBlock(embed_dim, num_heads, cfg.mlp_hidden, cfg.norm_eps)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self, self.blocks, cfg.init_std)
        nn.init.trunc_normal_(self.query, std=cfg.init_std)

    def forward(self, tokens: Tensor) -> Tensor:
        x = tokens
        for block in self.blocks:
            x = block(x, None)  # no RoPE
        pooled = self.pool(self.query.expand(x.shape[0], -1, -1).to(x.dtype), x)
        return self.head(pooled.squeeze(1))
