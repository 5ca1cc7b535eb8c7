"""SALT's latent loss: L1 between predictions and layer-normed teacher latents at target ids.

``latent_l1_loss(pred, target, ids)`` is ``mean |pred - LayerNorm(target)[ids]|`` (LayerNorm
without affine, over the channel dim), the Stage-2 objective of SALT and the loss of V-JEPA 2.

Two implementations behind one function (``SALT_FAST_KERNELS=auto|triton|reference``, see
``_dispatch``):

* **Triton** (CUDA tensors under ``auto``): the custom op ``salt_fast::latent_l1_loss`` (see
  ``_ops``; its fake implementation runs on meta tensors), one fused pass. Each program takes a
  block of ``(b, k)`` rows, loads the teacher row ``target[b, ids[b, k]]`` (only the K gathered rows
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

from . import _dispatch, _launch
from ._checks import check_float, check_int_ids, validate_ids
from ._dispatch import jit, tl, use_triton
from ._fused_loss import define_loss, finish_mean, fused_loss, loss_cost, masked_mean, mean_count, valid_args
from ._launch import cdiv, compute_dtype, next_pow2, tl_dtype

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
    check_int_ids("latent_l1_loss", "ids", ids)
    check_float("latent_l1_loss", "pred", pred)
    check_float("latent_l1_loss", "target", target)
    if valid is not None and tuple(valid.shape) != (b, k):
        raise ValueError(f"valid {tuple(valid.shape)} does not match ids: expected [{b}, {k}]")


def latent_l1_loss_reference(
    pred: Tensor, target: Tensor, ids: Tensor, eps: float = 1e-5, valid: Tensor | None = None
) -> Tensor:
    """Plain PyTorch ``latent_l1_loss`` (same arguments); differentiable in ``pred`` and ``target``."""
    _check_latent_args(pred, target, ids, valid)
    compute = compute_dtype(pred.dtype, target.dtype)
    if valid is not None:
        ids = ids.where(valid, 0)  # padding slots may hold any id (the kernel never reads them)
    # Plain torch.gather (not the dispatching gather_tokens): the reference must stay pure PyTorch,
    # and its backward sums duplicate ids (padding slots all point at row 0 here).
    rows = target.gather(1, ids.long().unsqueeze(-1).expand(-1, -1, target.shape[-1])).to(compute)
    # normalizing only the K gathered rows is the same math as normalizing all N, then gathering
    normed = F.layer_norm(rows, rows.shape[-1:], eps=eps)
    return masked_mean((pred.to(compute) - normed).abs(), valid)


# --------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------


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
        inv = 1.0 / mean_count(count_ptr, count_total, n_cols, HAS_VALID, COMPUTE)
        g = tl.where(diff > 0, inv, tl.where(diff < 0, -inv, 0.0))
        g_off = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        # Padding rows get explicit zeros: every element of the buffer is written.
        tl.store(grad_ptr + g_off, g.to(grad_ptr.dtype.element_ty), mask=row_in[:, None] & col_in[None, :])


def _latent_config(d: int, interpreted: bool | None = None) -> tuple[int, int, int]:
    """``(BLOCK_D, ROWS, num_warps)``: a whole row per tile, a few rows per program.

    On the GPU a tile of ~4096 values (e.g. 4 rows of D=1024, 2 of D=1408); in the
    interpreter (``interpreted``, default: whether the kernels are), where each program costs
    ~1 ms, far bigger tiles."""
    interpreted = _dispatch.INTERPRETED if interpreted is None else interpreted
    block_d = next_pow2(d)
    budget = 1 << 16 if interpreted else 4096
    rows = max(1, min(256 if interpreted else 16, budget // block_d))
    num_warps = 4 if rows * block_d <= 2048 else 8
    return block_d, rows, num_warps


def _latent_l1_triton(
    pred: Tensor, target: Tensor, ids: Tensor, eps: float, valid: Tensor | None, write_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Launch the fused kernels: ``(loss, grad_pred or None)``; grad is for ``grad_output = 1``."""
    b, k, d = pred.shape
    compute = compute_dtype(pred.dtype, target.dtype)
    n_rows = b * k
    ids = ids.reshape(-1).contiguous()  # [B*K], tiny
    valid_u8, count_ptr, count_total = valid_args(valid, n_rows, d)
    block_d, rows, num_warps = _latent_config(d)
    n_programs = cdiv(n_rows, rows)
    partials = _launch.new_buffer((n_programs,), compute, pred.device)
    grad = _launch.new_buffer((b, k, d), pred.dtype, pred.device) if write_grad else None
    _latent_l1_fwd_kernel[(n_programs,)](
        pred, target, ids,
        valid_u8 if valid_u8 is not None else ids,
        count_ptr if count_ptr is not None else ids,
        grad if grad is not None else pred,
        partials,
        n_rows, k, d, count_total, float(eps),
        pred.stride(0), pred.stride(1), pred.stride(2),
        target.stride(0), target.stride(1), target.stride(2),
        HAS_VALID=valid is not None, WRITE_GRAD=write_grad, COMPUTE=tl_dtype(compute),
        ROWS=rows, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return finish_mean(partials, count_ptr, count_total, d, compute), grad


# --------------------------------------------------------------------------------------
# Custom op: salt_fast::latent_l1_loss(pred, target, ids, eps, valid, write_grad) -> (loss, grad)
# --------------------------------------------------------------------------------------


def _latent_l1_cost(
    pred: Tensor, target: Tensor, ids: Tensor, eps: float, valid: Tensor | None, write_grad: bool
) -> tuple[int, int]:
    """``(flops, bytes)`` of the op on the GPU. The fused kernel reads ``B*K`` ids, the ``B*K`` rows
    of ``pred`` and the ``B*K`` rows of ``target`` at those ids (all rows counted, valid or not: an
    upper bound under ``valid``), writes one partial per program and the ``[B, K, D]`` gradient;
    ``finish_mean`` reads the partials; ``valid_args`` counts the valid tokens. FLOPs: per value
    8 (mean, centre, square, sum, scale, difference, abs, sum) and 1 more for the gradient, per row 5
    (the statistics)."""
    b, k, d = pred.shape
    programs = cdiv(b * k, _latent_config(d, interpreted=False)[1])
    return loss_cost(pred, target, ids, valid, write_grad, programs, flops_per_value=8, flops_per_token=5)


define_loss(
    "latent_l1_loss",
    "(Tensor pred, Tensor target, Tensor ids, float eps, Tensor? valid, bool write_grad) -> (Tensor, Tensor)",
    lambda *args, **kwargs: _latent_l1_triton(*args, **kwargs),  # (looked up per call: tests wrap it)
    _latent_l1_cost,
)


def latent_l1_loss(
    pred: Tensor,
    target: Tensor,
    ids: Tensor,
    eps: float = 1e-5,
    valid: Tensor | None = None,
    *,
    check_ids: bool = True,
) -> Tensor:
    """``mean |pred - LayerNorm(target)[ids]|`` over tokens and channels.

    Args:
        pred: ``[B, K, D]`` predictor outputs for the target tokens; fp32, bf16 or fp16
            (fp64 also works, computed in fp64). Any strides.
        target: ``[B, N, D]`` raw teacher output over all tokens (before any LayerNorm),
            any float dtype and strides. Only its ``B * K`` rows at ``ids`` are read.
        ids: ``[B, K]`` integer (int64 or int32) flat ids of the target tokens, in ``[0, N)``
            except in padding slots, where any value is fine. Duplicates are allowed.
        eps: LayerNorm epsilon (no affine); 1e-5 as V-JEPA 2's ``F.layer_norm`` default.
        valid: optional ``[B, K]`` bool, False for padding slots: they are left out of the
            mean (the mean is over valid tokens x D; with no valid token the loss is 0), their
            ids and target rows are not read and their gradient is 0.
        check_ids: check that the ids of valid slots lie in ``[0, N)``, on the device without a
            host sync (``torch._assert_async``: ``RuntimeError`` on CPU, a device-side assert on
            CUDA). ``False`` skips it, for ids correct by construction; an out-of-range id then
            reads out of bounds on the Triton path. ``SALT_FAST_DEBUG=1`` checks synchronously
            (``ValueError``) whatever this says.

    Returns:
        0-dim loss, fp32 (fp64 for fp64 inputs); all math is fp32 whatever the input dtypes.
        The gradient reaching ``pred`` has ``pred``'s dtype. Empty inputs (``B``, ``K`` or
        ``D`` = 0) give 0 with a zero gradient, as when no token is valid.

    See the module docstring for the kernel design and the V-JEPA 2 drop-in.
    """
    _check_latent_args(pred, target, ids, valid)
    validate_ids("latent_l1_loss", "ids", ids, target.shape[1], enabled=check_ids, valid=valid)
    tensors = (pred, target, ids) if valid is None else (pred, target, ids, valid)
    kernels = use_triton(*tensors) and pred.numel() > 0 and target.shape[1] > 0
    op = torch.ops.salt_fast.latent_l1_loss
    return fused_loss(kernels, op, latent_l1_loss_reference, pred, target, ids, float(eps), valid)
