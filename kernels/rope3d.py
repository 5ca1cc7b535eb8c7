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

Implementations. Every op has a plain PyTorch reference and Triton kernels; which one
runs follows ``SALT_FAST_KERNELS`` (see ``_dispatch``: ``auto`` picks Triton for CUDA
tensors). The kernels compute positions, angles and sin/cos in-kernel (fp32; no tables
are read), run the math in fp32 (fp64 for fp64 tensors) and store in the I/O dtype.

* ``apply_rope3d(x, ids, grid, mode)``: out of place, ``x`` is ``[B, heads, N, head_dim]``.
* ``rope3d_qkv_(qkv, ids, grid, mode)``: in place on the packed projection output
  ``[B, N, 3, heads, head_dim]``: rotates q and k with one launch, leaves v alone.
* ``rope3d_cos_sin`` / ``rope3d_rotate``: the reference's table path (build the tables once
  per forward and share them across layers).

Backward is the exact transpose (the inverse rotation in standard mode; in vjepa2 mode,
which is not orthogonal, the transpose of the per-channel map). The Triton paths are the custom
ops ``salt_fast::rope3d`` (out of place, either direction; also the backward of both ops) and
``salt_fast::rope3d_qkv_`` (in place); see ``_ops``.

Drop-in for V-JEPA 2 code: its ``RoPEAttention`` calls ``rotate_queries_or_keys`` on the
t, h and w chunks of ``q`` and ``k`` and concatenates the rest unchanged; that whole
sequence is ``apply_rope3d(q, ids, grid, mode="vjepa2")`` here, with ``ids`` its ``mask``
(up to its bf16 angle rounding: angles here are always fp32). For the packed projection::

    qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1))   # [B, N, 3, heads, head_dim]
    rope3d_qkv_(qkv, ids, (T, H, W), mode="vjepa2")             # masks -> flat ids
    q, k, v = qkv.permute(2, 0, 3, 1, 4)                        # [B, heads, N, head_dim] each

This module stands alone: it imports nothing from salt_fast outside salt_fast.kernels.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from . import _ops
from ._checks import check_float, check_int_ids, validate_ids
from ._dispatch import jit, tl, use_triton
from ._launch import cdiv, next_pow2

__all__ = [
    "MODES",
    "apply_rope3d",
    "rope3d_axis_dim",
    "rope3d_cos_sin",
    "rope3d_qkv_",
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
    else:
        _check_ids_shape("token_coords", ids)
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
    *,
    check_ids: bool = True,
) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for ``rope3d_rotate``: build once per forward, share across layers and heads.

    Args:
        ids: ``[B, N]`` flat token ids, or ``None`` for the full grid.
        grid: ``(T, H, W)`` token grid.
        head_dim: channels per head; ``3 * rope3d_axis_dim(head_dim)`` of them are rotated.
        mode: ``"standard"`` or ``"vjepa2"``.
        device: device of the tables when ``ids`` is ``None`` (else ``ids.device``).
        check_ids: check that ids lie in ``[0, T*H*W)``, on the device without a host sync
            (see ``apply_rope3d``); ``False`` skips it.

    Returns:
        ``(cos, sin)``, each ``[B, N, 3d]`` fp32 (``B = 1`` when ``ids`` is ``None``).
    """
    if ids is not None:
        _check_ids_shape("rope3d_cos_sin", ids)
        validate_ids("rope3d_cos_sin", "ids", ids, math.prod(_check_grid(grid)), enabled=check_ids)
    return _cos_sin(ids, grid, head_dim, mode, device)


def _cos_sin(
    ids: Tensor | None, grid: Grid, head_dim: int, mode: str, device: torch.device | str | None
) -> tuple[Tensor, Tensor]:
    """``rope3d_cos_sin`` without the id checks (the ops check their ids once)."""
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


# --------------------------------------------------------------------------------------
# Input checks shared by both implementations
# --------------------------------------------------------------------------------------

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown RoPE mode {mode!r}; expected one of {MODES}")


def _check_ids_shape(op: str, ids: Tensor) -> None:
    check_int_ids(op, "ids", ids)
    if ids.dim() != 2:
        raise ValueError(f"{op}: ids must be an integer tensor of shape [B, N], got {ids.dtype} {tuple(ids.shape)}")


def _check_ids(
    op: str, ids: Tensor | None, batch: int, n_tokens: int, grid: Grid, device: torch.device, what: str, check: bool
) -> None:
    """Shapes, dtype and device of ``ids`` (free), then their range ``[0, T*H*W)`` on the device
    (``check``: the op's ``check_ids``; see ``_checks.validate_ids``)."""
    total = grid[0] * grid[1] * grid[2]
    if ids is None:
        if n_tokens != total:
            raise ValueError(f"ids=None needs N = T*H*W = {total} tokens, got N = {n_tokens}")
        return
    _check_ids_shape(op, ids)
    if ids.shape[0] not in (1, batch) or ids.shape[1] != n_tokens:
        raise ValueError(f"ids {tuple(ids.shape)} does not match {what}: expected [B, N] (or [1, N])")
    if ids.device != device:
        raise ValueError(f"ids are on device {ids.device} but {what} is on device {device}")
    validate_ids(op, "ids", ids, total, enabled=check)


# --------------------------------------------------------------------------------------
# Triton kernel: one kernel, both directions
# --------------------------------------------------------------------------------------


@jit
def _rope3d_omega(j, HALF: tl.constexpr):
    """``omega_j = 10000 ** (-j / HALF)`` per lane, as compile-time fp32 constants.

    The constants are evaluated in double and rounded once to fp32, as the reference tables
    are, so that both implementations see the same frequencies (an fp32 ``exp2`` would be
    off by an ulp, i.e. several 1e-6 rad at positions of ~64).
    """
    omega = tl.zeros(j.shape, tl.float32)
    for jj in tl.static_range(HALF):
        omega = tl.where(j == jj, 10000.0 ** (-jj / HALF), omega)
    return omega


@jit
def _rope3d_cos_sin_tile(pos, omega):
    """cos/sin of ``pos * omega``: ``pos`` [BLOCK_N, BLOCK_P] fp32, ``omega`` [BLOCK_P] fp32."""
    # The same fp32 angle as the reference tables. tl.sin/tl.cos lower to libdevice's
    # accurate sinf/cosf on NVIDIA (full range reduction), not to sin.approx.
    angle = pos * omega[None, :]
    return tl.cos(angle), tl.sin(angle)


@jit
def _rope3d_kernel(
    X,  # source, viewed as [B, N, slots, heads, head_dim], stride 1 on head_dim
    Y,  # destination, same view (may be X itself: in place)
    IDS,  # [B or 1, N] integer flat ids (unused when HAS_IDS is False)
    n_tokens,
    heads_per_program,  # divides the number of heads
    grid_h,
    grid_w,
    stride_xb,
    stride_xn,
    stride_xs,
    stride_xh,
    stride_yb,
    stride_yn,
    stride_ys,
    stride_yh,
    stride_ib,
    stride_in,
    HALF: tl.constexpr,  # d/2: pairs per axis chunk; 3*HALF pairs are rotated
    COLS: tl.constexpr,  # channels loaded and stored per head vector (head_dim, or about 3d in place)
    N_SLOTS: tl.constexpr,  # slots processed (2 for q|k, 3 for q|k|v, 1 for a single tensor)
    ROT_SLOTS: tl.constexpr,  # the first ROT_SLOTS slots are rotated, the rest copied
    HAS_IDS: tl.constexpr,
    VJEPA2: tl.constexpr,
    BACKWARD: tl.constexpr,  # apply the transpose instead
    FP64: tl.constexpr,  # compute in fp64 (fp64 I/O); otherwise fp32
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,  # channel pairs per tile (power of two >= COLS / 2)
    ALIGN: tl.constexpr,  # the strides above are passed divided by ALIGN (vectorization hint)
):
    stride_xb *= ALIGN
    stride_xn *= ALIGN
    stride_xs *= ALIGN
    stride_xh *= ALIGN
    stride_yb *= ALIGN
    stride_yn *= ALIGN
    stride_ys *= ALIGN
    stride_yh *= ALIGN
    pid_n = tl.program_id(0)
    pid_h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    # Positions of this block's tokens, decoded from flat ids.
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_tokens
    offs_n = offs_n.to(tl.int64)
    if HAS_IDS:
        ids = tl.load(IDS + b * stride_ib + offs_n * stride_in, mask=mask_n, other=0).to(tl.int64)
    else:
        ids = offs_n
    pos_t = ids // (grid_h * grid_w)
    pos_h = (ids // grid_w) % grid_h
    pos_w = ids % grid_w

    # Per channel pair p: axis p // HALF, pair j = p % HALF inside the axis chunk.
    p = tl.arange(0, BLOCK_P)
    axis = (p // HALF)[None, :]
    j = p % HALF
    pos = tl.where(axis == 0, pos_t[:, None], tl.where(axis == 1, pos_h[:, None], pos_w[:, None]))
    pos = pos.to(tl.float32)
    # Angles once per token, reused for every head and slot below.
    if VJEPA2:  # tiled frequencies: channel c of a chunk uses omega_{c mod HALF}
        cos_e, sin_e = _rope3d_cos_sin_tile(pos, _rope3d_omega((2 * j) % HALF, HALF))
        cos_o, sin_o = _rope3d_cos_sin_tile(pos, _rope3d_omega((2 * j + 1) % HALF, HALF))
    else:  # both members of pair j use omega_j
        cos_e, sin_e = _rope3d_cos_sin_tile(pos, _rope3d_omega(j, HALF))
        cos_o = cos_e
        sin_o = sin_e
    # Forward: y_e = x_e cos_e - x_o sin_e, y_o = x_o cos_o + x_e sin_o. Its transpose is the
    # same formula with (sin_e, sin_o) replaced by (-sin_o, -sin_e).
    if BACKWARD:
        neg_sin_o = -sin_o
        sin_o = -sin_e
        sin_e = neg_sin_o
    if FP64:
        cos_e = cos_e.to(tl.float64)
        sin_e = sin_e.to(tl.float64)
        cos_o = cos_o.to(tl.float64)
        sin_o = sin_o.to(tl.float64)

    # Tile [BLOCK_N, 2 * BLOCK_P]: tokens x channels, contiguous along channels so that
    # loads and stores vectorize; viewed as [BLOCK_N, BLOCK_P, 2] to split the pairs.
    chan = tl.arange(0, 2 * BLOCK_P)
    mask = mask_n[:, None] & (chan < COLS)[None, :]
    rotated = (chan < 6 * HALF)[None, :]
    x_offs = b * stride_xb + offs_n[:, None] * stride_xn + chan[None, :]
    y_offs = b * stride_yb + offs_n[:, None] * stride_yn + chan[None, :]
    head0 = pid_h * heads_per_program
    for s in tl.static_range(N_SLOTS):
        for i in range(heads_per_program):
            head = (head0 + i).to(tl.int64)
            x = tl.load(X + x_offs + s * stride_xs + head * stride_xh, mask=mask, other=0.0)
            if s < ROT_SLOTS:
                if FP64:
                    xc = x.to(tl.float64)
                else:
                    xc = x.to(tl.float32)
                x_e, x_o = tl.split(tl.reshape(xc, (BLOCK_N, BLOCK_P, 2)))
                y_e = x_e * cos_e - x_o * sin_e
                y_o = x_o * cos_o + x_e * sin_o
                y = tl.reshape(tl.join(y_e, y_o), (BLOCK_N, 2 * BLOCK_P)).to(Y.dtype.element_ty)
                y = tl.where(rotated, y, x)  # leftover channels pass through
            else:
                y = x
            tl.store(Y + y_offs + s * stride_ys + head * stride_yh, y, mask=mask)


_TILE_ELEMENTS = 2048  # elements per [BLOCK_N, 2 * BLOCK_P] tile


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_config(batch: int, n_tokens: int, heads: int, block_p: int, device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK_N, heads per program, num_warps)``; heads per program must divide ``heads``.

    A program rotates every head of ``BLOCK_N`` tokens (so its sin/cos are shared by all of
    them) unless that leaves too few programs to fill the GPU; then heads are split into
    equal groups, one program per (token block, head group, batch element).
    """
    block_n = max(1, min(next_pow2(n_tokens), _TILE_ELEMENTS // (2 * block_p)))
    programs = cdiv(n_tokens, block_n) * batch
    if device.type != "cuda":
        return block_n, heads, 4  # interpreter: each program costs ~1 ms, use as few as possible
    wanted = min(heads, cdiv(4 * _sm_count(device), programs))
    groups = next(g for g in range(max(wanted, 1), heads + 1) if heads % g == 0)
    return block_n, heads // groups, 4


def _launch(src: Tensor, dst: Tensor, ids: Tensor | None, grid: Grid, mode: str, *, backward: bool, rot_slots: int, full: bool) -> None:
    """Run the kernel on ``src`` / ``dst`` viewed as ``[B, N, slots, heads, head_dim]`` (stride 1 on head_dim).

    ``full``: load/store every channel (leftover ones copied); otherwise only the ``3d``
    rotated ones (for in place). Slots ``>= rot_slots`` are copied unchanged.
    """
    batch, n_tokens, slots, heads, head_dim = src.shape
    half = rope3d_axis_dim(head_dim) // 2
    if batch == 0 or n_tokens == 0 or heads == 0 or half == 0:
        return
    # In place, the leftover channels are not written, except the few (< 8) that round the
    # stored width up to a multiple of 8: they are written back unchanged (keeps stores vectorized).
    cols = head_dim if full else min(head_dim, -(-6 * half // 8) * 8)
    block_p = next_pow2((cols + 1) // 2)
    block_n, heads_per_program, num_warps = _launch_config(batch, n_tokens, heads, block_p, src.device)
    if heads % heads_per_program:
        raise RuntimeError(f"heads per program ({heads_per_program}) must divide heads ({heads})")
    if ids is None:
        ids_arg, stride_ib, stride_in = src, 0, 0
    else:
        ids_arg, stride_ib, stride_in = ids, (ids.stride(0) if ids.shape[0] > 1 else 0), ids.stride(1)
    strides = [*src.stride()[:4], *dst.stride()[:4]]
    if slots == 1:
        strides[2] = strides[6] = 0
    align = 16
    while any(s % align for s in strides):
        align //= 2
    launch_grid = (cdiv(n_tokens, block_n), heads // heads_per_program, batch)
    _rope3d_kernel[launch_grid](
        src,
        dst,
        ids_arg,
        n_tokens,
        heads_per_program,
        grid[1],
        grid[2],
        *(s // align for s in strides),
        stride_ib,
        stride_in,
        HALF=half,
        COLS=cols,
        N_SLOTS=slots,
        ROT_SLOTS=rot_slots,
        HAS_IDS=ids is not None,
        VJEPA2=mode == "vjepa2",
        BACKWARD=backward,
        FP64=src.dtype == torch.float64,
        BLOCK_N=block_n,
        BLOCK_P=block_p,
        ALIGN=align,
        num_warps=num_warps,
    )


def _as_5d(t: Tensor, qkv_layout: bool) -> Tensor:
    """``[B, N, slots, heads, head_dim]`` view: qkv as is, ``[B, heads, N, head_dim]`` as one slot."""
    return t if qkv_layout else t.permute(0, 2, 1, 3).unsqueeze(2)


def _dense_last(x: Tensor) -> Tensor:
    """``x``, or a contiguous copy when its last dim is not contiguous (the kernel needs stride 1 there)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _new_like(x: Tensor) -> Tensor:
    """The output buffer for ``x`` (stride 1 on its last dim): ``x``'s layout when ``x`` is dense, else contiguous."""
    y = torch.empty_like(x)
    return y if y.stride(-1) == 1 else torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _rope3d_out_of_place(x: Tensor, ids: Tensor | None, grid: Grid, mode: str, qkv_layout: bool, backward: bool) -> Tensor:
    x = _dense_last(x)
    y = _new_like(x)
    _launch(_as_5d(x, qkv_layout), _as_5d(y, qkv_layout), ids, grid, mode, backward=backward, rot_slots=2 if qkv_layout else 1, full=True)
    return y


# --------------------------------------------------------------------------------------
# Custom ops (see _ops): implementation, fake implementation and cost of each, then autograd
# --------------------------------------------------------------------------------------


def _rope3d(
    x: Tensor, ids: Tensor | None, grid: list[int], rope_mode: str, qkv_layout: bool, transpose: bool
) -> Tensor:
    """``salt_fast::rope3d``: RoPE (or its transpose) into a new tensor. ``x`` is ``[B, heads, N,
    head_dim]``, or with ``qkv_layout`` a packed ``[B, N, 3, heads, head_dim]`` whose slot 2 is copied."""
    return _rope3d_out_of_place(x, ids, tuple(grid), rope_mode, qkv_layout, transpose)


def _rope3d_fake(
    x: Tensor, ids: Tensor | None, grid: list[int], rope_mode: str, qkv_layout: bool, transpose: bool
) -> Tensor:
    return _new_like(_dense_last(x))


def _rope3d_flops(tokens: int, heads: int, slots: int, head_dim: int, mode: str) -> int:
    """Per rotated value 3 (two products, one sum); per token and channel pair the angle and its
    cos and sin (twice in vjepa2 mode: the two members of a pair turn by different angles)."""
    pairs = 3 * (rope3d_axis_dim(head_dim) // 2)
    return 3 * tokens * heads * slots * 2 * pairs + 3 * tokens * pairs * (2 if mode == "vjepa2" else 1)


def _rope3d_cost(
    x: Tensor, ids: Tensor | None, grid: list[int], rope_mode: str, qkv_layout: bool, transpose: bool
) -> tuple[int, int]:
    """``(flops, bytes)``: every value of ``x`` read and written once (slot 2 of a qkv copied), the
    ids read once per token (one head group per program: the usual case), plus the copy of ``x`` when
    its last dim is not contiguous."""
    batch, heads, n_tokens, head_dim = (x.shape[0], x.shape[3], x.shape[1], x.shape[4]) if qkv_layout else x.shape
    copy = 0 if x.stride(-1) == 1 else 2 * _ops.nbytes(x)
    ids_bytes = 0 if ids is None else batch * n_tokens * ids.element_size()
    flops = _rope3d_flops(batch * n_tokens, heads, 2 if qkv_layout else 1, head_dim, rope_mode)
    return flops, 2 * _ops.nbytes(x) + copy + ids_bytes


def _rope3d_qkv(qkv: Tensor, ids: Tensor | None, grid: list[int], rope_mode: str) -> None:
    """``salt_fast::rope3d_qkv_``: rotates q and k of a packed ``[B, N, 3, heads, head_dim]`` in place."""
    qk = qkv[:, :, :2]
    _launch(qk, qk, ids, tuple(grid), rope_mode, backward=False, rot_slots=2, full=False)


def _rope3d_qkv_fake(qkv: Tensor, ids: Tensor | None, grid: list[int], rope_mode: str) -> None:
    return None


def _rope3d_qkv_cost(qkv: Tensor, ids: Tensor | None, grid: list[int], rope_mode: str) -> tuple[int, int]:
    """``(flops, bytes)``: q and k read and written in place, only their rotated channels (rounded
    up to a multiple of 8, as ``_launch`` stores them); the ids read once per token."""
    batch, n_tokens, _, heads, head_dim = qkv.shape
    cols = min(head_dim, -(-3 * rope3d_axis_dim(head_dim) // 8) * 8)
    ids_bytes = 0 if ids is None else batch * n_tokens * ids.element_size()
    flops = _rope3d_flops(batch * n_tokens, heads, 2, head_dim, rope_mode)
    return flops, 2 * batch * n_tokens * 2 * heads * cols * qkv.element_size() + ids_bytes


_ROPE3D = _ops.define(
    "rope3d", "(Tensor x, Tensor? ids, int[] grid, str rope_mode, bool qkv_layout, bool transpose) -> Tensor",
    _rope3d, fake=_rope3d_fake, cost=_rope3d_cost,
)  # fmt: skip
_ops.define(
    "rope3d_qkv_", "(Tensor(a!) qkv, Tensor? ids, int[] grid, str rope_mode) -> ()", _rope3d_qkv,
    fake=_rope3d_qkv_fake, cost=_rope3d_qkv_cost, mutates_args=("qkv",),
)  # fmt: skip


def _rope3d_setup(ctx, inputs, output) -> None:
    x, ids, grid, mode, qkv_layout, transpose = inputs
    ctx.save_for_backward(ids)
    ctx.args = (grid, mode, qkv_layout, transpose)


def _rope3d_grad(ctx, grad: Tensor):
    """The same op with the direction flipped, so it is differentiable to any order."""
    (ids,) = ctx.saved_tensors
    grid, mode, qkv_layout, transpose = ctx.args
    return torch.ops.salt_fast.rope3d(grad, ids, grid, mode, qkv_layout, not transpose), None, None, None, None, None


_ROPE3D.register_autograd(_rope3d_grad, setup_context=_rope3d_setup)


class _Rope3dQKVInPlace(torch.autograd.Function):
    """Rotates q and k of a packed ``[B, N, 3, heads, head_dim]`` tensor in place
    (``salt_fast::rope3d_qkv_``); saves only ids. PyTorch registers no autograd formula for a
    mutating custom op, hence this Function (``torch.compile`` traces it)."""

    @staticmethod
    def forward(ctx, qkv, ids, grid, mode):
        torch.ops.salt_fast.rope3d_qkv_(qkv, ids, grid, mode)
        ctx.mark_dirty(qkv)
        ctx.save_for_backward(ids)
        ctx.args = (grid, mode)
        return qkv

    @staticmethod
    def backward(ctx, grad):
        # The incoming grad may be shared with other branches (or be an expanded view), so
        # the transpose goes into a new tensor; slot 2 (v) is copied in the same launch.
        (ids,) = ctx.saved_tensors
        grid, mode = ctx.args
        return torch.ops.salt_fast.rope3d(grad, ids, grid, mode, True, True), None, None, None


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


def apply_rope3d(x: Tensor, ids: Tensor | None, grid: Grid, mode: str = "standard", *, check_ids: bool = True) -> Tensor:
    """Apply 3D RoPE to queries or keys (out of place).

    Args:
        x: ``[B, heads, N, head_dim]``, any float dtype, any strides; any ``head_dim``.
            Non-float tensors are refused (``ValueError``).
        ids: ``[B, N]`` (or ``[1, N]``, shared by the batch) integer flat token ids of the
            ``N`` tokens, each in ``[0, T*H*W)``, on ``x``'s device; or ``None`` when ``x``
            holds the full grid in order (``N = T * H * W``).
        grid: ``(T, H, W)`` token grid the ids refer to.
        mode: ``"standard"`` (default) or ``"vjepa2"``; see the module docstring.
        check_ids: check that ids lie in ``[0, T*H*W)``, on the device without a host sync
            (``torch._assert_async``: ``RuntimeError`` on CPU, a device-side assert on CUDA).
            ``False`` skips it, for ids correct by construction (out-of-range ids then give
            meaningless positions). ``SALT_FAST_DEBUG=1`` checks synchronously (``ValueError``)
            whatever this says.

    Returns:
        A new ``[B, heads, N, head_dim]`` tensor in ``x``'s dtype (``x`` itself when
        ``head_dim < 6``: nothing to rotate). Differentiable; its backward is the transpose.

    Runs the Triton kernel when ``SALT_FAST_KERNELS`` selects it for ``x`` (fp16, bf16, fp32,
    fp64), else the PyTorch reference. For q and k of a packed qkv projection prefer
    ``rope3d_qkv_`` (one in-place launch for both). V-JEPA 2: ``mode="vjepa2"`` equals its
    per-axis ``rotate_queries_or_keys`` calls plus the concatenation of the rest.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, heads, N, head_dim], got shape {tuple(x.shape)}")
    check_float("apply_rope3d", "x", x)
    grid = _check_grid(grid)
    _check_mode(mode)
    _check_ids("apply_rope3d", ids, x.shape[0], x.shape[2], grid, x.device, f"x {tuple(x.shape)}", check_ids)
    if use_triton(x) and x.dtype in _KERNEL_DTYPES and rope3d_axis_dim(x.shape[-1]) > 0:
        return torch.ops.salt_fast.rope3d(x, ids, grid, mode, False, False)
    cos, sin = _cos_sin(ids, grid, x.shape[-1], mode, x.device)
    return rope3d_rotate(x, cos, sin)


def rope3d_qkv_(
    qkv: Tensor,
    ids: Tensor | None,
    grid: Grid,
    mode: str = "standard",
    cos_sin: tuple[Tensor, Tensor] | None = None,
    *,
    check_ids: bool = True,
) -> Tensor:
    """Rotate q and k of a packed qkv projection in place; v is left untouched.

    Args:
        qkv: ``[B, N, 3, heads, head_dim]`` (e.g. ``linear(x).unflatten(-1, (3, heads, -1))``),
            slots q, k, v; float dtype; the last dim contiguous, other strides arbitrary.
            Slots 0 and 1 are rotated in place (only their first ``3d`` channels are
            written); slot 2 and the leftover channels are not written.
        ids: ``[B, N]`` (or ``[1, N]``) integer flat token ids on ``qkv``'s device, each in
            ``[0, T*H*W)``; or ``None`` for the full grid in order (``N = T * H * W``).
        grid: ``(T, H, W)`` token grid.
        mode: ``"standard"`` (default) or ``"vjepa2"``.
        cos_sin: optional ``(cos, sin)`` from ``rope3d_cos_sin(ids, grid, head_dim, mode)``
            (built once per forward, shared across layers) for the reference path; the
            Triton path computes its angles in-kernel and ignores it.
        check_ids: check that ids lie in ``[0, T*H*W)``, on the device without a host sync
            (see ``apply_rope3d``); ``False`` skips it.

    Returns:
        ``qkv`` itself. Autograd: recorded as an in-place op (``qkv`` must not be a leaf that
        requires grad); the Triton path saves only ``ids`` and its backward applies the
        transpose to the grads of q and k, passing v's grad through.

    One kernel launch rotates both q and k, computing each token's angles once for all its
    heads. V-JEPA 2 drop-in (``mode="vjepa2"``)::

        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1))
        rope3d_qkv_(qkv, ids, (T, H, W), mode="vjepa2")
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, heads, N, head_dim], ready for SDPA
    """
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be [B, N, 3, heads, head_dim], got shape {tuple(qkv.shape)}")
    check_float("rope3d_qkv_", "qkv", qkv)
    batch, n_tokens, _, _, head_dim = qkv.shape
    if qkv.stride(-1) != 1 and head_dim > 1:
        raise ValueError(f"qkv's last dim (head_dim) must be contiguous, got strides {qkv.stride()}")
    grid = _check_grid(grid)
    _check_mode(mode)
    _check_ids("rope3d_qkv_", ids, batch, n_tokens, grid, qkv.device, f"qkv {tuple(qkv.shape)}", check_ids)
    r = 3 * rope3d_axis_dim(head_dim)
    if cos_sin is not None and (
        len(cos_sin) != 2
        or any(t.dim() != 3 or t.shape[0] not in (1, batch) or tuple(t.shape[1:]) != (n_tokens, r) for t in cos_sin)
    ):
        shapes = [tuple(t.shape) for t in cos_sin]
        raise ValueError(f"cos_sin must be (cos, sin) of shape [B or 1, N={n_tokens}, 3d={r}], got {shapes}")
    triton_path = use_triton(qkv)
    if r == 0:
        return qkv
    if triton_path and qkv.dtype in _KERNEL_DTYPES:
        return _Rope3dQKVInPlace.apply(qkv, ids, grid, mode)
    cos, sin = cos_sin if cos_sin is not None else _cos_sin(ids, grid, head_dim, mode, qkv.device)
    qk = qkv[:, :, :2, :, :r].permute(2, 0, 3, 1, 4)  # [2, B, heads, N, r]
    qkv[:, :, :2, :, :r] = rope3d_rotate(qk, cos, sin).permute(1, 3, 0, 2, 4)
    return qkv
