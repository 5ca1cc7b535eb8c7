"""3D rotary position embedding (RoPE) for video tokens on a (T, H, W) grid.

Each head's channels are split into three chunks of ``d = 2 * ((head_dim // 3) // 2)``
for the time, height and width axes, in that order; the ``head_dim - 3d`` channels left
over pass through unrotated. Inside a chunk, channels are rotated in adjacent pairs
``(2j, 2j + 1)`` by ``angle = position * omega``, with ``omega_j = 10000 ** (-j / (d / 2))``
and the token's integer grid coordinate on that axis as the position.

Two conventions (``mode``):

* ``"standard"``: both members of pair ``j`` use ``omega_j``: a true rotation.
* ``"vjepa2"``: V-JEPA 2's released code tiles the frequency vector instead of
  interleaving it, so channel ``c`` of a chunk uses ``omega_{c mod d/2}``. The two members
  of a pair then turn by different angles, so the map is not orthogonal. Use this mode to
  load V-JEPA 2 checkpoints or reproduce its numbers.

Both are one formula, ``y = x * cos + swap(x) * sin`` with per-channel angles and
``swap(x)[2j] = -x[2j + 1]``, ``swap(x)[2j + 1] = x[2j]``; the modes differ only in which
frequency each channel gets. Tokens are named by flat ids ``t * H * W + h * W + w``, so a
masked subset of tokens keeps its true positions.

Drop-in for V-JEPA 2: ``apply_rope3d(q, ids, grid, mode="vjepa2")`` equals its
``RoPEAttention`` rotation of ``q`` with ``mask=ids`` (up to its bf16 angle rounding:
angles here are always computed in fp32).

This module is plain PyTorch and stands alone (it imports nothing from salt_fast).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "MODES",
    "apply_rope3d",
    "rope3d_axis_dim",
    "rope3d_cos_sin",
    "rope3d_rotate",
    "token_coords",
]

MODES = ("standard", "vjepa2")
Grid = tuple[int, int, int]


def rope3d_axis_dim(head_dim: int) -> int:
    """Channels rotated per axis: ``2 * ((head_dim // 3) // 2)`` (e.g. 20 for head_dim 64)."""
    return 2 * ((head_dim // 3) // 2)


def _check_grid(grid: Grid) -> Grid:
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be three positive ints (T, H, W) in tokens, got {grid!r}")
    return int(grid[0]), int(grid[1]), int(grid[2])


def token_coords(ids: Tensor | None, grid: Grid, device: torch.device | str | None = None) -> Tensor:
    """Integer (t, h, w) coordinates of flat token ids.

    Args:
        ids: ``[B, N]`` integer flat ids, or ``None`` for every token of the grid in order.
        grid: ``(T, H, W)`` token grid.
        device: where to build the coordinates when ``ids`` is ``None``.

    Returns:
        ``[B, N, 3]`` int64 (``[1, T*H*W, 3]`` when ``ids`` is ``None``).
    """
    t, h, w = _check_grid(grid)
    if ids is None:
        ids = torch.arange(t * h * w, device=device).unsqueeze(0)
    elif ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 2:
        raise ValueError(f"ids must be an integer tensor of shape [B, N], got {ids.dtype} {tuple(ids.shape)}")
    ids = ids.long()
    return torch.stack((ids // (h * w), (ids // w) % h, ids % w), dim=-1)


def _channel_tables(head_dim: int, mode: str, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    """Per rotated channel: which axis it reads (0, 1, 2) and its frequency, ``[3d]`` each."""
    if mode not in MODES:
        raise ValueError(f"unknown RoPE mode {mode!r}; expected one of {MODES}")
    d = rope3d_axis_dim(head_dim)
    half = d // 2
    # fp64 so that both modes get correctly rounded fp32 frequencies.
    omega = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=device) / max(half, 1))
    channel = torch.arange(d, device=device)
    per_channel = omega[channel // 2] if mode == "standard" else omega[channel % max(half, 1)]
    axis = torch.arange(3, device=device).repeat_interleave(d)
    return axis, per_channel.repeat(3).float()


def rope3d_cos_sin(
    ids: Tensor | None,
    grid: Grid,
    head_dim: int,
    mode: str = "standard",
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for ``rope3d_rotate``: build once per forward, share across layers and heads.

    Args:
        ids: ``[B, N]`` flat token ids, or ``None`` for the full grid.
        grid: ``(T, H, W)`` token grid.
        head_dim: channels per head; ``3 * rope3d_axis_dim(head_dim)`` of them are rotated.
        mode: ``"standard"`` or ``"vjepa2"``.
        device: device of the tables when ``ids`` is ``None`` (else ``ids.device``).

    Returns:
        ``(cos, sin)``, each ``[B, N, 3d]`` fp32 (``B = 1`` when ``ids`` is ``None``).
    """
    device = ids.device if ids is not None else device
    axis, omega = _channel_tables(head_dim, mode, device)
    positions = token_coords(ids, grid, device)[..., axis].float()  # [B, N, 3d]
    angle = positions * omega
    return angle.cos(), angle.sin()


def rope3d_rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x``; the rest pass through.

    Args:
        x: ``[..., B, heads, N, head_dim]`` queries and/or keys (e.g. q and k stacked on a
            leading dim of 2, so one call rotates both). Any float dtype.
        cos, sin: ``[B, N, r]`` from ``rope3d_cos_sin`` (``B`` may be 1 to broadcast).

    Returns:
        Tensor of ``x``'s shape and dtype; the math runs in fp32 (fp64 for fp64 inputs).
    """
    r = cos.shape[-1]
    if r == 0:
        return x
    compute = torch.promote_types(x.dtype, torch.float32)  # fp32 math, fp64 stays fp64
    cos, sin = cos.unsqueeze(-3).to(compute), sin.unsqueeze(-3).to(compute)  # broadcast over heads
    rotated = x[..., :r].to(compute)
    pairs = rotated.unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    out = (rotated * cos + swapped * sin).to(x.dtype)
    return torch.cat((out, x[..., r:]), dim=-1) if r < x.shape[-1] else out


def apply_rope3d(x: Tensor, ids: Tensor | None, grid: Grid, mode: str = "standard") -> Tensor:
    """Apply 3D RoPE to queries or keys.

    Args:
        x: ``[B, heads, N, head_dim]``, any float dtype; any ``head_dim``.
        ids: ``[B, N]`` int64 flat token ids of the ``N`` tokens, or ``None`` when ``x``
            holds the full grid in order (``N = T * H * W``).
        grid: ``(T, H, W)`` token grid the ids refer to.
        mode: ``"standard"`` (default) or ``"vjepa2"``; see the module docstring.

    Returns:
        ``[B, heads, N, head_dim]`` in ``x``'s dtype.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, heads, N, head_dim], got shape {tuple(x.shape)}")
    grid = _check_grid(grid)
    if ids is None and x.shape[2] != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"ids=None needs N = T*H*W = {grid[0] * grid[1] * grid[2]} tokens, got N = {x.shape[2]}")
    if ids is not None and (ids.shape[0] not in (1, x.shape[0]) or ids.shape[-1] != x.shape[2]):
        raise ValueError(f"ids {tuple(ids.shape)} does not match x {tuple(x.shape)}: expected [B, N]")
    cos, sin = rope3d_cos_sin(ids, grid, x.shape[-1], mode, device=x.device)
    return rope3d_rotate(x, cos, sin)
