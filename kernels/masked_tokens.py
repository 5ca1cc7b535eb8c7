"""Masked token ops: gather the visible tokens by flat id, and assemble the predictor's input.

Two ops, each with a plain PyTorch reference and Triton kernels (forward and backward),
picked by ``use_triton`` (see ``_dispatch``: Triton for CUDA tensors, the reference
otherwise; ``SALT_FAST_KERNELS=auto|triton|reference`` overrides):

* ``gather_tokens(x, ids)``: ``out[b, k] = x[b, ids[b, k]]``.
* ``assemble_predictor_input(context, context_ids, target_ids, mask_token)``: the
  predictor's token sequence ``[context; mask_token repeated Kt times]`` and its ids
  ``[context_ids; target_ids]``, written by one kernel instead of expand + cat.

The Triton paths are the custom ops ``salt_fast::gather_tokens`` (backward:
``salt_fast::gather_tokens_backward``) and ``salt_fast::assemble_predictor_input`` (the tokens;
the mask token's gradient: ``salt_fast::mask_token_grad``); see ``_ops``.

Drop-in for V-JEPA-2-style code: its ``apply_masks(x, masks)`` with a single mask
``masks = [ids]`` is ``gather_tokens(x, ids)`` (for several masks it concatenates the
gathers along the batch: ``torch.cat([gather_tokens(x, m) for m in masks])``). Its
predictor's ``torch.cat([ctx, mask_token.repeat(B, Kt, 1)], dim=1)`` plus
``torch.cat([ctx_ids, tgt_ids], dim=1)`` is ``assemble_predictor_input``.

Contract on ids (see ``_checks``):

* ids must lie in ``[0, N)``: checked on the device without a host sync unless the caller
  passes ``check_ids=False``. Even then the kernels never touch memory outside ``x``: they
  read out-of-range ids as zero rows and drop their gradient.
* ids must be **unique within a row** for the Triton backward of ``gather_tokens``: it
  scatters each gradient row to its destination with a plain store (no atomics), so with
  duplicates one of the writers wins. The reference sums duplicates (``gather``'s
  backward), which is what a well-defined gradient means there. Not checked on the hot
  path (that would sync the device).

Set ``SALT_FAST_DEBUG=1`` to check both synchronously, on both paths (uniqueness when a
gradient to ``x`` will be computed).

Stands alone: imports nothing from salt_fast outside ``salt_fast.kernels``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _dispatch, _launch, _ops
from ._checks import check_int_ids, validate_ids
from ._dispatch import jit, tl, use_triton
from ._launch import cdiv, compute_dtype, next_pow2

__all__ = [
    "assemble_predictor_input",
    "assemble_predictor_input_reference",
    "gather_tokens",
    "gather_tokens_reference",
]


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def gather_tokens_reference(x: Tensor, ids: Tensor) -> Tensor:
    """Plain PyTorch ``gather_tokens`` (see there); its backward sums duplicate ids."""
    _check_gather_args(x, ids)
    return x.gather(1, ids.long().unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def assemble_predictor_input_reference(
    context: Tensor, context_ids: Tensor, target_ids: Tensor, mask_token: Tensor
) -> tuple[Tensor, Tensor]:
    """Plain PyTorch ``assemble_predictor_input`` (see there): expand + cat."""
    B, _, D = _check_assemble_args(context, context_ids, target_ids, mask_token)
    filler = mask_token.reshape(1, 1, D).expand(B, target_ids.shape[1], D)
    return torch.cat((context, filler), dim=1), torch.cat((context_ids, target_ids), dim=1)


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


def gather_tokens(x: Tensor, ids: Tensor, *, check_ids: bool = True) -> Tensor:
    """Rows of ``x`` at ``ids``: V-JEPA 2's ``apply_masks(x, [ids])`` for a single mask.

    Args:
        x: ``[B, N, D]`` tokens, any dtype (Triton path: fp16/bf16/fp32/fp64), any strides.
        ids: ``[B, K]`` integer token ids in ``[0, N)``, unique per row (required by the
            Triton backward; the reference sums duplicates). int64 normally; any int dtype.
        check_ids: check that ids lie in ``[0, N)``, on the device without a host sync
            (``torch._assert_async``: ``RuntimeError`` on CPU, a device-side assert on CUDA).
            ``False`` skips it, for ids correct by construction. ``SALT_FAST_DEBUG=1`` checks
            synchronously (``ValueError``) whatever this says, and also checks that ids are
            unique per row when a gradient to ``x`` will be computed.

    Returns:
        ``[B, K, D]`` contiguous, ``x``'s dtype, with ``out[b, k] = x[b, ids[b, k]]``.
        Differentiable in ``x``: ``grad_x`` is zero except at the ids' rows.
    """
    _check_gather_args(x, ids)
    backward = x.requires_grad and torch.is_grad_enabled()
    validate_ids("gather_tokens", "ids", ids, x.shape[1], enabled=check_ids, unique=backward)
    if not use_triton(x, ids):
        return gather_tokens_reference(x, ids)
    return torch.ops.salt_fast.gather_tokens(x, ids)


def assemble_predictor_input(
    context: Tensor, context_ids: Tensor, target_ids: Tensor, mask_token: Tensor, *, check_ids: bool = True
) -> tuple[Tensor, Tensor]:
    """The predictor's input sequence: context tokens, then the mask token at every target.

    Args:
        context: ``[B, Kc, D]`` embedded context tokens (any float dtype, any strides).
        context_ids: ``[B, Kc]`` integer flat ids of the context tokens.
        target_ids: ``[B, Kt]`` integer flat ids of the target (masked) tokens.
        mask_token: the learned mask token, ``D`` elements: shape ``[D]`` or ``[1, 1, D]``.
        check_ids: check that the ids are non-negative, on the device without a host sync
            (``torch._assert_async``). This op only concatenates the ids (it does not know
            the grid): their upper bound is checked by the ops that use them (e.g.
            ``rope3d_qkv_``). ``False`` skips it; ``SALT_FAST_DEBUG=1`` checks synchronously.

    Returns:
        ``(tokens, ids)``: ``tokens`` ``[B, Kc + Kt, D]`` contiguous, with
        ``tokens[:, :Kc] = context`` and ``tokens[:, Kc:] = mask_token``, in
        ``torch.promote_types(context.dtype, mask_token.dtype)`` (what ``torch.cat`` gives,
        with or without autocast); ``ids = cat(context_ids, target_ids)`` ``[B, Kc + Kt]``
        (no grad). Differentiable in ``context`` and ``mask_token``; the mask token's
        gradient is reduced over ``B`` and ``Kt`` in fp32 (fp64 for fp64 inputs) in a fixed
        order, so it is bitwise reproducible.
    """
    _check_assemble_args(context, context_ids, target_ids, mask_token)
    validate_ids("assemble_predictor_input", "context_ids", context_ids, None, enabled=check_ids)
    validate_ids("assemble_predictor_input", "target_ids", target_ids, None, enabled=check_ids)
    if not use_triton(context, context_ids, target_ids, mask_token):
        return assemble_predictor_input_reference(context, context_ids, target_ids, mask_token)
    tokens = torch.ops.salt_fast.assemble_predictor_input(context, mask_token, target_ids.shape[1])
    return tokens, torch.cat((context_ids, target_ids), dim=1)


# --------------------------------------------------------------------------------------
# Argument checks (shapes only: no device sync)
# --------------------------------------------------------------------------------------


def _check_gather_args(x: Tensor, ids: Tensor) -> None:
    if x.dim() != 3 or ids.dim() != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"expected x [B, N, D] and ids [B, K], got {tuple(x.shape)} and {tuple(ids.shape)}")
    check_int_ids("gather_tokens", "ids", ids)


def _check_assemble_args(context: Tensor, context_ids: Tensor, target_ids: Tensor, mask_token: Tensor) -> tuple[int, int, int]:
    if context.dim() != 3:
        raise ValueError(f"context must be [B, Kc, D], got {tuple(context.shape)}")
    B, Kc, D = context.shape
    if context_ids.shape != (B, Kc):
        raise ValueError(f"context_ids must be [B, Kc] = {(B, Kc)}, got {tuple(context_ids.shape)}")
    if target_ids.dim() != 2 or target_ids.shape[0] != B:
        raise ValueError(f"target_ids must be [B, Kt] with B = {B}, got {tuple(target_ids.shape)}")
    if mask_token.shape not in ((D,), (1, 1, D)):
        raise ValueError(f"mask_token must be [D] or [1, 1, D] with D = {D}, got {tuple(mask_token.shape)}")
    check_int_ids("assemble_predictor_input", "context_ids", context_ids)
    check_int_ids("assemble_predictor_input", "target_ids", target_ids)
    return B, Kc, D


# --------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------


def _interpreted(interpreted: bool | None) -> bool:
    """``interpreted``, or by default whether the kernels are (the costs ask for the GPU's choices)."""
    return _dispatch.INTERPRETED if interpreted is None else interpreted


def _block_d(D: int, interpreted: bool | None = None) -> int:
    """Columns per program: a power of two, at most 512, wasting little on the last block.

    e.g. 384 -> 128 (3 blocks), 768/1280/1664 -> 256, 1024/1408/1536 -> 512, 100 -> 128.
    """
    if _interpreted(interpreted):  # the interpreter pays per program: one column block
        return next_pow2(D)
    if D <= 128:
        return max(16, next_pow2(D))
    for block in (512, 256):
        if cdiv(D, block) * block - D <= D // 8:
            return block
    return 128


def _row_tile(rows: int, D: int, elem_size: int, interpreted: bool | None = None) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_D, num_warps)`` for a row-copy kernel over ``rows`` rows of ``D``."""
    block_d = _block_d(D, interpreted)
    if _interpreted(interpreted):
        block_r = min(next_pow2(rows), max(1, 2**16 // block_d))
        return block_r, block_d, 4
    # About 16 KB moved per program: enough bytes in flight per SM without spilling.
    block_r = min(next_pow2(rows), max(1, min(64, 16384 // (block_d * elem_size))))
    return block_r, block_d, 4 if block_r * block_d <= 4096 else 8


def _reduce_plan(rows: int, D: int, interpreted: bool | None = None) -> tuple[int, int, int, int]:
    """``(BLOCK_R, BLOCK_D, rows_per_program, num_warps)`` for the mask-token reduction.

    Depends only on the shape, so the summation order (and the result) is reproducible.
    """
    block_d = _block_d(D, interpreted)
    if _interpreted(interpreted):
        block_r = min(next_pow2(rows), max(1, 2**16 // block_d))
        return block_r, block_d, cdiv(rows, block_r) * block_r, 4
    block_r = max(1, min(32, 4096 // block_d, next_pow2(rows)))
    # Aim at ~512 programs in all (a few waves on an H100's 132 SMs), 256 rows at least each.
    chunks = max(1, 512 // cdiv(D, block_d))
    per_program = max(256, cdiv(rows, chunks))
    return block_r, block_d, cdiv(per_program, block_r) * block_r, 4


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------


@jit
def _copy_rows_kernel(
    src_ptr,
    dst_ptr,
    ids_ptr,
    K,
    N,
    D,
    k_blocks,
    src_stride_b,
    src_stride_r,
    src_stride_d,
    dst_stride_b,
    dst_stride_r,
    ids_stride_b,
    ids_stride_k,
    IDS_ON_SRC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Copy ``K`` rows per batch element; ``ids`` names the rows on one side.

    ``IDS_ON_SRC``: ``dst[b, k] = src[b, ids[b, k]]`` (gather, the forward);
    otherwise ``dst[b, ids[b, k]] = src[b, k]`` (scatter, the backward; ``dst`` must be
    zero-filled and ids unique per row). Grid: ``(B * k_blocks, cdiv(D, BLOCK_D))``;
    one program moves a ``[BLOCK_K, BLOCK_D]`` tile. The destination's last dim is
    contiguous; the source's stride is an argument (Triton specializes it when it is 1).
    """
    pid = tl.program_id(0).to(tl.int64)
    b = pid // k_blocks
    k = (pid % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    k_ok = k < K
    d_ok = d < D
    row = tl.load(ids_ptr + b * ids_stride_b + k * ids_stride_k, mask=k_ok, other=-1).to(tl.int64)
    # Out-of-range ids touch nothing: read as zero rows / gradient dropped.
    row_ok = k_ok & (row >= 0) & (row < N)
    if IDS_ON_SRC:
        src_row = row
        dst_row = k
        load_ok = row_ok
        store_ok = k_ok
    else:
        src_row = k
        dst_row = row
        load_ok = k_ok
        store_ok = row_ok
    src = src_ptr + b * src_stride_b + src_row[:, None] * src_stride_r + d[None, :] * src_stride_d
    tile = tl.load(src, mask=load_ok[:, None] & d_ok[None, :], other=0.0)
    dst = dst_ptr + b * dst_stride_b + dst_row[:, None] * dst_stride_r + d[None, :]
    tl.store(dst, tile, mask=store_ok[:, None] & d_ok[None, :])


@jit
def _assemble_kernel(
    ctx_ptr,
    tok_ptr,
    out_ptr,
    Kc,
    L,
    D,
    r_blocks,
    ctx_stride_b,
    ctx_stride_r,
    ctx_stride_d,
    tok_stride_d,
    out_stride_b,
    out_stride_r,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``out[b, r] = ctx[b, r]`` for ``r < Kc``, else ``tok`` (for ``Kc <= r < L``).

    Grid: ``(B * r_blocks, cdiv(D, BLOCK_D))``; one ``[BLOCK_R, BLOCK_D]`` tile each. Tiles
    entirely past ``Kc`` issue no context loads (the mask is all false). Values are cast
    to the output dtype (no arithmetic, so exact).
    """
    pid = tl.program_id(0).to(tl.int64)
    b = pid // r_blocks
    r = (pid % r_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    in_ctx = r < Kc
    ctx = tl.load(
        ctx_ptr + b * ctx_stride_b + r[:, None] * ctx_stride_r + d[None, :] * ctx_stride_d,
        mask=in_ctx[:, None] & d_ok[None, :],
        other=0.0,
    )
    tok = tl.load(tok_ptr + d * tok_stride_d, mask=d_ok, other=0.0)
    out_ty = out_ptr.dtype.element_ty
    tile = tl.where(in_ctx[:, None], ctx.to(out_ty), tok.to(out_ty)[None, :])
    out = out_ptr + b * out_stride_b + r[:, None] * out_stride_r + d[None, :]
    tl.store(out, tile, mask=(r < L)[:, None] & d_ok[None, :])


@jit
def _mask_token_grad_kernel(
    grad_ptr,
    partial_ptr,
    Kc,
    Kt,
    R,
    D,
    rows_per_program,
    grad_stride_b,
    grad_stride_r,
    grad_stride_d,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC_F64: tl.constexpr,
):
    """Per-program partial sums of the target rows of ``grad``: ``partial[p, d]``.

    The ``R = B * Kt`` target rows are numbered ``i = b * Kt + t`` (row ``Kc + t`` of
    batch element ``b``); program ``(p, j)`` sums rows ``[p * rows_per_program, (p + 1) *
    rows_per_program)`` over columns block ``j`` in fp32 (fp64 with ``ACC_F64``), in a
    fixed order, and writes its ``BLOCK_D`` totals to ``partial[p]``. Grid:
    ``(cdiv(R, rows_per_program), cdiv(D, BLOCK_D))``; ``rows_per_program`` is a
    multiple of ``BLOCK_R``. No atomics: the caller sums ``partial`` over ``p``.
    """
    p = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    if ACC_F64:
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    first = p * rows_per_program
    for start in range(0, rows_per_program, BLOCK_R):
        i = first + start + tl.arange(0, BLOCK_R)
        b = i // Kt
        t = i % Kt
        src = grad_ptr + b[:, None] * grad_stride_b + (Kc + t)[:, None] * grad_stride_r + d[None, :] * grad_stride_d
        tile = tl.load(src, mask=(i < R)[:, None] & d_ok[None, :], other=0.0)
        acc += tile.to(acc.dtype)
    tl.store(partial_ptr + p * D + d, tl.sum(acc, axis=0), mask=d_ok)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _launch_copy_rows(src: Tensor, dst: Tensor, ids: Tensor, ids_on_src: bool) -> None:
    """Gather (``ids_on_src``) ``src [B, N, D] -> dst [B, K, D]``, or scatter ``src [B, K, D] -> dst [B, N, D]``."""
    B, K = ids.shape
    D = src.shape[2]
    N = src.shape[1] if ids_on_src else dst.shape[1]
    if B == 0 or K == 0 or D == 0:
        return
    assert dst.stride(2) == 1 or D == 1
    block_k, block_d, warps = _row_tile(K, D, src.element_size())
    k_blocks = cdiv(K, block_k)
    grid = (B * k_blocks, cdiv(D, block_d))
    _copy_rows_kernel[grid](
        src, dst, ids, K, N, D, k_blocks,
        src.stride(0), src.stride(1), src.stride(2),
        dst.stride(0), dst.stride(1),
        ids.stride(0), ids.stride(1),
        IDS_ON_SRC=ids_on_src, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip


def _launch_assemble(context: Tensor, mask_token: Tensor, kt: int) -> Tensor:
    B, Kc, D = context.shape
    L = Kc + kt
    out = _launch.new_buffer((B, L, D), torch.promote_types(context.dtype, mask_token.dtype), context.device)
    if out.numel() == 0:
        return out
    token = mask_token.reshape(D)
    block_r, block_d, warps = _row_tile(L, D, out.element_size())
    r_blocks = cdiv(L, block_r)
    grid = (B * r_blocks, cdiv(D, block_d))
    _assemble_kernel[grid](
        context, token, out, Kc, L, D, r_blocks,
        context.stride(0), context.stride(1), context.stride(2), token.stride(0),
        out.stride(0), out.stride(1),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    return out


def _launch_mask_token_grad(grad: Tensor, kc: int, kt: int) -> Tensor:
    """``grad[:, kc:kc + kt].sum((0, 1))`` in fp32 (fp64 for fp64 grads), reproducibly: ``[D]``."""
    B, _, D = grad.shape
    acc_dtype = compute_dtype(grad.dtype)
    rows = B * kt
    if rows == 0 or D == 0:
        return torch.zeros(D, dtype=acc_dtype, device=grad.device)
    block_r, block_d, per_program, warps = _reduce_plan(rows, D)
    programs = cdiv(rows, per_program)
    partial = _launch.new_buffer((programs, D), acc_dtype, grad.device)
    grid = (programs, cdiv(D, block_d))
    _mask_token_grad_kernel[grid](
        grad, partial, kc, kt, rows, D, per_program,
        grad.stride(0), grad.stride(1), grad.stride(2),
        BLOCK_R=block_r, BLOCK_D=block_d, ACC_F64=acc_dtype == torch.float64, num_warps=warps,
    )  # fmt: skip
    return partial.sum(0)  # fixed shape, fixed order: deterministic


# --------------------------------------------------------------------------------------
# Custom ops (see _ops): implementation, fake implementation and cost of each, then autograd
# --------------------------------------------------------------------------------------


def _gather(x: Tensor, ids: Tensor) -> Tensor:
    """``salt_fast::gather_tokens``: the gather kernel into a new ``[B, K, D]`` buffer."""
    B, _, D = x.shape
    out = _launch.new_buffer((B, ids.shape[1], D), x.dtype, x.device)
    _launch_copy_rows(x, out, ids, ids_on_src=True)
    return out


def _gather_fake(x: Tensor, ids: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], ids.shape[1], x.shape[2]))


def _copy_rows_cost(moved: Tensor, ids: Tensor) -> int:
    """Bytes of one ``_copy_rows_kernel`` launch moving the ``[B, K, D]`` rows of ``moved``: each row
    read and written once, the ids read once per column block."""
    d = moved.shape[2]
    return 2 * _ops.nbytes(moved) + _ops.nbytes(ids) * cdiv(d, _block_d(d, interpreted=False))


def _gather_cost(x: Tensor, ids: Tensor) -> tuple[int, int]:
    """``(0, bytes)``: the ``B*K`` rows of ``x`` at ``ids`` read, the ``[B, K, D]`` output written."""
    return 0, _copy_rows_cost(_gather_fake(x, ids), ids)


def _gather_backward(grad_out: Tensor, ids: Tensor, n: int) -> Tensor:
    """``salt_fast::gather_tokens_backward``: zero-filled ``[B, n, D]``, then the scatter kernel
    writes each gradient row at its id (a plain store: ids unique per row, no atomics)."""
    B, _, D = grad_out.shape
    grad_x = torch.zeros((B, n, D), dtype=grad_out.dtype, device=grad_out.device)
    _launch_copy_rows(grad_out, grad_x, ids, ids_on_src=False)
    return grad_x


def _gather_backward_fake(grad_out: Tensor, ids: Tensor, n: int) -> Tensor:
    return grad_out.new_empty((grad_out.shape[0], n, grad_out.shape[2]))


def _gather_backward_cost(grad_out: Tensor, ids: Tensor, n: int) -> tuple[int, int]:
    """``(0, bytes)``: the ``[B, n, D]`` zero fill written, then the ``B*K`` rows scattered."""
    return 0, _ops.nbytes(_gather_backward_fake(grad_out, ids, n)) + _copy_rows_cost(grad_out, ids)


def _assemble(context: Tensor, mask_token: Tensor, kt: int) -> Tensor:
    """``salt_fast::assemble_predictor_input``: the fill kernel, ``[context; mask_token x kt]``."""
    return _launch_assemble(context, mask_token, kt)


def _assemble_fake(context: Tensor, mask_token: Tensor, kt: int) -> Tensor:
    B, Kc, D = context.shape
    return context.new_empty((B, Kc + kt, D), dtype=torch.promote_types(context.dtype, mask_token.dtype))


def _assemble_cost(context: Tensor, mask_token: Tensor, kt: int) -> tuple[int, int]:
    """``(0, bytes)``: the context read, the mask token read once per ``[BLOCK_R, D]`` row block
    of each clip, the ``[B, Kc + Kt, D]`` output written."""
    out = _assemble_fake(context, mask_token, kt)
    B, L, D = out.shape
    block_r = _row_tile(L, D, out.element_size(), interpreted=False)[0]
    token_reads = B * cdiv(L, block_r) * D * mask_token.element_size() if out.numel() else 0
    return 0, _ops.nbytes(context) + token_reads + _ops.nbytes(out)


def _mask_token_grad(grad: Tensor, kc: int, kt: int) -> Tensor:
    """``salt_fast::mask_token_grad``: ``grad[:, kc:kc + kt].sum((0, 1))``, reproducibly (see
    ``_launch_mask_token_grad``)."""
    return _launch_mask_token_grad(grad, kc, kt)


def _mask_token_grad_fake(grad: Tensor, kc: int, kt: int) -> Tensor:
    return grad.new_empty((grad.shape[2],), dtype=compute_dtype(grad.dtype))


def _mask_token_grad_cost(grad: Tensor, kc: int, kt: int) -> tuple[int, int]:
    """``(flops, bytes)``: the ``B*Kt`` target rows of ``grad`` read and summed into one partial row
    per program, then the partials summed (``partial.sum(0)``)."""
    B, _, D = grad.shape
    rows = B * kt
    size = compute_dtype(grad.dtype).itemsize
    if rows == 0 or D == 0:
        return 0, D * size  # a zero fill
    per_program = _reduce_plan(rows, D, interpreted=False)[2]
    partials = cdiv(rows, per_program) * D
    return rows * D + partials, rows * D * grad.element_size() + 2 * partials * size + D * size


_GATHER = _ops.define(
    "gather_tokens", "(Tensor x, Tensor ids) -> Tensor", _gather, fake=_gather_fake, cost=_gather_cost
)  # fmt: skip
_ops.define(
    "gather_tokens_backward", "(Tensor grad_out, Tensor ids, SymInt n) -> Tensor", _gather_backward,
    fake=_gather_backward_fake, cost=_gather_backward_cost,
)  # fmt: skip
_ASSEMBLE = _ops.define(
    "assemble_predictor_input", "(Tensor context, Tensor mask_token, SymInt kt) -> Tensor", _assemble,
    fake=_assemble_fake, cost=_assemble_cost,
)  # fmt: skip
_ops.define(
    "mask_token_grad", "(Tensor grad, SymInt kc, SymInt kt) -> Tensor", _mask_token_grad,
    fake=_mask_token_grad_fake, cost=_mask_token_grad_cost,
)  # fmt: skip


def _gather_setup(ctx, inputs, output) -> None:
    x, ids = inputs
    ctx.save_for_backward(ids)
    ctx.n = x.shape[1]


@once_differentiable
def _gather_grad(ctx, grad_out: Tensor) -> tuple[Tensor | None, None]:
    """Zero fill + scatter kernel (``salt_fast::gather_tokens_backward``)."""
    if not ctx.needs_input_grad[0]:
        return None, None
    (ids,) = ctx.saved_tensors
    return torch.ops.salt_fast.gather_tokens_backward(grad_out, ids, ctx.n), None


def _assemble_setup(ctx, inputs, output) -> None:
    context, mask_token, kt = inputs
    ctx.kc = context.shape[1]
    ctx.kt = kt
    ctx.context_dtype = context.dtype
    ctx.token_dtype = mask_token.dtype
    ctx.token_shape = mask_token.shape


@once_differentiable
def _assemble_grad(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
    """The context's gradient is a slice; the mask token's a reduction (``salt_fast::mask_token_grad``,
    partial sums: no atomics)."""
    grad_context = grad_token = None
    if ctx.needs_input_grad[0]:
        grad_context = grad[:, : ctx.kc].to(ctx.context_dtype)  # a view when the dtypes agree
    if ctx.needs_input_grad[1]:
        grad_token = torch.ops.salt_fast.mask_token_grad(grad, ctx.kc, ctx.kt)
        grad_token = grad_token.to(ctx.token_dtype).reshape(ctx.token_shape)
    return grad_context, grad_token, None


_GATHER.register_autograd(_gather_grad, setup_context=_gather_setup)
_ASSEMBLE.register_autograd(_assemble_grad, setup_context=_assemble_setup)
