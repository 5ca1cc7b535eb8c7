"""Argument checks shared by the public ops.

Dtype checks are plain Python (free). The range check of token ids runs on the ids' device
with ``torch._assert_async``: no host sync (on CUDA a failure is a device-side assert that
surfaces at a later sync; on CPU it raises ``RuntimeError`` at once). Ops expose it as
``check_ids=True`` (the default) so that callers whose ids are correct by construction can skip
even those few tiny kernels.

``SALT_FAST_DEBUG=1`` (read per call) makes the id checks synchronous and thorough: the range
check runs even with ``check_ids=False`` and raises ``ValueError`` with the actual range, and
ops whose backward is a plain scatter also check that ids are unique within each row.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor


def debug() -> bool:
    """``SALT_FAST_DEBUG=1``: synchronous, thorough argument checks."""
    return os.environ.get("SALT_FAST_DEBUG") == "1"


def check_int_ids(op: str, name: str, ids: Tensor) -> None:
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{op}: {name} must be an integer tensor, got {ids.dtype}")


def check_float(op: str, name: str, t: Tensor) -> None:
    if not t.dtype.is_floating_point:
        raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def validate_ids(
    op: str,
    name: str,
    ids: Tensor,
    n: int | None,
    *,
    enabled: bool = True,
    valid: Tensor | None = None,
    unique: bool = False,
) -> None:
    """Token ids in ``[0, n)`` (``[0, inf)`` when ``n`` is None), only where ``valid`` is True.

    ``enabled`` (the op's ``check_ids``): the range check, asserted on the device without a
    host sync. Under ``SALT_FAST_DEBUG=1`` the range is checked synchronously whatever
    ``enabled`` says, and with ``unique`` (ops whose backward relies on it) ids must also be
    unique within each row of ``ids [B, K]``. Raises ``ValueError`` (debug) or
    ``RuntimeError`` (``torch._assert_async`` on CPU) naming ``op``, ``name`` and the range.
    """
    in_debug = debug()
    if not (enabled or in_debug) or ids.numel() == 0:
        return
    span = f"[0, {n})" if n is not None else "[0, inf)"
    if valid is not None:  # padding slots may hold anything: never read
        ids = ids.where(valid if valid.dtype == torch.bool else valid != 0, 0)
    lo, hi = ids.aminmax()
    if in_debug:  # synchronizes: debug only
        lo, hi = int(lo), int(hi)
        if lo < 0 or (n is not None and hi >= n):
            raise ValueError(f"{op}: {name} must lie in {span}, got values in [{lo}, {hi}]")
        if unique and ids.shape[-1] > 1:
            ordered = ids.sort(dim=-1).values
            if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
                raise ValueError(f"{op}: {name} must be unique within each row (its backward writes each row once)")
        return
    ok = lo >= 0 if n is None else (lo >= 0) & (hi < n)
    torch._assert_async(ok, f"{op}: {name} must lie in {span} (an id is out of range)")
