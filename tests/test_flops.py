"""The analytic FLOPs model agrees with torch's FlopCounterMode on our real models."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from salt_fast import flops
from salt_fast.masking import MaskSampler
from salt_fast.models import build_encoder, build_pixel_decoder, build_predictor
from salt_fast.objectives import pixel_loss, salt_loss


def counted(fn):
    # The math backend decomposes attention into bmm calls, which FlopCounterMode counts
    # (it has no formula for the CPU flash kernel).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture
def setup():
    encoder = build_encoder("vit_tiny", depth=2, embed_dim=64, num_heads=2, mlp_hidden=128)
    video = torch.randn(2, 3, 8, 64, 48)
    grid = encoder.token_grid(video.shape)
    masks = MaskSampler(grid, seed=int(torch.randint(1000, ())), truncation="pad").sample(2, 0)
    return encoder, video, grid, masks, grid[0] * grid[1] * grid[2]


def test_forward_counts_match(setup):
    encoder, video, grid, masks, n_all = setup
    m = masks[0]
    head = build_predictor(64, 96, depth=2, embed_dim=48, num_heads=2, mlp_hidden=96)
    expected = flops.encoder_forward(encoder, m.context.shape[1], n_all)
    assert counted(lambda: encoder(video, m.context)) == pytest.approx(2 * expected, rel=1e-9)
    context = torch.randn(2, m.context.shape[1], 64)
    assert counted(lambda: head(context, m.context, m.target, grid)) == pytest.approx(
        2 * flops.predictor_forward(head, m.context.shape[1], m.target.shape[1]), rel=1e-9
    )


@pytest.mark.parametrize("stage", ["pixel", "salt"])
def test_training_step_counts_match(setup, stage):
    encoder, video, grid, masks, n_all = setup
    if stage == "pixel":
        head, teacher = build_pixel_decoder(64, depth=1, embed_dim=48, num_heads=2, mlp_hidden=96), None
    else:
        teacher = build_encoder("vit_tiny", depth=1, embed_dim=96, num_heads=2, mlp_hidden=96).eval()
        head = build_predictor(64, 96, depth=1, embed_dim=48, num_heads=2, mlp_hidden=96)

    def step():
        if teacher is None:
            loss, _ = pixel_loss(encoder, head, video, masks, grid)
        else:
            with torch.no_grad():
                target = teacher(video)
            loss, _ = salt_loss(encoder, head, video, target, masks, grid)
        loss.backward()

    expected = flops.step_flops(encoder, head, masks, n_all, teacher)
    assert counted(step) == pytest.approx(expected, rel=0.01)


def test_peak_is_unknown_on_cpu():
    assert flops.peak_flops(torch.device("cpu")) is None
