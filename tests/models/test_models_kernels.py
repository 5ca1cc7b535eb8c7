"""The models with every Triton kernel switched on (interpreter on CPU) match the reference path,
and a whole training step runs on the meta device with the Triton path (the custom ops' fakes)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from salt_fast.config import load_config
from salt_fast.kernels import OP_COSTS
from salt_fast.masking import MaskSampler
from salt_fast.models import build_encoder, build_predictor
from salt_fast.objectives import salt_loss
from salt_fast.runtime import Runtime, build_run, masks_to, train_step
from support import tiny


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


class SaltFastOps(TorchDispatchMode):
    """Records every salt_fast custom op a step dispatches, with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "salt_fast":
            self.calls.append((str(func._overloadpacket), args, kwargs))
        return func(*args, **kwargs)


@pytest.mark.parametrize("stage", ["salt", "pixel", "vjepa"])
def test_training_step_runs_on_meta_with_the_triton_path(tmp_path, monkeypatch, stage):
    """A whole train_step traces on the meta device with SALT_FAST_KERNELS=triton: every kernel op is
    its custom op's fake implementation (no launch), backward included, and declares its cost."""
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    cfg = load_config(None, tiny(tmp_path, tmp_path, stage, **{"runtime.kernels": "triton"}))
    meta = torch.device("meta")
    with torch.device(meta):
        run = build_run(cfg, Runtime(0, 1, meta, bf16=False), load_teacher=False)
    run.optimizer.step = lambda: None  # AdamW's update has no meta implementation (and launches no kernel of ours)
    clips = torch.empty(2, 3, 4, 32, 32, device=meta)
    masks = masks_to(MaskSampler(run.grid, seed=0, truncation="pad").sample(2, 0), meta)
    with SaltFastOps() as recorded:
        result = train_step(run, clips, masks, 0)
    assert result.loss.is_meta and all(p.grad is not None for p in run.learner.parameters() if p.requires_grad)
    loss_op = "salt_fast.pixel_mse_loss" if stage == "pixel" else "salt_fast.latent_l1_loss"
    seen = {name for name, _, _ in recorded.calls}
    ops = ("gather_tokens", "gather_tokens_backward", "assemble_predictor_input", "mask_token_grad", "rope3d_qkv_", "rope3d")
    assert seen == {loss_op, *(f"salt_fast.{op}" for op in ops)}
    for name, args, kwargs in recorded.calls:
        flops, moved = OP_COSTS[name](*args, **kwargs)
        assert isinstance(flops, int) and isinstance(moved, int) and flops >= 0 and moved > 0, name
