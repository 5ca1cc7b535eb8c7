"""Exact FLOPs of one training step of this implementation, and MFU.

Counted analytically from the models' shapes and the step's real token counts: every
matmul (qkv, attention projection, MLP, patch embedding, predictor in/out projections) and
attention's two sequence-length-squared products (QK^T and AV, ``4 n^2 D`` per layer), at
2 FLOPs per multiply-add. LayerNorm, softmax, GELU, RoPE and the losses are left out, as
``torch.utils.flop_counter`` and MFU conventions do. Training costs 3x the forward of what
is trained (forward + backward, no recomputation counted; the patch embedding 2x, as the
clip needs no gradient); the frozen teacher costs its forward only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPUSpec:
    """A GPU's datasheet ceilings: what MFU is measured against and what the step model uses."""

    name: str  # a substring of torch.cuda.get_device_name()
    bf16_dense: float  # tensor-core bf16 FLOP/s without sparsity
    hbm_bandwidth: float  # bytes/s
    source: str


# Dense bf16 peaks and memory bandwidth from NVIDIA's datasheets (the "with sparsity" figures halved
# where only those are printed). Matched in order, so "H100 PCIe" precedes "H100".
GPUS: dict[str, GPUSpec] = {
    "a100": GPUSpec("A100", 312e12, 2.039e12, "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM"),
    "h100_pcie": GPUSpec("H100 PCIe", 756e12, 2.0e12, "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe"),
    "h100": GPUSpec("H100", 989e12, 3.35e12, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM"),
    "h200": GPUSpec("H200", 989e12, 4.8e12, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM"),
    "b200": GPUSpec("B200", 2.25e15, 8.0e12, "NVIDIA HGX B200 datasheet, per GPU (BF16 4.5 PFLOPS sparse)"),
    "l40s": GPUSpec("L40S", 362e12, 0.864e12, "NVIDIA L40S datasheet"),
    "a10g": GPUSpec("A10G", 125e12, 0.6e12, "NVIDIA A10G (AWS G5) specifications"),
}


def blocks_forward(cfg, n: int) -> int:
    """One sequence of ``n`` tokens through ``cfg.depth`` blocks of width ``cfg.embed_dim``."""
    d, hidden = cfg.embed_dim, cfg.mlp_hidden
    matmuls = 2 * n * (3 * d * d + d * d + 2 * d * hidden)
    attention = 4 * n * n * d
    return cfg.depth * (matmuls + attention)


def patch_embed_forward(encoder, n_all: int) -> int:
    """The Conv3d patch embedding over all ``n_all`` tokens of a clip."""
    cfg = encoder.cfg
    return 2 * n_all * cfg.in_chans * cfg.tubelet_size * cfg.patch_size**2 * cfg.embed_dim


def encoder_forward(encoder, n_tokens: int, n_all: int) -> int:
    """Encoder on ``n_tokens`` of a clip's ``n_all`` tokens (the patch embedding sees them all)."""
    return patch_embed_forward(encoder, n_all) + blocks_forward(encoder.cfg, n_tokens)


def predictor_forward(predictor, n_context: int, n_target: int) -> int:
    """Predictor / pixel decoder: embed the context, run the blocks on context + targets,
    project the targets."""
    cfg = predictor.cfg
    return (
        2 * n_context * predictor.in_dim * cfg.embed_dim
        + blocks_forward(cfg, n_context + n_target)
        + 2 * n_target * cfg.embed_dim * predictor.out_dim
    )


def step_flops(encoder, head, masks: Sequence, n_all: int, teacher=None) -> int:
    """FLOPs of one training step on one process.

    Args:
        encoder, head: the trained encoder and its predictor / pixel decoder.
        masks: the step's ``MaskBatch`` es (their id tensors give batch size and token counts;
            padding slots count, since they are computed).
        n_all: tokens per clip (``T*H*W``).
        teacher: the frozen teacher (salt / vjepa), run forward on all tokens.
    """
    total = 0
    for m in masks:
        batch, n_context = m.context.shape
        n_target = m.target.shape[1]
        # The clip needs no gradient, so the patch embedding's backward is its weight grad only.
        trained = 3 * (blocks_forward(encoder.cfg, n_context) + predictor_forward(head, n_context, n_target))
        total += batch * (trained + 2 * patch_embed_forward(encoder, n_all))
    if teacher is not None and masks:
        total += masks[0].context.shape[0] * encoder_forward(teacher, n_all, n_all)
    return total


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None when unknown (e.g. CPUs)."""
    if device.type != "cuda":
        return None
    spec = gpu_spec(torch.cuda.get_device_name(device))
    return spec.bf16_dense if spec else None


def gpu_spec(device_name: str) -> GPUSpec | None:
    """The datasheet entry whose name appears in ``device_name`` (e.g. "NVIDIA H100 80GB HBM3")."""
    return next((spec for spec in GPUS.values() if spec.name in device_name), None)


# ---------------------------------------------------------------------------------------------
# The paper's 6ND accounting (Appendix F): the rough estimate its Table 10 and Table 16 report.


def six_nd(
    n_encoder: float,
    n_predictor: float,
    tokens: int,
    samples: float,
    n_teacher: float | None = None,
    context_fraction: float = 0.1,
    num_masks: int = 2,
) -> dict[str, float]:
    """Training FLOPs by 6ND for one stage (each stage's own rule: ``salt_fast.stages``).

    Per sample: the encoder sees ``num_masks * context_fraction * tokens`` tokens (D_e), the
    predictor / decoder ``num_masks * tokens`` (D_p) and a forward-only teacher of
    ``n_teacher`` parameters (None: no teacher) ``tokens`` (D_t, forward only: 2ND). ``N``
    includes the patch embedding.

    Returns ``{"D_e", "D_p", "D_t", "flops"}`` totals over ``samples`` (steps x batch).
    """
    d_e = num_masks * context_fraction * tokens * samples
    d_p = num_masks * tokens * samples
    flops = 6 * n_encoder * d_e + 6 * n_predictor * d_p
    d_t = 0.0
    if n_teacher is not None:
        d_t = tokens * samples
        flops += 2 * n_teacher * d_t
    return {"D_e": d_e, "D_p": d_p, "D_t": d_t, "flops": flops}
