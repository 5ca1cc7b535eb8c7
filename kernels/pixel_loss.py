"""SALT Stage-1 (VideoMAE) pixel loss, fused: per-patch normalized pixel targets gathered at ids.

For a video ``[B, C, T, H, W]`` cut into tubelet patches of ``tubelet x patch x patch`` (a
``T/tubelet x H/patch x W/patch`` token grid, flat id ``t * Hp * Wp + h * Wp + w``), the target
of a token is its patch with each channel normalized by the patch's own statistics,
``(x - mean) / (std + 1e-6)`` with the *unbiased* std over the ``tubelet * patch * patch``
values of that channel, flattened pixel-major with the channel innermost: value
``(dt, dy, dx, c)`` sits at ``((dt * patch + dy) * patch + dx) * C + c`` (VideoMAE's
``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c``, normalize over the pixels, then
``(p c)``). The loss is the mean over the (valid) tokens at ``ids`` and all their values of
``(pred - target) ** 2``.

Two implementations behind one function (``SALT_FAST_KERNELS=auto|triton|reference``):

* **Triton** (CUDA tensors under ``auto``): the custom op ``salt_fast::pixel_mse_loss`` (see
  ``_ops``; its fake implementation runs on meta tensors). One program per ``(b, k)`` token loads the
  patch straight from the video with strided loads as a ``[C, tubelet*patch*patch]`` tile
  (any video strides, any float or integer dtype, upcast to fp32), takes the per-channel
  mean and unbiased std in registers, reads the prediction row, writes its summed squared
  error as one fp32 partial and, in the same pass, ``grad_pred = 2 (pred - target) / count``
  (the row and its gradient move in 16-byte vectors, reordered on chip to the tile's order).
  A one-program kernel sums the partials in a fixed order (no atomics: bitwise
  reproducible). The patchified video is never materialized; only the ``[B, K, P]``
  gradient is allocated (not even that when ``pred`` needs no grad).
* **Reference**: plain PyTorch, patchify with ``reshape``/``permute``, normalize, gather, MSE.

Drop-in for VideoMAE / V-JEPA-style Stage-1 code that builds ``videos_patch`` with einops,
normalizes, gathers the masked tokens and calls ``MSELoss``: pass the video, the ``[B, K]``
masked ids and the decoder output ``[B, K, tubelet*patch*patch*C]`` instead. VideoMAE
builds the target from the *un*-normalized video; per-patch normalization cancels any
per-channel affine map ``a x + b`` except through the epsilon (``1e-6`` becomes ``1e-6 / a``),
so passing the ImageNet-normalized clip gives the same target to within ~1e-6 relative.

This module stands alone (it imports nothing from salt_fast outside ``salt_fast.kernels``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _launch
from ._checks import check_float, check_int_ids, validate_ids
from ._dispatch import jit, tl, use_triton
from ._fused_loss import define_loss, finish_mean, fused_loss, loss_cost, masked_mean, mean_count, valid_args
from ._launch import compute_dtype, next_pow2, tl_dtype

__all__ = ["pixel_mse_loss", "pixel_mse_loss_reference", "pixel_targets_reference"]

STD_EPS = 1e-6  # VideoMAE: (x - mean) / (var(unbiased).sqrt() + 1e-6)


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def _check_pixel_args(
    pred: Tensor, video: Tensor, ids: Tensor, tubelet: int, patch: int, valid: Tensor | None
) -> tuple[int, int, int]:
    """Validate shapes; returns the token grid ``(Tp, Hp, Wp)``."""
    for name, v in (("tubelet", tubelet), ("patch", patch)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if tubelet * patch * patch < 2:
        raise ValueError("tubelet * patch * patch must be >= 2 (the unbiased std of one value is undefined)")
    if video.dim() != 5:
        raise ValueError(f"video must be [B, C, T, H, W], got shape {tuple(video.shape)}")
    if pred.dim() != 3 or ids.dim() != 2:
        raise ValueError(f"expected pred [B, K, P] and ids [B, K], got {tuple(pred.shape)} and {tuple(ids.shape)}")
    b, c, t, h, w = video.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(
            f"video T x H x W = {t} x {h} x {w} is not divisible by tubelet x patch x patch = "
            f"{tubelet} x {patch} x {patch}"
        )
    width = tubelet * patch * patch * c
    if pred.shape[0] != b or pred.shape[2] != width:
        raise ValueError(
            f"pred {tuple(pred.shape)} does not match the video: expected [{b}, K, tubelet*patch*patch*C = {width}]"
        )
    if tuple(ids.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"ids {tuple(ids.shape)} does not match pred {tuple(pred.shape)}: expected [B, K]")
    check_int_ids("pixel_mse_loss", "ids", ids)
    check_float("pixel_mse_loss", "pred", pred)
    if video.dtype.is_complex or video.dtype == torch.bool:
        raise ValueError(f"pixel_mse_loss: video must be a real float or integer tensor, got {video.dtype}")
    if valid is not None and tuple(valid.shape) != tuple(ids.shape):
        raise ValueError(f"valid {tuple(valid.shape)} does not match ids: expected {tuple(ids.shape)}")
    return t // tubelet, h // patch, w // patch


def pixel_targets_reference(video: Tensor, tubelet: int = 2, patch: int = 16, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalized pixel targets of *every* token: ``[B, Tp*Hp*Wp, tubelet*patch*patch*C]`` in ``dtype``.

    Materializes the whole patchified video (the fused kernel never does)."""
    b, c, t, h, w = video.shape
    tp, hp, wp = t // tubelet, h // patch, w // patch
    x = video.to(dtype).reshape(b, c, tp, tubelet, hp, patch, wp, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, Tp, Hp, Wp, tubelet, patch, patch, C]
    x = x.reshape(b, tp * hp * wp, tubelet * patch * patch, c)
    mean = x.mean(dim=-2, keepdim=True)
    std = x.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return ((x - mean) / (std + STD_EPS)).flatten(-2)


def pixel_mse_loss_reference(
    pred: Tensor, video: Tensor, ids: Tensor, tubelet: int = 2, patch: int = 16, valid: Tensor | None = None
) -> Tensor:
    """Plain PyTorch ``pixel_mse_loss`` (same arguments): patchify, normalize, gather, MSE."""
    _check_pixel_args(pred, video, ids, tubelet, patch, valid)
    compute = compute_dtype(pred.dtype, video.dtype)
    if valid is not None:
        ids = ids.where(valid, 0)  # padding slots may hold any id (the kernel never reads them)
    targets = pixel_targets_reference(video, tubelet, patch, compute)
    target = targets.gather(1, ids.long().unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
    return masked_mean((pred.to(compute) - target).square(), valid)


# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------


@jit
def _pixel_mse_fwd_kernel(
    pred_ptr, video_ptr, ids_ptr, valid_ptr, count_ptr, grad_ptr, partial_ptr,
    n_tokens, grid_h, grid_w, count_total,
    stride_pb, stride_pk, stride_pe,
    stride_vb, stride_vc, stride_vt, stride_vh, stride_vw,
    HAS_VALID: tl.constexpr, WRITE_GRAD: tl.constexpr, COMPUTE: tl.constexpr, CHANNELS: tl.constexpr,
    TUBELET: tl.constexpr, PATCH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)  # flat (b, k)
    b = (row // n_tokens).to(tl.int64)
    k = (row % n_tokens).to(tl.int64)
    n_pix: tl.constexpr = TUBELET * PATCH * PATCH  # values per channel

    tok = tl.load(ids_ptr + row).to(tl.int64)  # a padding slot's id may be anything: only masked loads use it
    gt = tok // (grid_h * grid_w)
    gh = (tok // grid_w) % grid_h
    gw = tok % grid_w

    c = tl.arange(0, BLOCK_C)[:, None]  # channel
    s = tl.arange(0, BLOCK_S)[None, :]  # pixel within the tubelet patch: (dt * PATCH + dy) * PATCH + dx
    dt = s // (PATCH * PATCH)
    dy = (s // PATCH) % PATCH
    dx = s % PATCH
    inside = (c < CHANNELS) & (s < n_pix)
    tile = inside
    if HAS_VALID:
        # (tl.where, not `&` with a 0-d bool: the interpreter would turn the mask into uint8)
        tile = tl.where(tl.load(valid_ptr + row) != 0, tile, False)

    v_off = (
        b * stride_vb
        + c * stride_vc
        + (gt * TUBELET + dt) * stride_vt
        + (gh * PATCH + dy) * stride_vh
        + (gw * PATCH + dx) * stride_vw
    )
    x = tl.load(video_ptr + v_off, mask=tile, other=0).to(COMPUTE)
    mean = tl.sum(x, axis=1) / n_pix
    xc = tl.where(tile, x - mean[:, None], 0.0)
    std = tl.sqrt(tl.sum(xc * xc, axis=1) / (n_pix - 1))  # unbiased
    target = xc / (std[:, None] + 1e-6)

    # The prediction row (pixel-major, channel innermost: value e = pixel * CHANNELS + channel)
    # is read, and its gradient written, in CHANNELS runs of n_pix consecutive values: tile
    # position (i, j) holds value flat = i * n_pix + j. Contiguous along the tile's fast axis,
    # hence 16-byte vector accesses; tl.gather moves the values between that order and the
    # [channel, pixel] one of the targets (exactly: no arithmetic on them).
    flat = c * n_pix + s
    pred_row = pred_ptr + b * stride_pb + k * stride_pk
    p_flat = tl.load(pred_row + flat * stride_pe, mask=tile, other=0.0).to(COMPUTE)
    e = s * CHANNELS + c  # the value at [channel, pixel] position (c, s): in p_flat at (e // n_pix, e % n_pix)
    p = _tile_gather(p_flat, tl.where(inside, (e // n_pix) * BLOCK_S + e % n_pix, 0), BLOCK_C, BLOCK_S)
    diff = tl.where(tile, p - target, 0.0)
    tl.store(partial_ptr + row, tl.sum(tl.sum(diff * diff, axis=1), axis=0))

    if WRITE_GRAD:
        scale = 2.0 / mean_count(count_ptr, count_total, n_pix * CHANNELS, HAS_VALID, COMPUTE)
        g = diff * scale
        # Back to the row's order: value flat is the one at [channel, pixel] (flat % CHANNELS, flat // CHANNELS).
        to_row = tl.where(inside, (flat % CHANNELS) * BLOCK_S + flat // CHANNELS, 0)
        g_flat = _tile_gather(g, to_row, BLOCK_C, BLOCK_S)
        # Padding tokens get explicit zeros: every element of the buffer is written.
        grad_row = grad_ptr + row.to(tl.int64) * (n_pix * CHANNELS)
        tl.store(grad_row + flat, g_flat.to(grad_ptr.dtype.element_ty), mask=inside)


@jit
def _tile_gather(values, index, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """``out[i, j] = values.flatten()[index[i, j]]`` for ``[BLOCK_C, BLOCK_S]`` tiles."""
    flat = tl.gather(tl.reshape(values, [BLOCK_C * BLOCK_S]), tl.reshape(index, [BLOCK_C * BLOCK_S]), 0)
    return tl.reshape(flat, [BLOCK_C, BLOCK_S])


def _pixel_mse_triton(
    pred: Tensor, video: Tensor, ids: Tensor, tubelet: int, patch: int, valid: Tensor | None, write_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Launch the fused kernels: ``(loss, grad_pred or None)``; grad is for ``grad_output = 1``."""
    b, k, width = pred.shape
    _, c, _, h, w = video.shape
    compute = compute_dtype(pred.dtype, video.dtype)
    n_rows = b * k
    ids = ids.reshape(-1).contiguous()
    valid_u8, count_ptr, count_total = valid_args(valid, n_rows, width)
    block_c = next_pow2(c)
    block_s = next_pow2(tubelet * patch * patch)
    partials = _launch.new_buffer((n_rows,), compute, pred.device)
    grad = _launch.new_buffer((b, k, width), pred.dtype, pred.device) if write_grad else None
    _pixel_mse_fwd_kernel[(n_rows,)](
        pred, video, ids,
        valid_u8 if valid_u8 is not None else ids,
        count_ptr if count_ptr is not None else ids,
        grad if grad is not None else pred,
        partials,
        k, h // patch, w // patch, count_total,
        pred.stride(0), pred.stride(1), pred.stride(2),
        video.stride(0), video.stride(1), video.stride(2), video.stride(3), video.stride(4),
        HAS_VALID=valid is not None, WRITE_GRAD=write_grad, COMPUTE=tl_dtype(compute), CHANNELS=c,
        TUBELET=tubelet, PATCH=patch, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=4 if block_c * block_s <= 2048 else 8,
    )  # fmt: skip
    return finish_mean(partials, count_ptr, count_total, width, compute), grad


# --------------------------------------------------------------------------------------
# Custom op: salt_fast::pixel_mse_loss(pred, video, ids, tubelet, patch, valid, write_grad) -> (loss, grad)
# --------------------------------------------------------------------------------------


def _pixel_mse_cost(
    pred: Tensor, video: Tensor, ids: Tensor, tubelet: int, patch: int, valid: Tensor | None, write_grad: bool
) -> tuple[int, int]:
    """``(flops, bytes)`` of the op on the GPU. One program per token reads its id, its patch of
    the video (``tubelet*patch*patch*C`` values, every token counted: an upper bound under
    ``valid``) and its prediction row, writes one partial and its gradient row; ``finish_mean``
    reads the ``B*K`` partials; ``valid_args`` counts the valid tokens. FLOPs: per value 8 (mean,
    centre, square, sum, normalize, difference, square, sum) and 1 more for the gradient, per
    channel of a token 4 (the statistics)."""
    b, k, _ = pred.shape
    channels = video.shape[1]
    return loss_cost(pred, video, ids, valid, write_grad, b * k, flops_per_value=8, flops_per_token=4 * channels)


define_loss(
    "pixel_mse_loss",
    "(Tensor pred, Tensor video, Tensor ids, int tubelet, int patch, Tensor? valid, bool write_grad) -> (Tensor, Tensor)",
    lambda *args, **kwargs: _pixel_mse_triton(*args, **kwargs),  # (looked up per call: tests wrap it)
    _pixel_mse_cost,
)


def pixel_mse_loss(
    pred: Tensor,
    video: Tensor,
    ids: Tensor,
    tubelet: int = 2,
    patch: int = 16,
    valid: Tensor | None = None,
    *,
    check_ids: bool = True,
) -> Tensor:
    """VideoMAE's normalized-pixel MSE at the masked tokens, without patchifying the video.

    Args:
        pred: ``[B, K, tubelet*patch*patch*C]`` decoder outputs for the tokens at ``ids``
            (1536 values for 2x16x16 RGB), laid out pixel-major with the channel innermost;
            fp32, bf16 or fp16 (fp64 computes in fp64). Any strides.
        video: ``[B, C, T, H, W]`` clip, any float dtype (or uint8 / another integer dtype),
            any strides; no grad. ``T``, ``H``, ``W`` must be divisible by ``tubelet``,
            ``patch``, ``patch``.
        ids: ``[B, K]`` integer flat token ids ``t * Hp * Wp + h * Wp + w`` on the
            ``(T/tubelet, H/patch, W/patch)`` grid, in ``[0, Tp*Hp*Wp)``; any value in
            padding slots.
        tubelet, patch: tubelet depth and patch size (2 and 16 in SALT / V-JEPA).
        valid: optional ``[B, K]`` bool, False for padding slots: left out of the mean (over
            valid tokens x values; 0 when none is valid), their ids and pixels are not read,
            their gradient is 0.
        check_ids: check that the ids of valid slots lie in ``[0, Tp*Hp*Wp)``, on the device
            without a host sync (``torch._assert_async``: ``RuntimeError`` on CPU, a device-side
            assert on CUDA). ``False`` skips it, for ids correct by construction; an
            out-of-range id then reads out of bounds on the Triton path. ``SALT_FAST_DEBUG=1``
            checks synchronously (``ValueError``) whatever this says.

    Returns:
        0-dim loss, fp32 (fp64 for fp64 inputs); the math is fp32 whatever the input dtypes.
        The gradient reaching ``pred`` has ``pred``'s dtype. Empty inputs (``B`` or ``K`` = 0)
        give 0 with a zero gradient, as when no token is valid.

    Raises:
        ValueError: on shapes or dtypes that do not fit (indivisible video, wrong ``pred``
            width, non-float ``pred``, non-integer ``ids`` ...).
    """
    tp, hp, wp = _check_pixel_args(pred, video, ids, tubelet, patch, valid)
    validate_ids("pixel_mse_loss", "ids", ids, tp * hp * wp, enabled=check_ids, valid=valid)
    tubelet, patch = int(tubelet), int(patch)
    tensors = (pred, video, ids) if valid is None else (pred, video, ids, valid)
    kernels = use_triton(*tensors) and pred.numel() > 0
    op = torch.ops.salt_fast.pixel_mse_loss
    return fused_loss(kernels, op, pixel_mse_loss_reference, pred, video, ids, tubelet, patch, valid)
