"""Video ViT encoder with 3D RoPE: the SALT teacher and student.

No CLS token and no absolute position embedding: positions enter only through 3D RoPE,
read from flat token ids, so the encoder can run on any subset of tokens (the visible
context) and every token keeps its true position. Module names follow V-JEPA 2's
(``patch_embed.proj``, ``blocks.{i}.attn.qkv``, ``norm``) so checkpoints map one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from typing import NamedTuple

from salt_fast.kernels import use_triton
from salt_fast.kernels.masked_tokens import gather_tokens
from salt_fast.kernels.rope3d import MODES, rope3d_cos_sin, rope3d_qkv_

Grid = tuple[int, int, int]
# A runtime choice, not part of the weights: modules take it as an argument, ViTConfig does not hold it.
ATTENTION_BACKENDS = ("sdpa", "flash_attn", "xformers")


def check_attention_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (attn_backend must be one of {ATTENTION_BACKENDS})")
    return backend


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a transformer stack. ``head_dim = embed_dim // num_heads``."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    rope_mode: str = "standard"
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "mlp_hidden", "patch_size", "tubelet_size", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.rope_mode not in MODES:
            raise ValueError(f"rope_mode must be one of {MODES}, got {self.rope_mode!r}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


# The paper's Table 3. The MLP widths of g and G are the ones that reproduce its parameter
# counts; V-JEPA 2's own giant is vit_g with num_heads=22 (head_dim 64).
ENCODER_PRESETS: dict[str, ViTConfig] = {
    "vit_tiny": ViTConfig(embed_dim=192, depth=12, num_heads=3, mlp_hidden=768),
    "vit_small": ViTConfig(embed_dim=384, depth=12, num_heads=6, mlp_hidden=1536),
    "vit_b": ViTConfig(embed_dim=768, depth=12, num_heads=12, mlp_hidden=3072),
    "vit_l": ViTConfig(embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096),
    "vit_h": ViTConfig(embed_dim=1280, depth=32, num_heads=16, mlp_hidden=5120),
    "vit_g": ViTConfig(embed_dim=1408, depth=40, num_heads=16, mlp_hidden=6144),
    "vit_G": ViTConfig(embed_dim=1664, depth=48, num_heads=16, mlp_hidden=8192),
}


def _import_backend(backend: str):
    try:
        if backend == "flash_attn":
            import flash_attn

            return flash_attn
        import xformers.ops

        return xformers.ops
    except ImportError as exc:
        raise ImportError(
            f"attention backend {backend!r} is not installed ({exc}); install it on a CUDA machine or use 'sdpa'"
        ) from exc


def _varlen(qkv: Tensor, valid: Tensor, packed_attention) -> Tensor:
    """Drop padding slots, attend within each row's real tokens, put rows back.

    ``packed_attention(qkv [total, 3, H, hd], cu_seqlens int32 [B + 1], max_len) -> [total, H, hd]``.
    Returns ``[B, N, H, hd]`` with zeros at padding slots.
    """
    B, N = valid.shape
    index = valid.flatten().nonzero().squeeze(1)  # row-major, so each row's tokens stay together
    lengths = valid.sum(1, dtype=torch.int32)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    packed = packed_attention(qkv.flatten(0, 1)[index], cu_seqlens, int(lengths.max()))
    out = packed.new_zeros(B * N, *packed.shape[1:])
    out[index] = packed
    return out.view(B, N, *packed.shape[1:])


def attention(qkv: Tensor, valid: Tensor | None = None, backend: str = "sdpa") -> Tensor:
    """Non-causal self-attention of a packed projection.

    Args:
        qkv: ``[B, N, 3, H, hd]`` (q and k already rotated).
        valid: optional bool ``[B, N]``; False marks padding slots, which no token attends
            to and whose own outputs are unspecified.
        backend: ``"sdpa"`` (PyTorch; flash / cuDNN / memory-efficient kernels on GPU, the
            only one on CPU), ``"flash_attn"`` (packed and varlen APIs, fp16/bf16 on CUDA) or
            ``"xformers"`` (memory-efficient attention, CUDA).

    Returns:
        ``[B, N, H, hd]``.
    """
    if backend == "sdpa":
        q, k, v = qkv.unbind(2)
        mask = None if valid is None else valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)
    ops = _import_backend(check_attention_backend(backend))
    if backend == "flash_attn":
        if valid is None:
            return ops.flash_attn_qkvpacked_func(qkv)
        return _varlen(qkv, valid, lambda packed, cu, max_len: ops.flash_attn_varlen_qkvpacked_func(packed, cu, max_len))
    if valid is None:
        return ops.memory_efficient_attention(*qkv.unbind(2))

    def block_diagonal(packed: Tensor, cu: Tensor, max_len: int) -> Tensor:
        bias = ops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(cu.diff().tolist())
        return ops.memory_efficient_attention(*packed.unsqueeze(0).unbind(2), attn_bias=bias).squeeze(0)

    return _varlen(qkv, valid, block_diagonal)


class Rope(NamedTuple):
    """Where the tokens of one forward sit, for RoPE in every layer.

    ``cos_sin`` holds the reference path's tables, built once per forward and shared by all
    layers and heads; the Triton path decodes positions from ``ids`` in-kernel and leaves it None.
    ``check_ids``: whether this layer's RoPE checks that the ids lie on the grid (one layer per
    forward at most; see :func:`forward_blocks`).
    """

    ids: Tensor | None
    grid: Grid
    mode: str
    cos_sin: tuple[Tensor, Tensor] | None = None
    check_ids: bool = False


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias and 3D RoPE on q and k (never v)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.backend = check_attention_backend(backend)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope | None, valid: Tensor | None = None) -> Tensor:
        """x: ``[B, N, D]``; rope: token positions; valid: bool ``[B, N]`` -> ``[B, N, D]``."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        if rope is not None:  # in place on the projection output: no copies of q and k
            qkv = rope3d_qkv_(qkv, rope.ids, rope.grid, rope.mode, cos_sin=rope.cos_sin, check_ids=rope.check_ids)
        return self.proj(attention(qkv, valid, self.backend).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, cfg: ViTConfig, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, attn_backend)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: Tensor, rope: Rope | None, valid: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, valid)
        return x + self.mlp(self.norm2(x))


def forward_blocks(
    blocks: nn.ModuleList, x: Tensor, ids: Tensor | None, grid: Grid, cfg: ViTConfig, valid: Tensor | None = None,
    check_ids: bool = True,
) -> Tensor:  # fmt: skip
    """Run RoPE blocks over tokens named by flat ids; shared by the encoder and the predictor.

    x: ``[B, N, D]``; ids: ``[B, N]`` or None (full grid in order); valid: bool ``[B, N]``,
    False for padding slots, which no token attends to. On the reference path the RoPE tables
    are built once here and shared by every layer and head. ``check_ids``: check once (on the
    device, no host sync) that the ids lie on ``grid``; False when the caller already did.
    """
    triton = use_triton(x)
    cos_sin = None if triton else rope3d_cos_sin(ids, grid, cfg.head_dim, cfg.rope_mode, device=x.device, check_ids=check_ids)
    rope = Rope(ids, grid, cfg.rope_mode, cos_sin)
    recompute = getattr(blocks, "activation_checkpointing", False) and torch.is_grad_enabled()
    for i, block in enumerate(blocks):
        layer = rope._replace(check_ids=check_ids and triton and i == 0)  # the Triton path checks in its first layer
        x = checkpoint(block, x, layer, valid, use_reentrant=False) if recompute else block(x, layer, valid)
    return x


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """Run every attention layer of ``module`` with ``backend`` (see :func:`attention`)."""
    check_attention_backend(backend)
    for child in module.modules():
        if isinstance(child, Attention):
            child.backend = backend


def set_activation_checkpointing(module: nn.Module, enabled: bool = True) -> None:
    """Recompute every transformer block of ``module`` in the backward pass instead of storing
    its activations (memory for ~1/3 more compute)."""
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and any(isinstance(b, Block) for b in child):
            child.activation_checkpointing = enabled


def init_weights(module: nn.Module, blocks: nn.ModuleList, std: float) -> None:
    """V-JEPA 2's init: truncated normal weights (timm's bounds of +-2, not +-2 std), zero biases,
    unit LayerNorms, then the residual projections of block i scaled by 1 / sqrt(2 (i + 1))."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, block in enumerate(blocks):
            block.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = (tubelet, patch, patch): ``[B, C, T, H, W] -> [B, N, D]``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        size = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=size, stride=size)

    def forward(self, video: Tensor) -> Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """Video ViT encoder.

    ``forward(video [B, C, T, H, W], ids [B, K] | None) -> [B, K, D]``: patch-embeds the clip,
    keeps the tokens at ``ids`` (all tokens when ``ids`` is None), runs the blocks with 3D
    RoPE at those tokens' positions, and applies the final LayerNorm. ``attn_backend`` is how
    attention runs (:data:`ATTENTION_BACKENDS`), not part of the weights.
    """

    def __init__(self, cfg: ViTConfig, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_embed = PatchEmbed3D(cfg)
        self.blocks = nn.ModuleList(Block(cfg, attn_backend) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        init_weights(self, self.blocks, cfg.init_std)

    def token_grid(self, video_shape: torch.Size | tuple[int, ...]) -> Grid:
        """``(T, H, W)`` in tokens for a clip of shape ``[B, C, frames, height, width]``."""
        if len(video_shape) != 5 or video_shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected a clip [B, {self.cfg.in_chans}, T, H, W], got shape {tuple(video_shape)}")
        frames, height, width = video_shape[2:]
        sizes = (self.cfg.tubelet_size, self.cfg.patch_size, self.cfg.patch_size)
        if frames % sizes[0] or height % sizes[1] or width % sizes[2]:
            raise ValueError(
                f"clip of {frames} frames x {height} x {width} does not tile into tubelets of {sizes[0]} frames "
                f"and {sizes[1]}x{sizes[2]} patches"
            )
        return frames // sizes[0], height // sizes[1], width // sizes[2]

    def forward(
        self, video: Tensor, ids: Tensor | None = None, valid: Tensor | None = None, *, check_ids: bool = True
    ) -> Tensor:
        """video: ``[B, C, T, H, W]``; ids: ``[B, K]`` visible flat ids or None; valid: bool ``[B, K]``.

        Returns ``[B, K, D]`` (``K = T*H*W / (tubelet*patch^2)`` when ids is None). ``check_ids``:
        check on the device (no host sync) that the ids lie on the clip's grid; skip it
        (``False``) for ids that are right by construction, e.g. from ``MaskSampler``.
        """
        grid = self.token_grid(video.shape)
        x = self.patch_embed(video)
        if ids is not None:
            x = gather_tokens(x, ids, check_ids=check_ids)  # ids in [0, T*H*W): RoPE need not check again
        return self.norm(forward_blocks(self.blocks, x, ids, grid, self.cfg, valid, check_ids=False))


def build_encoder(name: str = "vit_l", attn_backend: str = "sdpa", **overrides) -> VisionTransformer:
    """Encoder from a preset name (``vit_tiny ... vit_G``), with any ViTConfig field overridden.

    Build on the meta device to inspect the giants without memory:
    ``with torch.device("meta"): build_encoder("vit_G")``.
    """
    if name not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder {name!r}; presets: {', '.join(ENCODER_PRESETS)}")
    return VisionTransformer(replace(ENCODER_PRESETS[name], **overrides), attn_backend)
