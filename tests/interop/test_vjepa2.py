"""V-JEPA 2 compatibility: its checkpoint layout in and out, and the drop-in kernels.

The V-JEPA 2 side is written here from its published conventions (key names and shapes of
app/vjepa/train.py checkpoints, the semantics of apply_masks, RoPEAttention and the loss of
app/vjepa/train.py), not from its code: ``vjepa2_*_state`` write checkpoints in its layout and
``ref_*`` are straightforward transcriptions of its forward passes and ops.
"""

import re

import pytest
import torch
import torch.nn.functional as F

import salt_fast.kernels as K
from salt_fast.models import Predictor, ViTConfig, VisionTransformer, build_encoder, build_predictor
from salt_fast.vjepa2 import (
    Vjepa2CheckpointError,
    infer_encoder_config,
    infer_predictor_spec,
    load_vjepa2_checkpoint,
    matching_preset,
    save_vjepa2_checkpoint,
)
from support import ROOT

P = "module.backbone."  # DistributedDataParallel(MultiSeqWrapper(model)).state_dict()

# ----------------------------------------------------------------------------- V-JEPA 2 layout


def _tensor(shape, device, scale=0.05, offset=0.0):
    if device == "meta":
        return torch.empty(shape, device="meta")
    return torch.randn(shape) * scale + offset


def _block_state(prefix, width, mlp, device, qkv_bias=True):
    state = {}
    for norm in ("norm1", "norm2"):
        state[f"{prefix}{norm}.weight"] = _tensor((width,), device, 0.1, 1.0)
        state[f"{prefix}{norm}.bias"] = _tensor((width,), device)
    state[f"{prefix}attn.qkv.weight"] = _tensor((3 * width, width), device)
    if qkv_bias:
        state[f"{prefix}attn.qkv.bias"] = _tensor((3 * width,), device)
    state[f"{prefix}attn.proj.weight"] = _tensor((width, width), device)
    state[f"{prefix}attn.proj.bias"] = _tensor((width,), device)
    state[f"{prefix}mlp.fc1.weight"] = _tensor((mlp, width), device)
    state[f"{prefix}mlp.fc1.bias"] = _tensor((mlp,), device)
    state[f"{prefix}mlp.fc2.weight"] = _tensor((width, mlp), device)
    state[f"{prefix}mlp.fc2.bias"] = _tensor((width,), device)
    return state


def vjepa2_encoder_state(width, depth, mlp, n_pos=8, tubelet=2, patch=16, in_chans=3, device="cpu", prefix=P):
    """An encoder state dict as V-JEPA 2 writes it: Conv3d patch embed, blocks, norm, pos_embed."""
    state = {
        f"{prefix}pos_embed": _tensor((1, n_pos, width), device),
        f"{prefix}patch_embed.proj.weight": _tensor((width, in_chans, tubelet, patch, patch), device, 0.02),
        f"{prefix}patch_embed.proj.bias": _tensor((width,), device),
    }
    for i in range(depth):
        state.update(_block_state(f"{prefix}blocks.{i}.", width, mlp, device))
    state[f"{prefix}norm.weight"] = _tensor((width,), device, 0.1, 1.0)
    state[f"{prefix}norm.bias"] = _tensor((width,), device)
    return state


def vjepa2_predictor_state(in_dim, width, depth, mlp, out_dim, mask_tokens, n_pos=8, device="cpu", prefix=P):
    """A predictor state dict as V-JEPA 2 writes it (use_mask_tokens, RoPE, predictor_pos_embed kept)."""
    state = {
        f"{prefix}predictor_embed.weight": _tensor((width, in_dim), device),
        f"{prefix}predictor_embed.bias": _tensor((width,), device),
    }
    for j in range(mask_tokens):
        state[f"{prefix}mask_tokens.{j}"] = _tensor((1, 1, width), device, 1.0)
    state[f"{prefix}predictor_pos_embed"] = _tensor((1, n_pos, width), device)
    for i in range(depth):
        state.update(_block_state(f"{prefix}predictor_blocks.{i}.", width, mlp, device))
    state[f"{prefix}predictor_norm.weight"] = _tensor((width,), device, 0.1, 1.0)
    state[f"{prefix}predictor_norm.bias"] = _tensor((width,), device)
    state[f"{prefix}predictor_proj.weight"] = _tensor((out_dim, width), device)
    state[f"{prefix}predictor_proj.bias"] = _tensor((out_dim,), device)
    return state


# Tiny but shaped like the real thing: encoder width 192 (V-JEPA 2's vit_tiny: 3 heads), an MLP
# that is not 4x, a 96-wide predictor with V-JEPA 2's 12 heads (head_dim 8) and 3 mask tokens.
ENC = dict(width=192, depth=2, mlp=320)
PRED = dict(in_dim=192, width=96, depth=2, mlp=160, out_dim=192, mask_tokens=3)


def vjepa2_checkpoint():
    encoder = vjepa2_encoder_state(**ENC)
    target = {k: v + 0.01 * torch.randn_like(v) for k, v in encoder.items()}
    return {
        "encoder": encoder,
        "predictor": vjepa2_predictor_state(**PRED),
        "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "scaler": None,
        "target_encoder": target,
        "epoch": 7,
        "loss": 0.42,
        "batch_size": 2,
        "world_size": 1,
        "lr": 1e-4,
    }


def stripped(state, drop=("pos_embed", "predictor_pos_embed")):
    return {k.removeprefix(P): v for k, v in state.items() if k.removeprefix(P) not in drop}


# ----------------------------------------------------------------------------- V-JEPA 2 semantics


def ref_gather(x, ids):
    return torch.gather(x, 1, ids.unsqueeze(-1).repeat(1, 1, x.shape[-1]))


def ref_apply_masks(x, masks, concat=True):
    parts = [ref_gather(x, m) for m in masks]
    return torch.cat(parts, dim=0) if concat else parts


def ref_rotate_axis(x, pos, mode):
    """One axis chunk ``x [B, heads, N, d]`` at positions ``pos [B, N]``, in fp64."""
    d = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
    angle = pos.double()[:, None, :, None] * omega
    # V-JEPA 2 as released tiles the frequencies; its documented fix interleaves them.
    angle = angle.repeat(1, 1, 1, 2) if mode == "vjepa2" else angle.repeat_interleave(2, dim=-1)
    pairs = x.double().unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x.double() * angle.cos() + swapped * angle.sin()


def ref_rope(x, ids, grid, mode="vjepa2"):
    """RoPEAttention's rotation of q or k: t, h, w chunks of d channels, the rest unchanged."""
    _, H, W = grid
    d = 2 * ((x.shape[-1] // 3) // 2)
    positions = (ids // (H * W), (ids % (H * W)) // W, ids % W)
    chunks = [ref_rotate_axis(x[..., a * d : (a + 1) * d], positions[a], mode) for a in range(3)]
    return torch.cat(chunks + [x[..., 3 * d :].double()], dim=-1).to(x.dtype)


def ref_layer_norm(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)


def ref_block(x, sd, pre, heads, ids, grid):
    B, N, C = x.shape
    qkv = F.linear(ref_layer_norm(x, sd, pre + "norm1"), sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"])
    q, k, v = qkv.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(ref_rope(q, ids, grid), ref_rope(k, ids, grid), v)
    x = x + F.linear(out.transpose(1, 2).reshape(B, N, C), sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
    hidden = F.gelu(F.linear(ref_layer_norm(x, sd, pre + "norm2"), sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"]))
    return x + F.linear(hidden, sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])


def ref_encoder(sd, video, heads, masks=None):
    """V-JEPA 2's VisionTransformer.forward with use_rope: masks are concatenated along the batch."""
    weight = sd[P + "patch_embed.proj.weight"]
    t, p = weight.shape[2], weight.shape[3]
    x = F.conv3d(video, weight, sd[P + "patch_embed.proj.bias"], stride=(t, p, p)).flatten(2).transpose(1, 2)
    grid = (video.shape[2] // t, video.shape[3] // p, video.shape[4] // p)
    if masks is None:
        ids = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    else:
        x, ids = ref_apply_masks(x, masks), torch.cat(masks, dim=0)
    depth = len({k.split(".")[3] for k in sd if k.startswith(P + "blocks.")})
    for i in range(depth):
        x = ref_block(x, sd, f"{P}blocks.{i}.", heads, ids, grid)
    return ref_layer_norm(x, sd, P + "norm")


def ref_predictor(sd, ctx, mask_x, mask_y, mask_index, heads, grid):
    """V-JEPA 2's VisionTransformerPredictor.forward with RoPE and mask tokens, one mask pair."""
    x = F.linear(ctx, sd[P + "predictor_embed.weight"], sd[P + "predictor_embed.bias"])
    tokens = sorted((k for k in sd if ".mask_tokens." in k), key=lambda k: int(k.rsplit(".", 1)[1]))
    token = sd[tokens[mask_index % len(tokens)]]
    B, n_ctx = x.shape[0], x.shape[1]
    pred = ref_gather(token.repeat(B, grid[0] * grid[1] * grid[2], 1), mask_y)
    x = torch.cat([x, pred], dim=1)
    ids = torch.cat([mask_x, mask_y], dim=1)
    order = ids.argsort(dim=1)  # V-JEPA 2 sorts tokens by id before its blocks, and unsorts after
    x, ids = ref_gather(x, order), ids.gather(1, order)
    depth = len({k.split(".")[3] for k in sd if k.startswith(P + "predictor_blocks.")})
    for i in range(depth):
        x = ref_block(x, sd, f"{P}predictor_blocks.{i}.", heads, ids, grid)
    x = ref_gather(ref_layer_norm(x, sd, P + "predictor_norm"), order.argsort(dim=1))[:, n_ctx:]
    return F.linear(x, sd[P + "predictor_proj.weight"], sd[P + "predictor_proj.bias"])


def ref_loss(preds, target, masks, loss_exp):
    """app/vjepa/train.py: layer_norm the target, apply_masks, mean |z - h|^p / p, averaged."""
    h = F.layer_norm(target.float(), (target.shape[-1],))
    parts = ref_apply_masks(h, masks, concat=False)
    return sum(torch.mean(torch.abs(z.float() - hm) ** loss_exp) / loss_exp for z, hm in zip(preds, parts)) / len(preds)


def random_masks(batch, n, k):
    return torch.stack([torch.randperm(n)[:k].sort().values for _ in range(batch)])


# ----------------------------------------------------------------------------- loading


def test_load_equals_native_load_and_vjepa2_forward():
    ckpt = vjepa2_checkpoint()
    models = load_vjepa2_checkpoint(ckpt)
    enc, pred = models.encoder, models.predictor
    assert enc.cfg == ViTConfig(embed_dim=192, depth=2, num_heads=3, mlp_hidden=320, rope_mode="vjepa2")
    assert (pred.in_dim, pred.out_dim, len(pred.mask_tokens)) == (192, 192, 3)
    assert pred.cfg == ViTConfig(embed_dim=96, depth=2, num_heads=12, mlp_hidden=160, rope_mode="vjepa2")
    assert models.epoch == 7 and models.encoder_preset is None
    assert models.ignored_keys == [f"encoder: {P}pos_embed", f"target_encoder: {P}pos_embed", f"predictor: {P}predictor_pos_embed"]
    assert models.target_encoder is not None and not any(p.requires_grad for p in models.target_encoder.parameters())
    assert all(p.requires_grad for p in enc.parameters())

    native_enc = VisionTransformer(ViTConfig(embed_dim=192, depth=2, num_heads=3, mlp_hidden=320, rope_mode="vjepa2"))
    native_enc.load_state_dict(stripped(ckpt["encoder"]))
    native_pred = Predictor(192, 192, ViTConfig(embed_dim=96, depth=2, num_heads=12, mlp_hidden=160, rope_mode="vjepa2"), 3)
    native_pred.load_state_dict(stripped(ckpt["predictor"]))

    with torch.no_grad():
        # Full clip on a non-square grid (3 x 2 x 3 tokens): the encoder uses the true grid.
        clip = torch.randn(2, 3, 6, 32, 48)
        out = enc(clip)
        assert torch.equal(out, native_enc(clip))
        torch.testing.assert_close(out, ref_encoder(ckpt["encoder"], clip, heads=3), atol=1e-5, rtol=1e-5)

        # Masked context: V-JEPA 2 runs a list of masks as one concatenated batch.
        clip = torch.randn(2, 3, 4, 48, 48)  # grid (2, 3, 3), square as the predictor assumes
        mx, mx2, my = random_masks(2, 18, 7), random_masks(2, 18, 7), random_masks(2, 18, 5)
        ours = torch.cat([enc(clip, mx), enc(clip, mx2)])
        assert torch.equal(ours[:2], native_enc(clip, mx))
        torch.testing.assert_close(ours, ref_encoder(ckpt["encoder"], clip, 3, [mx, mx2]), atol=1e-5, rtol=1e-5)

        ctx = ours[:2]
        for j in range(3):
            out = pred(ctx, mx, my, (2, 3, 3), mask_index=j)
            assert out.shape == (2, 5, 192)
            assert torch.equal(out, native_pred(ctx, mx, my, (2, 3, 3), mask_index=j))
            torch.testing.assert_close(out, ref_predictor(ckpt["predictor"], ctx, mx, my, j, 12, (2, 3, 3)), atol=1e-5, rtol=1e-5)

        target = models.target_encoder(clip)
        torch.testing.assert_close(target, ref_encoder(ckpt["target_encoder"], clip, 3), atol=1e-5, rtol=1e-5)


def test_load_from_file_prefix_variants_and_bare_state_dicts(tmp_path):
    ckpt = vjepa2_checkpoint()
    path = tmp_path / "vjepa2.pt"
    torch.save(ckpt, path)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = load_vjepa2_checkpoint(path, entries=["encoder"]).encoder(clip)
        for prefix in ("", "module.", "backbone.", "backbone.module."):
            state = {prefix + k.removeprefix(P): v for k, v in ckpt["encoder"].items()}
            got = load_vjepa2_checkpoint({"encoder": state}).encoder(clip)
            assert torch.equal(got, expected), prefix
        # A bare state dict (e.g. after V-JEPA 2's own prefix cleaning) is recognised by its keys.
        bare = load_vjepa2_checkpoint(stripped(ckpt["encoder"]))
        assert bare.encoder is not None and bare.predictor is None and torch.equal(bare.encoder(clip), expected)
        assert load_vjepa2_checkpoint(ckpt["predictor"]).predictor is not None
    only = load_vjepa2_checkpoint(path, entries=["predictor"], predictor_heads=8, dtype=torch.bfloat16)
    assert only.encoder is None and only.target_encoder is None and only.predictor.cfg.num_heads == 8
    assert {p.dtype for p in only.predictor.parameters()} == {torch.bfloat16}


def test_round_trip_save_load(tmp_path):
    # salt_fast-specific shapes: 6 heads on a 192-wide encoder (V-JEPA 2's convention says 3)
    # and our 16-head predictor (V-JEPA 2's says 12): the salt_fast record restores them.
    student = build_encoder("vit_tiny", depth=2, num_heads=6, rope_mode="vjepa2")
    teacher = build_encoder("vit_small", depth=1, rope_mode="vjepa2")
    head = build_predictor(192, 384, depth=2, rope_mode="vjepa2")
    path = save_vjepa2_checkpoint(tmp_path / "out" / "student.pt", encoder=student, predictor=head, target_encoder=teacher, epoch=3)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # what V-JEPA 2's loaders call
    assert {"encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr"} <= set(raw)
    for entry, model in (("encoder", student), ("predictor", head), ("target_encoder", teacher)):
        assert all(k.startswith(P) for k in raw[entry])
        # V-JEPA 2's eval / hub cleaning: drop "module." and "backbone." -> exactly our names.
        cleaned = {k.replace("module.", "").replace("backbone.", ""): v for k, v in raw[entry].items()}
        assert cleaned.keys() == model.state_dict().keys()

    loaded = load_vjepa2_checkpoint(path)
    assert loaded.encoder.cfg == student.cfg and loaded.target_encoder.cfg == teacher.cfg and loaded.epoch == 3
    assert loaded.predictor.cfg == head.cfg and loaded.ignored_keys == []
    for ours, theirs in ((loaded.encoder, student), (loaded.predictor, head), (loaded.target_encoder, teacher)):
        for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), k
    clip = torch.randn(2, 3, 4, 32, 32)
    ids, tgt = random_masks(2, 8, 3), random_masks(2, 8, 4)
    with torch.no_grad():
        assert torch.equal(loaded.encoder(clip, ids), student(clip, ids))
        ctx = student(clip, ids)
        assert torch.equal(loaded.predictor(ctx, ids, tgt, (2, 2, 2), 1), head(ctx, ids, tgt, (2, 2, 2), 1))

    # Saving again from the loaded models gives the same tensors; wrappers are unwrapped.
    again = save_vjepa2_checkpoint(tmp_path / "again.pt", encoder=torch.nn.parallel.DataParallel(loaded.encoder))
    raw_again = torch.load(again, weights_only=True)
    assert all(torch.equal(raw_again["encoder"][k], v) for k, v in raw["encoder"].items())


def test_standard_rope_is_refused_unless_allowed(tmp_path):
    student = build_encoder("vit_tiny", depth=1)  # rope_mode "standard", salt_fast's default
    with pytest.raises(Vjepa2CheckpointError, match="rope_mode='standard'"):
        save_vjepa2_checkpoint(tmp_path / "s.pt", encoder=student)
    assert not (tmp_path / "s.pt").exists()
    path = save_vjepa2_checkpoint(tmp_path / "s.pt", encoder=student, allow_standard_rope=True)
    assert load_vjepa2_checkpoint(path).encoder.cfg.rope_mode == "standard"
    assert load_vjepa2_checkpoint(path, rope_mode="vjepa2").encoder.cfg.rope_mode == "vjepa2"
    with pytest.raises(TypeError, match="Predictor"):
        save_vjepa2_checkpoint(tmp_path / "p.pt", predictor=student)
    with pytest.raises(ValueError, match="nothing to save"):
        save_vjepa2_checkpoint(tmp_path / "n.pt")


# ----------------------------------------------------------------------------- every mismatch is an error


def _error(ckpt, **kwargs):
    with pytest.raises(Vjepa2CheckpointError) as info:
        load_vjepa2_checkpoint(ckpt, **kwargs)
    return info.value


def test_missing_keys_are_listed():
    ckpt = vjepa2_checkpoint()
    del ckpt["encoder"][P + "blocks.1.mlp.fc2.bias"], ckpt["encoder"][P + "norm.weight"]
    del ckpt["predictor"][P + "mask_tokens.1"]
    err = _error(ckpt)
    assert err.missing == [f"encoder: {P}blocks.1.mlp.fc2.bias", f"encoder: {P}norm.weight", f"predictor: {P}mask_tokens.1"]
    assert not err.unexpected and not err.mismatched
    for key in err.missing:
        assert key in str(err)
    assert "missing keys (3)" in str(err)


def test_unexpected_keys_are_listed():
    ckpt = vjepa2_checkpoint()
    ckpt["encoder"][P + "blocks.0.mlp.fc3.weight"] = torch.zeros(192, 8)  # V-JEPA 2's SwiGLU: unsupported
    ckpt["target_encoder"][P + "cls_token"] = torch.zeros(1, 1, 192)
    err = _error(ckpt)
    assert err.unexpected == [f"encoder: {P}blocks.0.mlp.fc3.weight", f"target_encoder: {P}cls_token"]
    assert "unexpected keys (2)" in str(err) and f"{P}cls_token" in str(err)
    # The pos-embed tables of RoPE checkpoints are dropped by default, and errors on request.
    err = _error(vjepa2_checkpoint(), ignore_pos_embed=False, entries=["encoder", "predictor"])
    assert err.unexpected == [f"encoder: {P}pos_embed", f"predictor: {P}predictor_pos_embed"]


def test_mis_shaped_keys_are_listed():
    ckpt = vjepa2_checkpoint()
    ckpt["encoder"][P + "blocks.1.attn.qkv.weight"] = torch.zeros(3 * 192, 100)
    ckpt["encoder"][P + "blocks.0.mlp.fc1.bias"] = torch.zeros(321)
    err = _error(ckpt)
    assert err.mismatched == [
        f"encoder: {P}blocks.0.mlp.fc1.bias: checkpoint (321,) vs model (320,)",
        f"encoder: {P}blocks.1.attn.qkv.weight: checkpoint (576, 100) vs model (576, 192)",
    ]
    for line in err.mismatched:
        assert line in str(err)
    # A preset the weights do not have: every differing tensor is listed.
    err = _error(vjepa2_checkpoint(), entries=["encoder"], encoder_preset="vit_small")
    assert f"encoder: {P}patch_embed.proj.weight: checkpoint (192, 3, 2, 16, 16) vs model (384, 3, 2, 16, 16)" in err.mismatched
    assert f"encoder: {P}blocks.11.norm1.weight" in err.missing
    # Image-model (Conv2d) patch embeddings and wrong-rank size keys.
    ckpt = vjepa2_checkpoint()
    ckpt["encoder"][P + "patch_embed.proj.weight"] = torch.zeros(192, 3, 16, 16)
    err = _error(ckpt, entries=["encoder"])
    assert err.mismatched == [f"encoder: {P}patch_embed.proj.weight: shape (192, 3, 16, 16), expected a 5-d tensor"]


def test_other_failures_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="V-JEPA 2 checkpoint not found: .*nope.pt"):
        load_vjepa2_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Vjepa2CheckpointError, match="cannot be read as a torch checkpoint"):
        load_vjepa2_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(Vjepa2CheckpointError, match="no 'encoder', 'target_encoder' or 'predictor' entry"):
        load_vjepa2_checkpoint({"epoch": 1, "opt": {}})
    with pytest.raises(Vjepa2CheckpointError, match=r"requested entries \['target_encoder'\]"):
        load_vjepa2_checkpoint({"encoder": vjepa2_encoder_state(**ENC)}, entries=["target_encoder"])
    with pytest.raises(Vjepa2CheckpointError, match="encoder_heads="):  # width 200: no V-JEPA 2 convention
        load_vjepa2_checkpoint({"encoder": vjepa2_encoder_state(200, 1, 64)})
    assert load_vjepa2_checkpoint({"encoder": vjepa2_encoder_state(200, 1, 64)}, encoder_heads=5).encoder.cfg.num_heads == 5
    err = _error({"target_encoder": {k: v for k, v in vjepa2_encoder_state(**ENC).items() if ".mlp.fc1." not in k}})
    assert err.missing == [f"target_encoder: {P}blocks.0.mlp.fc1.weight"] and "cannot read the encoder's size" in str(err)
    with pytest.raises(ValueError, match="unknown encoder_preset"):
        load_vjepa2_checkpoint(vjepa2_checkpoint(), encoder_preset="vit_x")


# ----------------------------------------------------------------------------- the real presets, shapes only


@pytest.mark.parametrize(
    "name, width, depth, mlp, heads, preset",
    [
        ("vit_large", 1024, 24, 4096, 16, "vit_l"),
        ("vit_huge", 1280, 32, 5120, 16, "vit_h"),
        ("vit_giant_xformers", 1408, 40, 6144, 22, "vit_g(num_heads=22)"),  # mlp_ratio 48/11
    ],
)
def test_vjepa2_presets_on_meta(name, width, depth, mlp, heads, preset):
    ckpt = {
        "encoder": vjepa2_encoder_state(width, depth, mlp, n_pos=2048, device="meta"),
        "predictor": vjepa2_predictor_state(width, 384, 12, 1536, width, 10, n_pos=2048, device="meta"),
    }
    models = load_vjepa2_checkpoint(ckpt, device="meta")
    cfg = models.encoder.cfg
    assert (cfg.embed_dim, cfg.depth, cfg.mlp_hidden, cfg.num_heads, cfg.rope_mode) == (width, depth, mlp, heads, "vjepa2")
    assert models.encoder_preset == preset and matching_preset(cfg) == preset
    pred = models.predictor
    assert (pred.cfg.num_heads, pred.cfg.depth, len(pred.mask_tokens), pred.in_dim, pred.out_dim) == (12, 12, 10, width, width)
    assert all(p.is_meta for p in models.encoder.parameters())
    # Salt_fast's own 16-head vit_g has the same shapes: only an explicit argument tells them apart.
    if width == 1408:
        assert load_vjepa2_checkpoint(ckpt, device="meta", encoder_heads=16).encoder_preset == "vit_g"
        assert load_vjepa2_checkpoint(ckpt, device="meta", encoder_preset="vit_g").encoder.cfg.num_heads == 16


def test_gigantic_needs_explicit_heads():
    # V-JEPA 2's vit_gigantic misspells mlp_ratio ("mpl_ratio"), so it builds a 4x MLP (6656),
    # and it has 16 heads (26 in vit_gigantic_xformers): the width alone does not decide.
    state = vjepa2_encoder_state(1664, 48, 6656, device="meta")
    with pytest.raises(Vjepa2CheckpointError, match="vit_gigantic has 16, vit_gigantic_xformers 26"):
        infer_encoder_config(state)
    cfg = infer_encoder_config(state, num_heads=26)
    assert (cfg.num_heads, cfg.mlp_hidden, cfg.depth) == (26, 6656, 48) and matching_preset(cfg) is None
    ours = infer_encoder_config(vjepa2_encoder_state(1664, 48, 8192, device="meta"), num_heads=16)
    assert matching_preset(ours) == "vit_G"
    spec = infer_predictor_spec(vjepa2_predictor_state(1664, 384, 12, 1536, 1664, 6, device="meta"))
    assert (spec.cfg.num_heads, spec.num_mask_tokens, spec.out_dim) == (12, 6, 1664)


# ----------------------------------------------------------------------------- drop-in kernels

KERNEL_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.fixture(params=["triton", "reference"])
def kernels(request, monkeypatch):
    if request.param == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("SALT_FAST_KERNELS", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_masks_matches_vjepa2(kernels, dtype):
    B, N, D = 3, 29, 37
    x = torch.randn(B, N, D).to(dtype)
    masks = [random_masks(B, N, 11), random_masks(B, N, 11)]
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    out, ref = K.apply_masks(a, masks), ref_apply_masks(b, masks)
    assert out.shape == (2 * B, 11, D) and out.dtype == dtype and torch.equal(out, ref)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(a.grad, b.grad)

    ragged = [random_masks(B, N, 5), random_masks(B, N, 13)]
    parts = K.apply_masks(x, ragged, concat=False)
    assert isinstance(parts, list) and all(torch.equal(p, r) for p, r in zip(parts, ref_apply_masks(x, ragged, concat=False)))
    assert torch.equal(K.apply_masks(x, ragged[0]), ref_gather(x, ragged[0]))  # a tensor = a list of one
    with pytest.raises(ValueError, match="one length K"):
        K.apply_masks(x, ragged)
    with pytest.raises(ValueError, match=r"masks\[1\]"):
        K.apply_masks(x, [ragged[0], ragged[1][:2]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["vjepa2", "standard"])
def test_rotate_qk_matches_vjepa2(kernels, mode, dtype):
    grid, heads, head_dim, B = (3, 4, 5), 3, 22, 2  # head_dim 22: 3 chunks of 6, 4 channels pass through
    masks = [random_masks(B, 60, 17), random_masks(B, 60, 17)]
    ids = torch.cat(masks)
    q = torch.randn(2 * B, heads, 17, head_dim).to(dtype).requires_grad_(True)
    k = torch.randn(2 * B, heads, 17, head_dim).to(dtype).requires_grad_(True)
    rq, rk = K.rotate_qk(q, k, masks, grid, mode=mode)
    tol = KERNEL_TOL[dtype]
    torch.testing.assert_close(rq, ref_rope(q.detach().float(), ids, grid, mode).to(dtype), **tol)
    torch.testing.assert_close(rk, ref_rope(k.detach().float(), ids, grid, mode).to(dtype), **tol)
    # Backward: the transpose of the map, as autograd of the transcription computes it.
    g = torch.randn_like(rq)
    (rq * g).sum().backward()
    q64 = q.detach().double().requires_grad_(True)
    (ref_rope(q64, ids, grid, mode) * g.double()).sum().backward()
    torch.testing.assert_close(q.grad, q64.grad.to(dtype), **tol)
    # Full grid (masks=None) and the in-place packed variant agree with the same math.
    full = torch.randn(1, heads, 60, head_dim).to(dtype)
    torch.testing.assert_close(K.rotate_qk(full, full, None, grid, mode)[0],
                               ref_rope(full.float(), torch.arange(60)[None], grid, mode).to(dtype), **tol)  # fmt: skip
    qkv = torch.randn(2 * B, 17, 3, heads, head_dim).to(dtype)
    v = qkv[:, :, 2].clone()
    q2, k2 = K.rotate_qk(qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), masks, grid, mode)
    K.rotate_qkv_(qkv, masks, grid, mode)
    assert torch.equal(qkv[:, :, 0].transpose(1, 2), q2) and torch.equal(qkv[:, :, 1].transpose(1, 2), k2)
    assert torch.equal(qkv[:, :, 2], v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_exp", [1.0, 2.0])
def test_jepa_latent_loss_matches_vjepa2(kernels, dtype, loss_exp):
    B, N, D = 3, 31, 45
    target = torch.randn(B, N, D).to(dtype) * 3 + 1
    masks = [random_masks(B, N, 9), random_masks(B, N, 20)]  # different K per mask, equal weight
    preds = [torch.randn(B, m.shape[1], D).to(dtype).requires_grad_(True) for m in masks]
    refs = [p.detach().clone().requires_grad_(True) for p in preds]
    loss = K.jepa_latent_loss(preds, target, masks, loss_exp=loss_exp)
    ref = ref_loss(refs, target, masks, loss_exp)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    loss.backward()
    ref.backward()
    for p, r in zip(preds, refs):
        torch.testing.assert_close(p.grad, r.grad, **KERNEL_TOL[dtype])
    # One tensor and one mask; gradient into a target that requires grad (reference path).
    t = target.float().requires_grad_(True)
    t_ref = t.detach().clone().requires_grad_(True)
    K.jepa_latent_loss(preds[0].detach().float(), t, masks[0], loss_exp).backward()
    ref_loss([preds[0].detach().float()], t_ref, masks[:1], loss_exp).backward()
    torch.testing.assert_close(t.grad, t_ref.grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="one per mask"):
        K.jepa_latent_loss(preds, target, masks[:1])
    with pytest.raises(ValueError, match="loss_exp must be > 0"):
        K.jepa_latent_loss(preds, target, masks, loss_exp=0)


# ----------------------------------------------------------------------------- README


def readme_section_code(heading="## Use salt_fast kernels in your JEPA code"):
    text = (ROOT / "README.md").read_text()
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_snippets_run(tmp_path, monkeypatch):
    blocks = readme_section_code()
    assert len(blocks) >= 2  # the kernel swap and the checkpoint round trip
    monkeypatch.chdir(tmp_path)  # the checkpoint snippet writes a file
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_snippet"})
