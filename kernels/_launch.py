"""Launch helpers shared by the kernel wrappers: sizes, buffers, dtypes. Needs no Triton."""

from __future__ import annotations

import torch
from torch import Tensor

from ._dispatch import tl


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialized buffer for kernel outputs; every element is written by a kernel.

    Wrappers call it as ``_launch.new_buffer`` so that tests can poison every kernel buffer here.
    """
    return torch.empty(shape, dtype=dtype, device=device)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """fp32 math for 16/32-bit (and integer) inputs; fp64 when any input is fp64 (gradcheck)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def tl_dtype(dtype: torch.dtype):
    """Triton dtype of a ``compute_dtype``."""
    return tl.float64 if dtype == torch.float64 else tl.float32
