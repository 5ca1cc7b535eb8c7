"""Masked token gather: pick the visible tokens of a sequence by flat id.

Plain PyTorch reference; stands alone (imports nothing from salt_fast).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["gather_tokens"]


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Rows of ``x`` at ``ids``: V-JEPA 2's ``apply_masks(x, [ids])`` for a single mask.

    Args:
        x: ``[B, N, D]`` tokens, any dtype.
        ids: ``[B, K]`` integer token ids in ``[0, N)``; unique per row for a well-defined
            gradient (the backward sums duplicates).

    Returns:
        ``[B, K, D]`` with ``out[b, k] = x[b, ids[b, k]]``.
    """
    if x.dim() != 3 or ids.dim() != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"expected x [B, N, D] and ids [B, K], got {tuple(x.shape)} and {tuple(ids.shape)}")
    return x.gather(1, ids.long().unsqueeze(-1).expand(-1, -1, x.shape[-1]))
