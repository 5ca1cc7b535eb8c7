"""The machinery of the fused losses (``latent_loss``, ``pixel_loss``): a deterministic mean.

A loss kernel writes one partial sum per program (and, in the same pass, ``d loss / d pred``);
``finish_mean`` sums the partials in a fixed order in one program and divides by the count
(valid tokens x values per token, reduced on the device: no host sync), so the loss is
bitwise reproducible (no float atomics). ``LossWithStoredGrad`` is the autograd Function whose
backward only scales the stored gradient. ``masked_mean`` is the references' same mean.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _launch
from ._dispatch import jit, tl
from ._launch import next_pow2, tl_dtype


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


class LossWithStoredGrad(torch.autograd.Function):
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


def fused_loss(kernels: bool, launch, reference, pred: Tensor, source: Tensor, *args) -> Tensor:
    """Run a fused loss: ``launch(pred, source, *args, write_grad=...) -> (loss, grad)`` when
    ``kernels`` (the op's ``use_triton``) and the kernel can differentiate it, else
    ``reference(pred, source, *args)``. The kernels differentiate ``pred`` only: a ``source``
    (target latents, video) that requires grad takes the reference."""
    grad_enabled = torch.is_grad_enabled()
    if not kernels or (grad_enabled and source.requires_grad):
        return reference(pred, source, *args)
    if grad_enabled and pred.requires_grad:
        return LossWithStoredGrad.apply(launch, pred, source, *args)
    return launch(pred, source, *args, write_grad=False)[0]
