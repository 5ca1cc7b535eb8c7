"""The machinery of the fused losses (``latent_loss``, ``pixel_loss``): a deterministic mean.

A loss kernel writes one partial sum per program (and, in the same pass, ``d loss / d pred``);
``finish_mean`` sums the partials in a fixed order in one program and divides by the count
(valid tokens x values per token, reduced on the device: no host sync), so the loss is
bitwise reproducible (no float atomics). ``define_loss`` registers a loss's Triton path as a custom
op returning ``(loss, grad)``, whose backward only scales the stored gradient; ``fused_loss``
chooses between it and the reference. ``masked_mean`` is the references' same mean.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _launch, _ops
from ._dispatch import jit, tl
from ._launch import compute_dtype, next_pow2, tl_dtype


def masked_mean(err: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``err [B, K, C]`` over the valid tokens (all when ``valid`` is None) and channels.

    0 when there is nothing to average (no valid token, or an empty ``err``), with a zero gradient.
    """
    if valid is None:
        return err.mean() if err.numel() else err.sum()
    weight = valid.to(err.dtype).unsqueeze(-1)
    return (err * weight).sum() / (weight.sum() * err.shape[-1]).clamp_min(1)


@jit
def mean_count(count_ptr, count_total, per_token, HAS_VALID: tl.constexpr, COMPUTE: tl.constexpr):
    """Denominator of the mean: valid tokens x values per token (read on device), at least 1."""
    if HAS_VALID:
        n = tl.load(count_ptr).to(COMPUTE) * per_token
        n = tl.maximum(n, 1.0)
    else:
        n = tl.full([], count_total, COMPUTE)
    return n


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
    tl.store(out_ptr, total / mean_count(count_ptr, count_total, per_token, HAS_VALID, COMPUTE))


def valid_args(valid: Tensor | None, n_tokens: int, per_token: int) -> tuple[Tensor | None, Tensor | None, float]:
    """``(valid_u8, count_ptr, count_total)`` for the kernels: ``valid`` flattened to uint8 and
    its device-side count when masked (no ``.item()``: no host sync), else ``None``, ``None``
    and the host total ``n_tokens * per_token``."""
    if valid is None:
        return None, None, float(max(n_tokens * per_token, 1))
    flat = valid.reshape(-1)
    valid_u8 = flat.contiguous().view(torch.uint8) if flat.dtype == torch.bool else (flat != 0).view(torch.uint8)
    return valid_u8, valid.sum(), 0.0


def finish_mean(partials: Tensor, count_ptr: Tensor | None, count_total: float, per_token: int, compute: torch.dtype) -> Tensor:
    """Deterministic mean of per-program partials (``valid_args`` gives the count arguments)."""
    out = _launch.new_buffer((), compute, partials.device)
    n = partials.numel()
    block = min(1024, max(16, next_pow2(n)))
    _finish_mean_kernel[(1,)](
        partials, out, count_ptr if count_ptr is not None else partials, n, count_total, per_token,
        HAS_VALID=count_ptr is not None, COMPUTE=tl_dtype(compute), BLOCK=block, num_warps=4,
    )  # fmt: skip
    return out


def loss_cost(
    pred: Tensor, source: Tensor, ids: Tensor, valid: Tensor | None, write_grad: bool, n_partials: int,
    flops_per_value: int, flops_per_token: int,
) -> tuple[int, int]:  # fmt: skip
    """``(flops, bytes)`` of a fused loss op on ``pred [B, K, width]``: its kernel reads the ``B*K``
    ids, the prediction rows and as many values of ``source`` (every token counted: an upper bound
    under ``valid``), writes ``n_partials`` partials and the gradient (``write_grad``); the flat copy
    of non-contiguous ids, ``valid_args`` (the count of valid tokens, a uint8 copy of a non-bool mask,
    one byte read per token) and ``finish_mean`` (the partials and the count read, the loss written)
    add theirs. FLOPs: ``flops_per_value`` (+1 for the gradient) per value, ``flops_per_token`` per
    token, then the partials summed and divided."""
    n = pred.shape[0] * pred.shape[1]
    values = n * pred.shape[2]
    size = compute_dtype(pred.dtype, source.dtype).itemsize
    moved = values * (pred.element_size() + source.element_size()) + _ops.nbytes(ids)
    moved += n_partials * size + (_ops.nbytes(pred) if write_grad else 0)
    moved += 0 if ids.is_contiguous() else 2 * _ops.nbytes(ids)
    if valid is not None:
        moved += _ops.nbytes(valid) + 8 + n  # the count, the kernel's reads
        moved += 0 if valid.dtype == torch.bool else _ops.nbytes(valid) + n  # the uint8 copy
        moved += 8  # finish_mean reads the count
    moved += (n_partials + 1) * size  # finish_mean
    flops = values * (flops_per_value + int(write_grad)) + flops_per_token * n + n_partials + 1
    return flops, moved


def _stored_grad_outputs(launch):
    """The op's implementation: ``launch(...) -> (loss, grad or None)`` as ``(loss, grad)``, with an
    empty gradient (no allocation of consequence) when it wrote none."""

    def impl(pred, source, *args):
        *args, write_grad = args
        loss, grad = launch(pred, source, *args, write_grad=write_grad)
        return loss, grad if grad is not None else pred.new_empty(0)

    return impl


def _fake_loss(pred: Tensor, source: Tensor, *args) -> tuple[Tensor, Tensor]:
    write_grad = args[-1]
    loss = pred.new_empty((), dtype=compute_dtype(pred.dtype, source.dtype))
    return loss, pred.new_empty(pred.shape if write_grad else (0,))


def _save_grad(ctx, inputs, output) -> None:
    grad = output[1]
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)
    ctx.n_inputs = len(inputs)
    ctx.pred_shape = inputs[0].shape


@once_differentiable
def _scale_grad(ctx, grad_output, _grad_of_grad):
    (grad,) = ctx.saved_tensors
    if grad.shape != ctx.pred_shape:
        raise RuntimeError("this fused loss was called with write_grad=False: it stored no gradient to backpropagate")
    # Out of place (not Liger's in-place mul_) so that a retained graph can run backward twice.
    return grad * grad_output, *([None] * (ctx.n_inputs - 1))


def define_loss(name: str, schema: str, launch, cost: _ops.Cost):
    """Register a fused loss's Triton path as the custom op ``salt_fast::<name>``.

    ``launch(pred, source, *args, write_grad=...) -> (loss, grad or None)`` (look it up at call time,
    e.g. ``lambda *a, **kw: _my_triton(*a, **kw)``, so that tests can wrap it); ``schema``'s
    arguments are ``(pred, source, *args, bool write_grad)`` and it returns ``(Tensor, Tensor)``: the
    loss and ``d loss / d pred`` for ``grad_output = 1`` (empty unless ``write_grad``). The op's
    backward scales that gradient by ``grad_output``; ``source`` (and the rest) get none.
    """
    op = _ops.define(name, schema, _stored_grad_outputs(launch), fake=_fake_loss, cost=cost)
    op.register_autograd(_scale_grad, setup_context=_save_grad)
    return op


def fused_loss(kernels: bool, op, reference, pred: Tensor, source: Tensor, *args) -> Tensor:
    """Run a fused loss: the custom op ``op(pred, source, *args, write_grad) -> (loss, grad)`` (see
    ``define_loss``) when ``kernels`` (the op's ``use_triton``) and the kernel can differentiate it,
    else ``reference(pred, source, *args)``. The kernels differentiate ``pred`` only: a ``source``
    (target latents, video) that requires grad takes the reference."""
    grad_enabled = torch.is_grad_enabled()
    if not kernels or (grad_enabled and source.requires_grad):
        return reference(pred, source, *args)
    return op(pred, source, *args, grad_enabled and pred.requires_grad)[0]
