"""Drop-in replacements for the V-JEPA 2 training pieces that salt_fast has kernels for.

Each function keeps the calling convention and the exact semantics of the V-JEPA 2 code it
replaces (facebookresearch/vjepa2), and runs on salt_fast's ops, so it picks the Triton
kernels for CUDA tensors and the plain PyTorch references elsewhere (``SALT_FAST_KERNELS``,
see ``_dispatch``):

* ``apply_masks(x, masks, concat=True)`` = ``src/masks/utils.py:apply_masks``: one token gather
  per mask, concatenated along the batch dim. Built on ``gather_tokens``, whose Triton backward
  writes each gradient row once (no atomics, no ``[B, N, D]`` zero-fill plus scatter-add).
* ``rotate_qk(q, k, masks, grid, mode)`` = what ``src/models/utils/modules.py:RoPEAttention``
  does to q and k before attention (``rotate_queries_or_keys`` on the t, h and w chunks of
  every head, the leftover channels unchanged), with ``mode="vjepa2"``, the released
  convention (its tiled frequency vector), or ``mode="standard"``, the true rotation (the
  ``repeat_interleave`` fix that its code comments describe). ``rotate_qkv_`` does the same in
  place on a packed ``[B, N, 3, heads, head_dim]`` projection, one kernel launch for q and k.
* ``jepa_latent_loss(preds, target, masks, loss_exp)`` = the loss of ``app/vjepa/train.py``:
  LayerNorm (no affine, eps 1e-5) of the teacher output over channels, gathered at each mask,
  ``mean(|z - h| ** loss_exp) / loss_exp`` per mask, averaged over the masks. With
  ``loss_exp = 1`` (V-JEPA 2's setting) every mask runs the fused ``latent_l1_loss`` kernel,
  which never builds the normalized ``[B, N, D]`` target nor the gathered ``[B, K, D]`` one.

Swapping them in (V-JEPA-2-style training code), after importing them from ``salt_fast.kernels``::

    x = apply_masks(x, masks)                               # unchanged call
    q, k = rotate_qk(q, k, masks, (T, H, W), mode="vjepa2")  # replaces the per-axis rotations
    loss = jepa_latent_loss(z, h, masks_pred)               # h: teacher output *before* layer_norm

Stands alone: imports nothing from salt_fast outside ``salt_fast.kernels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_float, check_int_ids
from ._fused_loss import masked_mean
from ._launch import compute_dtype
from .latent_loss import latent_l1_loss
from .masked_tokens import gather_tokens
from .rope3d import MODES, apply_rope3d, rope3d_qkv_

__all__ = ["apply_masks", "jepa_latent_loss", "rotate_qk", "rotate_qkv_"]

Grid = tuple[int, int, int]
Masks = Tensor | Sequence[Tensor]


def _as_mask_list(masks: Masks, op: str) -> list[Tensor]:
    """A single ``[B, K]`` id tensor or a sequence of them -> a non-empty list, checked."""
    listed = [masks] if isinstance(masks, Tensor) else list(masks)
    if not listed:
        raise ValueError(f"{op}: expected at least one mask, got an empty sequence")
    for i, m in enumerate(listed):
        if not isinstance(m, Tensor):
            raise TypeError(f"{op}: masks[{i}] must be a tensor of token ids, got {type(m).__name__}")
        check_int_ids(op, f"masks[{i}]", m)
        if m.dim() != 2:
            raise ValueError(f"{op}: masks[{i}] must be an integer tensor [B, K] of token ids, got {tuple(m.shape)}")
    return listed


def apply_masks(x: Tensor, masks: Masks, concat: bool = True, *, check_ids: bool = True) -> Tensor | list[Tensor]:
    """Keep the tokens of ``x`` named by each mask; V-JEPA 2's ``apply_masks``.

    Args:
        x: ``[B, N, D]`` tokens, any dtype and strides.
        masks: a list of ``[B, K_i]`` integer tensors of token ids in ``[0, N)`` (what V-JEPA 2's
            collator yields: sorted and unique per row), or one such tensor (= a list of one).
            Ids must be unique within a row for the Triton backward (it writes each gradient row
            once, without atomics); the reference path sums duplicates.
        concat: as in V-JEPA 2: True concatenates the gathers along the batch dim, False
            returns them as a list.
        check_ids: check that ids lie in ``[0, N)`` without a host sync (``gather_tokens``);
            ``False`` skips it. ``SALT_FAST_DEBUG=1`` also checks uniqueness (when ``x``
            needs a gradient), synchronously.

    Returns:
        ``[len(masks) * B, K, D]`` (mask ``i`` in rows ``i*B .. (i+1)*B - 1``; all masks must
        have the same ``K``) when ``concat``, else a list of ``[B, K_i, D]``; ``x``'s dtype,
        contiguous. Differentiable in ``x``.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, N, D], got shape {tuple(x.shape)}")
    masks = _as_mask_list(masks, "apply_masks")
    for i, m in enumerate(masks):
        if m.shape[0] != x.shape[0]:
            raise ValueError(f"masks[{i}] {tuple(m.shape)} does not match x {tuple(x.shape)}: expected [{x.shape[0]}, K]")
    parts = [gather_tokens(x, m, check_ids=check_ids) for m in masks]
    if not concat:
        return parts
    if len(parts) == 1:
        return parts[0]
    lengths = sorted({p.shape[1] for p in parts})
    if len(lengths) > 1:
        raise ValueError(f"concat=True needs masks of one length K, got K = {lengths}; use concat=False")
    return torch.cat(parts, dim=0)


def _position_ids(masks: Masks | None, op: str) -> Tensor | None:
    """V-JEPA 2's position convention: masks of a concatenated batch are concatenated too."""
    if masks is None:
        return None
    listed = _as_mask_list(masks, op)
    return listed[0] if len(listed) == 1 else torch.cat(listed, dim=0)


def rotate_qk(
    q: Tensor, k: Tensor, masks: Masks | None, grid: Grid, mode: str = "vjepa2", *, check_ids: bool = True
) -> tuple[Tensor, Tensor]:
    """3D RoPE on queries and keys, as V-JEPA 2's ``RoPEAttention`` applies it.

    Per head, channels ``[0, d)``, ``[d, 2d)`` and ``[2d, 3d)`` (``d = 2 * ((head_dim // 3) // 2)``)
    rotate by the token's frame, row and column index; channels ``[3d, head_dim)`` pass
    through. Values are never rotated.

    Args:
        q, k: ``[B, heads, N, head_dim]`` (``qkv.permute(2, 0, 3, 1, 4)`` slices), any float
            dtype; the math runs in fp32 (fp64 for fp64) and is stored in the input dtype.
        masks: the token ids of the ``N`` tokens: ``[B, N]``, or the list of masks that
            ``apply_masks`` concatenated along the batch (then ``B = len(masks) * B_clip``, as
            V-JEPA 2's encoder does with ``torch.cat(masks, dim=0)``), or None for the full
            grid in order (``N = T * H * W``). Flat ids are ``t * H * W + h * W + w``.
        grid: ``(T, H, W)`` token grid (frames / tubelet, height / patch, width / patch).
            V-JEPA 2's predictor decodes ids with its square training grid
            ``(., crop // patch, crop // patch)``: pass that grid to match it.
        mode: ``"vjepa2"`` (default; the released convention: channel ``c`` of a chunk turns by
            ``omega_(c mod d/2)``, needed for V-JEPA 2 weights) or ``"standard"`` (pair ``j``
            turns by ``omega_j``: a true rotation).
        check_ids: check that the ids lie in ``[0, T*H*W)`` without a host sync
            (``apply_rope3d``); ``False`` skips it.

    Returns:
        ``(q_rotated, k_rotated)``, new tensors of the input shapes and dtypes. Differentiable;
        the backward is the transpose of the map.

    V-JEPA 2 computes its angles in ``q``'s dtype (bf16 under autocast); here they are always
    fp32, so bf16 results can differ from V-JEPA 2's by its angle rounding.
    """
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")
    if mode not in MODES:
        raise ValueError(f"unknown RoPE mode {mode!r}; expected one of {MODES}")
    ids = _position_ids(masks, "rotate_qk")
    # q and k share the ids: check them once
    return apply_rope3d(q, ids, grid, mode, check_ids=check_ids), apply_rope3d(k, ids, grid, mode, check_ids=False)


def rotate_qkv_(qkv: Tensor, masks: Masks | None, grid: Grid, mode: str = "vjepa2", *, check_ids: bool = True) -> Tensor:
    """``rotate_qk`` in place on a packed projection: one launch rotates q and k, v is untouched.

    Args:
        qkv: ``[B, N, 3, heads, head_dim]`` = ``self.qkv(x).unflatten(-1, (3, heads, -1))``,
            last dim contiguous (a non-leaf: the op is recorded by autograd as in-place).
        masks, grid, mode, check_ids: as ``rotate_qk``.

    Returns:
        ``qkv`` itself; ``q, k, v = qkv.permute(2, 0, 3, 1, 4)`` are then V-JEPA 2's rotated q
        and k and its v, each ``[B, heads, N, head_dim]``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown RoPE mode {mode!r}; expected one of {MODES}")
    return rope3d_qkv_(qkv, _position_ids(masks, "rotate_qkv_"), grid, mode, check_ids=check_ids)


def jepa_latent_loss(
    preds: Tensor | Sequence[Tensor],
    target: Tensor,
    masks: Masks,
    loss_exp: float = 1.0,
    eps: float = 1e-5,
    *,
    check_ids: bool = True,
) -> Tensor:
    """V-JEPA 2's prediction loss for one clip batch and its list of masks.

    ``mean_i [ mean(|preds[i] - LayerNorm(target)[masks[i]]| ** loss_exp) / loss_exp ]``, the
    LayerNorm without affine over the channel dim; means are over tokens and channels, then
    over the masks (every mask weighs the same, whatever its ``K``).

    Args:
        preds: one ``[B, K_i, D]`` prediction per mask (the predictor's outputs), or a single
            tensor with a single mask. fp32, bf16 or fp16 (fp64 too).
        target: ``[B, N, D]`` teacher output over all tokens, *before* V-JEPA 2's
            ``F.layer_norm``; any float dtype. With ``loss_exp == 1`` and CUDA tensors only the
            gathered rows are read and normalized in registers.
        masks: the target ids, a list of ``[B, K_i]`` (or one tensor), in ``[0, N)``.
        loss_exp: V-JEPA 2's ``loss_exp`` (> 0): 1 is the L1 loss of its configs and runs the
            fused ``latent_l1_loss`` kernel; other values run a plain PyTorch path that
            normalizes the gathered rows only.
        eps: LayerNorm epsilon; 1e-5 is ``F.layer_norm``'s default, which V-JEPA 2 uses.
        check_ids: check that the ids lie in ``[0, N)`` without a host sync
            (``latent_l1_loss`` / ``gather_tokens``); ``False`` skips it.

    Returns:
        0-dim fp32 loss (fp64 for fp64 inputs); all math is fp32, as V-JEPA 2's under bf16
        autocast (its ``layer_norm`` runs in fp32 there). Differentiable in ``preds``; in
        ``target`` too when it requires grad (V-JEPA 2's target has none: it runs under no_grad).
        A mask with no token (``K = 0``, or ``B = 0``) contributes 0, with a zero gradient.

    Several clip-length groups (V-JEPA 2's outer list): call once per group; V-JEPA 2 averages
    over every (group, mask) pair, which is the mean of these per-group losses when the
    groups have the same number of masks.
    """
    pred_list = [preds] if isinstance(preds, Tensor) else list(preds)
    mask_list = _as_mask_list(masks, "jepa_latent_loss")
    if len(pred_list) != len(mask_list):
        raise ValueError(f"got {len(pred_list)} predictions for {len(mask_list)} masks: expected one per mask")
    if not loss_exp > 0:
        raise ValueError(f"loss_exp must be > 0, got {loss_exp}")
    if target.dim() != 3:
        raise ValueError(f"target must be [B, N, D], got shape {tuple(target.shape)}")
    terms = []
    for pred, ids in zip(pred_list, mask_list):
        if loss_exp == 1:
            terms.append(latent_l1_loss(pred, target, ids, eps=eps, check_ids=check_ids))
            continue
        if pred.dim() != 3 or tuple(pred.shape[:2]) != tuple(ids.shape) or pred.shape[2] != target.shape[2]:
            raise ValueError(
                f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and ids {tuple(ids.shape)} disagree: "
                "expected [B, K, D], [B, N, D] and [B, K]"
            )
        check_float("jepa_latent_loss", "preds", pred)
        check_float("jepa_latent_loss", "target", target)
        compute = compute_dtype(pred.dtype, target.dtype)
        # LayerNorm is per row: gather first, normalize K rows
        rows = gather_tokens(target, ids, check_ids=check_ids).to(compute)
        normed = F.layer_norm(rows, rows.shape[-1:], eps=eps)
        terms.append(masked_mean((pred.to(compute) - normed).abs().pow(loss_exp), None) / loss_exp)
    return torch.stack(terms).mean()
