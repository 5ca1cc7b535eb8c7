"""Encoder, predictor and pixel decoder: sizes, shapes, conventions and the no-leak property."""

import math

import pytest
import torch

from salt_fast.models import ENCODER_PRESETS, build_encoder, build_pixel_decoder, build_predictor
from salt_fast.models.vit import ViTConfig

# The paper's Table 3 parameter counts (patch embedding included).
PAPER_PARAMS = {"vit_b": 86e6, "vit_l": 303e6, "vit_h": 632e6, "vit_g": 1.012e9, "vit_G": 1.843e9}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def tiny_encoder(**overrides):
    return build_encoder("vit_tiny", **{"depth": 2, **overrides})


def tiny_predictor(in_dim=192, out_dim=96):
    return build_predictor(in_dim, out_dim, depth=2, embed_dim=48, num_heads=2, mlp_hidden=96)


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_preset_parameter_counts_on_meta(name):
    with torch.device("meta"):
        encoder = build_encoder(name)
    assert all(p.is_meta for p in encoder.parameters())
    assert abs(n_params(encoder) / PAPER_PARAMS[name] - 1) < 0.01


@pytest.mark.parametrize(("teacher", "expected"), [("vit_b", 21.9e6), ("vit_l", 22.1e6)])
def test_predictor_parameter_count(teacher, expected):
    width = ENCODER_PRESETS[teacher].embed_dim
    with torch.device("meta"):
        predictor = build_predictor(width, width)
    assert abs(n_params(predictor) / expected - 1) < 0.01


def test_heads_and_mlp_are_configurable():
    with torch.device("meta"):
        giant = build_encoder("vit_g", num_heads=22)  # V-JEPA 2's giant: 22 heads of 64
    assert giant.cfg.head_dim == 64
    assert giant.blocks[0].mlp.fc1.out_features == 6144
    with pytest.raises(ValueError, match="not divisible"):
        build_encoder("vit_g", num_heads=15)
    with pytest.raises(ValueError, match="rope_mode"):
        build_encoder("vit_tiny", rope_mode="2d")
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vit_xl")
    with pytest.raises(ValueError, match="depth"):
        ViTConfig(embed_dim=64, depth=0, num_heads=1, mlp_hidden=64)


def test_init_convention():
    encoder = build_encoder("vit_small", depth=4)
    for i, block in enumerate(encoder.blocks):
        scale = 1 / math.sqrt(2 * (i + 1))
        assert block.attn.proj.weight.std().item() == pytest.approx(0.02 * scale, rel=0.1)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(0.02 * scale, rel=0.1)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.count_nonzero(block.attn.qkv.bias) == 0 and torch.count_nonzero(block.mlp.fc1.bias) == 0
        assert torch.all(block.norm1.weight == 1) and block.norm1.eps == 1e-6
    assert encoder.patch_embed.proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_encoder_shapes_full_and_subset():
    encoder = tiny_encoder().eval()
    video = torch.randn(2, 3, 8, 48, 64)  # grid (4, 3, 4): 48 tokens
    assert encoder.token_grid(video.shape) == (4, 3, 4)
    assert encoder(video).shape == (2, 48, 192)
    ids = torch.stack([torch.randperm(48)[:11] for _ in range(2)])
    assert encoder(video, ids).shape == (2, 11, 192)
    with pytest.raises(ValueError, match="does not tile"):
        encoder(torch.randn(1, 3, 7, 48, 64))
    with pytest.raises(ValueError, match="expected a clip"):
        encoder(torch.randn(3, 8, 48, 64))


def test_encoder_ids_none_equals_arange_and_is_order_equivariant():
    encoder = tiny_encoder().eval()
    video = torch.randn(2, 3, 4, 32, 48)
    full = encoder(video)
    n = full.shape[1]
    torch.testing.assert_close(encoder(video, torch.arange(n).expand(2, n)), full)
    # Positions come from ids, not from sequence order: permuting the ids permutes the outputs.
    ids = torch.stack([torch.randperm(n)[:9] for _ in range(2)])
    perm = torch.randperm(9)
    torch.testing.assert_close(encoder(video, ids[:, perm]), encoder(video, ids)[:, perm], atol=1e-5, rtol=1e-5)


def test_masked_pixels_do_not_leak_into_visible_tokens():
    encoder = tiny_encoder().eval()
    video = torch.randn(2, 3, 8, 64, 64)  # grid (4, 4, 4)
    T, H, W = encoder.token_grid(video.shape)
    visible = torch.stack([torch.randperm(T * H * W)[:20].sort().values for _ in range(2)])
    hidden_mask = torch.ones(2, T * H * W, dtype=torch.bool)
    hidden_mask.scatter_(1, visible, False)

    # Upsample the token mask to pixels and rewrite every hidden pixel.
    pixel_mask = hidden_mask.view(2, 1, T, 1, H, 1, W, 1).expand(2, 3, T, 2, H, 16, W, 16).reshape(video.shape)
    altered = torch.where(pixel_mask, torch.randn_like(video) * 10, video)
    before = encoder(video, visible)
    torch.testing.assert_close(encoder(altered, visible), before, atol=1e-6, rtol=1e-6)

    # The test can fail: touching one visible pixel does change the output.
    t, h, w = (visible[0, 0] // (H * W)).item(), (visible[0, 0] // W % H).item(), (visible[0, 0] % W).item()
    poked = video.clone()
    poked[0, 0, 2 * t, 16 * h, 16 * w] += 5.0
    assert not torch.allclose(encoder(poked, visible), before, atol=1e-4)


def test_predictor_shapes_mask_tokens_and_order_invariance():
    predictor = tiny_predictor().eval()
    grid = (2, 4, 4)
    context = torch.randn(2, 10, 192)
    ctx_ids = torch.stack([torch.randperm(32)[:10] for _ in range(2)])
    tgt_ids = torch.stack([torch.randperm(32)[:7] for _ in range(2)])
    out = predictor(context, ctx_ids, tgt_ids, grid, mask_index=1)
    assert out.shape == (2, 7, 96)
    # Context order does not matter (no sort needed); target order maps row for row.
    perm = torch.randperm(10)
    torch.testing.assert_close(predictor(context[:, perm], ctx_ids[:, perm], tgt_ids, grid, 1), out, atol=1e-5, rtol=1e-5)
    tperm = torch.randperm(7)
    torch.testing.assert_close(predictor(context, ctx_ids, tgt_ids[:, tperm], grid, 1), out[:, tperm], atol=1e-5, rtol=1e-5)
    assert len(predictor.mask_tokens) == 2
    with pytest.raises(ValueError, match="mask_index"):
        predictor(context, ctx_ids, tgt_ids, grid, mask_index=2)


def test_padding_slots_change_nothing():
    predictor = tiny_predictor().eval()
    grid = (2, 4, 4)
    context = torch.randn(1, 6, 192)
    ctx_ids, tgt_ids = torch.randperm(32)[:11].view(1, 11).split([6, 5], dim=1)
    reference = predictor(context, ctx_ids, tgt_ids, grid)
    # Pad context and targets with garbage slots marked invalid.
    padded_ctx = torch.cat((context, torch.randn(1, 3, 192) * 100), dim=1)
    padded_ctx_ids = torch.cat((ctx_ids, ctx_ids[:, -1:].expand(1, 3)), dim=1)
    padded_tgt_ids = torch.cat((tgt_ids, tgt_ids[:, -1:].expand(1, 2)), dim=1)
    ctx_valid = torch.tensor([[True] * 6 + [False] * 3])
    tgt_valid = torch.tensor([[True] * 5 + [False] * 2])
    out = predictor(padded_ctx, padded_ctx_ids, padded_tgt_ids, grid, 0, ctx_valid, tgt_valid)
    torch.testing.assert_close(out[:, :5], reference, atol=1e-5, rtol=1e-5)


def test_pixel_decoder_outputs_a_tubelet_of_pixels():
    decoder = build_pixel_decoder(192, depth=1)
    assert decoder.out_dim == 2 * 16 * 16 * 3 == 1536
    out = decoder(torch.randn(1, 4, 192), torch.tensor([[0, 1, 2, 3]]), torch.tensor([[5, 9]]), (2, 3, 3))
    assert out.shape == (1, 2, 1536)


def test_salt_step_backward_reaches_every_trainable_parameter():
    from salt_fast.kernels import latent_l1_loss

    teacher, student = tiny_encoder().eval(), tiny_encoder(embed_dim=96, num_heads=2, mlp_hidden=192)
    predictor = tiny_predictor(in_dim=96, out_dim=192)
    video = torch.randn(2, 3, 8, 32, 32)  # grid (4, 2, 2): 16 tokens
    grid = student.token_grid(video.shape)
    ctx_ids, tgt_ids = torch.stack([torch.randperm(16) for _ in range(2)]).split([5, 11], dim=1)
    with torch.no_grad():
        target = teacher(video)
    loss = latent_l1_loss(predictor(student(video, ctx_ids), ctx_ids, tgt_ids, grid), target, tgt_ids)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in [*student.named_parameters(), *predictor.named_parameters()]:
        if name != "mask_tokens.1":  # only mask config 0 ran
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in teacher.parameters())
