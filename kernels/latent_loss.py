"""SALT's latent loss: L1 between predictions and layer-normed teacher latents at target ids.

``latent_l1_loss(pred, target, ids)`` is ``mean |pred - LayerNorm(target)[ids]|`` (LayerNorm
without affine, over the channel dim), the Stage-2 objective of SALT and the loss of V-JEPA 2.

Two implementations behind one function (``SALT_FAST_KERNELS=auto|triton|reference``, see
``_dispatch``):

* **Triton** (CUDA tensors under ``auto``): one fused pass. Each program takes a block of
  ``(b, k)`` rows, loads the teacher row ``target[b, ids[b, k]]`` (only the K gathered rows
  are ever read), upcasts to fp32, normalizes it in registers, reads ``pred[b, k]``, adds
  ``|pred - t|`` into one fp32 partial per program and, in the same pass, writes
  ``grad_pred = sign(pred - t) / count`` (``sign(0) = 0``, as the gradient of ``abs``).
  A second one-program kernel sums the partials in a fixed order and divides by the
  count, so the loss is bitwise reproducible (no float atomics). The backward only scales
  the stored gradient by ``grad_output``. Nothing of size ``[B, N, D]`` is allocated, and
  no normalized copy of the target exists at any point; the only ``[B, K, D]`` buffer is
  the gradient itself (not even that when ``pred`` needs no grad). The valid-token count
  is reduced on the device: no host sync.
* **Reference** (everything else): plain PyTorch, ``gather`` then ``F.layer_norm``.

Drop-in for V-JEPA-2-style code, whose loss is (per mask, with its default ``loss_exp = 1``)::

    h = F.layer_norm(h, (h.size(-1),))          # teacher output [B, N, D], no grad
    h = apply_masks(h, masks_pred)              # gather the target ids
    loss = torch.mean(torch.abs(z - h))         # z: predictor output [B, K, D]

Replace the three lines with ``loss = latent_l1_loss(z, h_raw, ids)`` where ``h_raw`` is the
teacher output *before* ``layer_norm`` and ``ids`` the ``[B, K]`` mask indices (eps is
1e-5 as ``F.layer_norm``'s default). Average over mask configurations as before. The value
matches; the gradient reaching ``z`` matches; no gradient flows to ``h_raw`` on the
Triton path (it is the frozen teacher's output: when it does require grad, the reference
runs instead).

This module stands alone (it imports nothing from salt_fast outside ``salt_fast.kernels``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._dispatch import INTERPRETED, jit, tl, triton, use_triton

__all__ = ["latent_l1_loss", "latent_l1_loss_reference"]


# --------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------


def _check_latent_args(pred: Tensor, target: Tensor, ids: Tensor, valid: Tensor | None) -> None:
    if pred.dim() != 3 or target.dim() != 3 or ids.dim() != 2:
        raise ValueError(
            f"expected pred [B, K, D], target [B, N, D] and ids [B, K], got {tuple(pred.shape)}, "
            f"{tuple(target.shape)} and {tuple(ids.shape)}"
        )
    b, k, d = pred.shape
    if target.shape[0] != b or target.shape[2] != d:
        raise ValueError(f"target {tuple(target.shape)} does not match pred {tuple(pred.shape)}: expected [{b}, N, {d}]")
    if tuple(ids.shape) != (b, k):
        raise ValueError(f"ids {tuple(ids.shape)} does not match pred {tuple(pred.shape)}: expected [{b}, {k}]")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor, got {ids.dtype}")
    if not pred.dtype.is_floating_point or not target.dtype.is_floating_point:
        raise ValueError(f"pred and target must be floating point, got {pred.dtype} and {target.dtype}")
    if valid is not None and tuple(valid.shape) != (b, k):
        raise ValueError(f"valid {tuple(valid.shape)} does not match ids: expected [{b}, {k}]")


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """fp32 math for 16/32-bit inputs; fp64 when any input is fp64 (gradcheck)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def latent_l1_loss_reference(
    pred: Tensor, target: Tensor, ids: Tensor, eps: float = 1e-5, valid: Tensor | None = None
) -> Tensor:
    """Plain PyTorch ``latent_l1_loss`` (same arguments); differentiable in ``pred`` and ``target``."""
    _check_latent_args(pred, target, ids, valid)
    compute = _compute_dtype(pred.dtype, target.dtype)
    if valid is not None:
        ids = ids.where(valid, 0)  # padding slots may hold any id (the kernel never reads them)
    # Plain torch.gather (not the dispatching gather_tokens): the reference must stay pure PyTorch,
    # and its backward sums duplicate ids (padding slots all point at row 0 here).
    rows = target.gather(1, ids.long().unsqueeze(-1).expand(-1, -1, target.shape[-1])).to(compute)
    # normalizing only the K gathered rows is the same math as normalizing all N, then gathering
    normed = F.layer_norm(rows, rows.shape[-1:], eps=eps)
    return _masked_mean((pred.to(compute) - normed).abs(), valid)


def _masked_mean(err: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``err [B, K, C]`` over the valid tokens (all when ``valid`` is None) and channels."""
    if valid is None:
        return err.mean()
    weight = valid.to(err.dtype).unsqueeze(-1)
    return (err * weight).sum() / (weight.sum() * err.shape[-1]).clamp_min(1)


# --------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------


@jit
def _mean_count(count_ptr, count_total, per_token, HAS_VALID: tl.constexpr, COMPUTE: tl.constexpr):
    """Denominator of the mean: valid tokens x values per token (read on device), at least 1."""
    if HAS_VALID:
        n = tl.load(count_ptr).to(COMPUTE) * per_token
        n = tl.maximum(n, 1.0)
    else:
        n = tl.full([], count_total, COMPUTE)
    return n


@jit
def _latent_l1_fwd_kernel(
    pred_ptr, target_ptr, ids_ptr, valid_ptr, count_ptr, grad_ptr, partial_ptr,
    n_rows, n_tokens, n_cols, count_total, eps,
    stride_pb, stride_pk, stride_pd,
    stride_tb, stride_tn, stride_td,
    HAS_VALID: tl.constexpr, WRITE_GRAD: tl.constexpr, COMPUTE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)  # flat (b, k) row index
    row_in = rows < n_rows
    cols = tl.arange(0, BLOCK_D)
    col_in = cols < n_cols

    row_ok = row_in
    if HAS_VALID:
        row_ok = row_ok & (tl.load(valid_ptr + rows, mask=row_in, other=0) != 0)
    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    b = (rows // n_tokens).to(tl.int64)
    k = (rows % n_tokens).to(tl.int64)
    tile = row_ok[:, None] & col_in[None, :]

    # Teacher rows at ids, normalized in registers (biased variance, as F.layer_norm).
    t_off = b[:, None] * stride_tb + ids[:, None] * stride_tn + cols[None, :] * stride_td
    x = tl.load(target_ptr + t_off, mask=tile, other=0.0).to(COMPUTE)
    mean = tl.sum(x, axis=1) / n_cols
    xc = tl.where(tile, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    normed = xc * rstd[:, None]

    p_off = b[:, None] * stride_pb + k[:, None] * stride_pk + cols[None, :] * stride_pd
    p = tl.load(pred_ptr + p_off, mask=tile, other=0.0).to(COMPUTE)
    diff = tl.where(tile, p - normed, 0.0)
    tl.store(partial_ptr + pid, tl.sum(tl.sum(tl.abs(diff), axis=1), axis=0))

    if WRITE_GRAD:
        inv = 1.0 / _mean_count(count_ptr, count_total, n_cols, HAS_VALID, COMPUTE)
        g = tl.where(diff > 0, inv, tl.where(diff < 0, -inv, 0.0))
        g_off = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        # Padding rows get explicit zeros: every element of the buffer is written.
        tl.store(grad_ptr + g_off, g.to(grad_ptr.dtype.element_ty), mask=row_in[:, None] & col_in[None, :])


@jit
def _finish_mean_kernel(
    partial_ptr, out_ptr, count_ptr, n_partials, count_total, per_token,
    HAS_VALID: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One program: fixed-order sum of the partials, divided by the count."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=COMPUTE)
    for start in range(0, n_partials, BLOCK):
        acc += tl.load(partial_ptr + start + offs, mask=start + offs < n_partials, other=0.0).to(COMPUTE)
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr, total / _mean_count(count_ptr, count_total, per_token, HAS_VALID, COMPUTE))


def _new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialized output buffer; every element is written by a kernel (tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _count_args(valid: Tensor | None, n_tokens: int, per_token: int) -> tuple[Tensor | None, float]:
    """``(count_ptr, count_total)``: a device-side valid count when masked, else the host total."""
    if valid is None:
        return None, float(max(n_tokens * per_token, 1))
    return valid.sum(), 0.0  # int64 on the device; no .item(): no host sync


def _valid_bytes(valid: Tensor | None) -> Tensor | None:
    if valid is None:
        return None
    valid = valid.reshape(-1)
    if valid.dtype == torch.bool:
        return valid.contiguous().view(torch.uint8)
    return (valid != 0).view(torch.uint8)


def _finish_mean(partials: Tensor, count_ptr: Tensor | None, count_total: float, per_token: int, compute: torch.dtype) -> Tensor:
    """Deterministic mean of per-program partials (shared with ``pixel_loss``)."""
    out = _new_buffer((), compute, partials.device)
    n = partials.numel()
    block = min(1024, max(16, triton.next_power_of_2(n)))
    _finish_mean_kernel[(1,)](
        partials, out, count_ptr if count_ptr is not None else partials, n, count_total, per_token,
        HAS_VALID=count_ptr is not None, COMPUTE=_tl_dtype(compute), BLOCK=block, num_warps=4,
    )  # fmt: skip
    return out


def _latent_config(d: int) -> tuple[int, int, int]:
    """``(BLOCK_D, ROWS, num_warps)``: a whole row per tile, a few rows per program.

    On the GPU a tile of ~4096 values (e.g. 4 rows of D=1024, 2 of D=1408); in the
    interpreter, where each program costs ~1 ms, far bigger tiles."""
    block_d = triton.next_power_of_2(d)
    budget = 1 << 16 if INTERPRETED else 4096
    rows = max(1, min(256 if INTERPRETED else 16, budget // block_d))
    num_warps = 4 if rows * block_d <= 2048 else 8
    return block_d, rows, num_warps


def _latent_l1_triton(
    pred: Tensor, target: Tensor, ids: Tensor, eps: float, valid: Tensor | None, write_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Launch the fused kernels: ``(loss, grad_pred or None)``; grad is for ``grad_output = 1``."""
    b, k, d = pred.shape
    compute = _compute_dtype(pred.dtype, target.dtype)
    n_rows = b * k
    ids = ids.reshape(-1).contiguous()  # [B*K], tiny
    valid_u8 = _valid_bytes(valid)
    count_ptr, count_total = _count_args(valid, n_rows, d)
    block_d, rows, num_warps = _latent_config(d)
    n_programs = triton.cdiv(n_rows, rows)
    partials = _new_buffer((n_programs,), compute, pred.device)
    grad = _new_buffer((b, k, d), pred.dtype, pred.device) if write_grad else None
    _latent_l1_fwd_kernel[(n_programs,)](
        pred, target, ids,
        valid_u8 if valid_u8 is not None else ids,
        count_ptr if count_ptr is not None else ids,
        grad if grad is not None else pred,
        partials,
        n_rows, k, d, count_total, float(eps),
        pred.stride(0), pred.stride(1), pred.stride(2),
        target.stride(0), target.stride(1), target.stride(2),
        HAS_VALID=valid is not None, WRITE_GRAD=write_grad, COMPUTE=_tl_dtype(compute),
        ROWS=rows, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return _finish_mean(partials, count_ptr, count_total, d, compute), grad


class _LossWithStoredGrad(torch.autograd.Function):
    """A fused loss whose forward kernel also wrote ``d loss / d pred``; backward only scales it.

    ``apply(launch, pred, *args)`` with ``launch(pred, *args, write_grad=True) -> (loss, grad)``.
    """

    @staticmethod
    def forward(ctx, launch, pred, *args):
        loss, grad = launch(pred, *args, write_grad=True)
        ctx.save_for_backward(grad)
        ctx.n_args = len(args)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        # Out of place (not Liger's in-place mul_) so that a retained graph can run backward twice.
        return None, grad * grad_output, *([None] * ctx.n_args)


def latent_l1_loss(pred: Tensor, target: Tensor, ids: Tensor, eps: float = 1e-5, valid: Tensor | None = None) -> Tensor:
    """``mean |pred - LayerNorm(target)[ids]|`` over tokens and channels.

    Args:
        pred: ``[B, K, D]`` predictor outputs for the target tokens; fp32, bf16 or fp16
            (fp64 also works, computed in fp64). Any strides.
        target: ``[B, N, D]`` raw teacher output over all tokens (before any LayerNorm),
            any float dtype and strides. Only its ``B * K`` rows at ``ids`` are read.
        ids: ``[B, K]`` integer (int64 or int32) flat ids of the target tokens, in ``[0, N)``
            (not range-checked on the Triton path) except in padding slots, where any value
            is fine. Duplicates are allowed.
        eps: LayerNorm epsilon (no affine); 1e-5 as V-JEPA 2's ``F.layer_norm`` default.
        valid: optional ``[B, K]`` bool, False for padding slots: they are left out of the
            mean (the mean is over valid tokens x D; with no valid token the loss is 0), their
            ids and target rows are not read and their gradient is 0.

    Returns:
        0-dim loss, fp32 (fp64 for fp64 inputs); all math is fp32 whatever the input dtypes.
        The gradient reaching ``pred`` has ``pred``'s dtype.

    See the module docstring for the kernel design and the V-JEPA 2 drop-in.
    """
    _check_latent_args(pred, target, ids, valid)
    tensors = (pred, target, ids) if valid is None else (pred, target, ids, valid)
    if not use_triton(*tensors) or pred.numel() == 0 or target.shape[1] == 0:
        return latent_l1_loss_reference(pred, target, ids, eps, valid)
    grad_enabled = torch.is_grad_enabled()
    if grad_enabled and target.requires_grad:
        return latent_l1_loss_reference(pred, target, ids, eps, valid)  # the kernel differentiates pred only
    if grad_enabled and pred.requires_grad:
        return _LossWithStoredGrad.apply(_latent_l1_triton, pred, target, ids, eps, valid)
    return _latent_l1_triton(pred, target, ids, eps, valid, write_grad=False)[0]
