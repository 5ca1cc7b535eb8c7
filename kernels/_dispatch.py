"""Which implementation an op runs, and Triton as an optional import.

* ``SALT_FAST_KERNELS=auto`` (default): Triton kernels for CUDA tensors, the PyTorch
  reference otherwise (CPU tensors, or Triton not installed).
* ``SALT_FAST_KERNELS=reference``: always the reference.
* ``SALT_FAST_KERNELS=triton``: always the kernels; on CPU tensors they run in Triton's
  interpreter, which must be switched on (``TRITON_INTERPRET=1``) before the kernels are
  defined. On a machine without CUDA this module sets it when it is first imported with
  ``SALT_FAST_KERNELS=triton``, so that setting alone is enough.

Kernel modules write ``from __future__ import annotations`` (so ``BLOCK: tl.constexpr``
is never evaluated) and decorate with ``jit``, so they import on CPU-only installs where
Triton is absent (CPU torch wheels do not ship it).
"""

from __future__ import annotations

import os

import torch

CHOICES = ("auto", "triton", "reference")

if os.environ.get("SALT_FAST_KERNELS") == "triton" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: every op runs its reference
    triton = tl = None

# Triton decides at decoration time whether a kernel is interpreted.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def jit(fn):
    """``triton.jit`` when Triton is installed; without it the kernel is defined but never launched."""
    return fn if triton is None else triton.jit(fn)


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when an op on ``tensors`` should launch its Triton kernels (see the module docstring)."""
    choice = os.environ.get("SALT_FAST_KERNELS", "auto")
    if choice not in CHOICES:
        raise ValueError(f"SALT_FAST_KERNELS={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "auto":
        return triton is not None and on_cuda
    if triton is None:
        raise RuntimeError("SALT_FAST_KERNELS=triton, but Triton is not installed (pip install triton)")
    if not on_cuda and not INTERPRETED:
        raise RuntimeError(
            "SALT_FAST_KERNELS=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before salt_fast.kernels is first imported"
        )
    return True
