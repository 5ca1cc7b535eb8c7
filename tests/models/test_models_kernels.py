"""The models with every Triton kernel switched on (interpreter on CPU) match the reference path."""

import pytest
import torch

from salt_fast.masking import MaskSampler
from salt_fast.models import build_encoder, build_predictor
from salt_fast.objectives import salt_loss


def salt_step(student, predictor, teacher, video, masks, grid):
    with torch.no_grad():
        target = teacher(video)
    loss, _ = salt_loss(student, predictor, video, target, masks, grid)
    params = [*student.parameters(), *predictor.parameters()]
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize(("truncation", "rope_mode"), [("min", "standard"), ("pad", "vjepa2")])
def test_salt_step_kernels_match_reference(monkeypatch, truncation, rope_mode):
    teacher = build_encoder("vit_tiny", depth=1, embed_dim=64, num_heads=2, mlp_hidden=64, rope_mode=rope_mode).eval()
    student = build_encoder("vit_tiny", depth=2, embed_dim=64, num_heads=2, mlp_hidden=64, rope_mode=rope_mode)
    predictor = build_predictor(64, 64, depth=1, embed_dim=48, num_heads=2, mlp_hidden=48, rope_mode=rope_mode)
    video = torch.randn(2, 3, 8, 48, 32)  # grid (4, 3, 2): 24 tokens
    grid = student.token_grid(video.shape)
    masks = MaskSampler(grid, seed=int(torch.randint(1000, ())), truncation=truncation)(2)

    monkeypatch.setenv("SALT_FAST_KERNELS", "reference")
    ref_loss, ref_grads = salt_step(student, predictor, teacher, video, masks, grid)
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    loss, grads = salt_step(student, predictor, teacher, video, masks, grid)

    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
