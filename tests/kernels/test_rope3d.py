"""3D RoPE reference: the conventions of SPEC §2, checked against independent formulations."""

import math

import pytest
import torch

from salt_fast.kernels.rope3d import apply_rope3d, rope3d_axis_dim, rope3d_cos_sin, rope3d_rotate, token_coords

HEAD_DIMS = [24, 32, 64, 80, 88, 104]
FP32_TABLES = {"atol": 1e-5, "rtol": 1e-5}  # fp32 angles by contract: ~1e-6 rad at position 13


def random_ids(batch, n, grid):
    total = grid[0] * grid[1] * grid[2]
    return torch.stack([torch.randperm(total)[:n].sort().values for _ in range(batch)])


def standard_by_complex(x, ids, grid):
    """Standard mode written as complex multiplication, one axis chunk at a time."""
    d = rope3d_axis_dim(x.shape[-1])
    coords = token_coords(ids, grid).double()  # [B, N, 3]
    omega = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) / (d // 2))
    out = x.double().clone()
    for axis in range(3):
        chunk = x[..., axis * d : (axis + 1) * d].double()
        z = torch.complex(chunk[..., 0::2], chunk[..., 1::2])
        angle = coords[:, None, :, axis, None] * omega  # [B, 1, N, d/2]
        z = z * torch.polar(torch.ones_like(angle), angle)
        out[..., axis * d : (axis + 1) * d : 2] = z.real
        out[..., axis * d + 1 : (axis + 1) * d : 2] = z.imag
    return out


def vjepa2_transcription(x, ids, grid):
    """V-JEPA 2's rotation as its code computes it: per axis, a tiled frequency vector
    (cos/sin repeated twice) and the pair swap (-x2, x1), chunks concatenated, rest untouched."""
    T, H, W = grid
    d = 2 * ((x.shape[-1] // 3) // 2)
    ids = ids.double()
    positions = [torch.floor(ids / (H * W)), torch.floor((ids % (H * W)) / W), ids % W]
    pieces = []
    for axis, pos in enumerate(positions):
        chunk = x[..., axis * d : (axis + 1) * d].double()
        omega = torch.arange(d // 2, dtype=torch.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        freq = pos[:, None, :, None] * omega  # [B, 1, N, d/2]
        emb_sin = freq.sin().repeat(1, 1, 1, 2)
        emb_cos = freq.cos().repeat(1, 1, 1, 2)
        y = chunk.unflatten(-1, (-1, 2))
        y1, y2 = y.unbind(dim=-1)
        y = torch.stack((-y2, y1), dim=-1).flatten(-2)
        pieces.append(chunk * emb_cos + y * emb_sin)
    pieces.append(x[..., 3 * d :].double())
    return torch.cat(pieces, dim=-1)


@pytest.mark.parametrize("head_dim", HEAD_DIMS + [6, 7, 65])
def test_standard_matches_complex_rotation(head_dim):
    grid = (4, 5, 6)
    x = torch.randn(2, 3, 17, head_dim, dtype=torch.float64)
    ids = random_ids(2, 17, grid)
    torch.testing.assert_close(apply_rope3d(x, ids, grid), standard_by_complex(x, ids, grid), **FP32_TABLES)


@pytest.mark.parametrize("head_dim", HEAD_DIMS + [7])
def test_vjepa2_matches_direct_transcription(head_dim):
    grid = (8, 14, 14)
    x = torch.randn(2, 2, 50, head_dim, dtype=torch.float64)
    ids = random_ids(2, 50, grid)
    torch.testing.assert_close(apply_rope3d(x, ids, grid, mode="vjepa2"), vjepa2_transcription(x, ids, grid), **FP32_TABLES)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_standard_preserves_norms_and_vjepa2_does_not(head_dim):
    grid = (8, 14, 14)
    x = torch.randn(2, 4, 64, head_dim, dtype=torch.float64)
    ids = random_ids(2, 64, grid)
    torch.testing.assert_close(apply_rope3d(x, ids, grid).norm(dim=-1), x.norm(dim=-1), **FP32_TABLES)
    # The tiled convention turns the two members of a pair by different angles: not orthogonal.
    assert not torch.allclose(apply_rope3d(x, ids, grid, mode="vjepa2").norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_standard_scores_depend_only_on_position_difference(head_dim):
    grid = (8, 14, 14)
    T, H, W = grid
    q = torch.randn(1, 1, 1, head_dim, dtype=torch.float64)
    k = torch.randn(1, 1, 1, head_dim, dtype=torch.float64)

    def score(p_q, p_k):
        flat = lambda p: p[0] * H * W + p[1] * W + p[2]  # noqa: E731
        rq = apply_rope3d(q, torch.tensor([[flat(p_q)]]), grid)
        rk = apply_rope3d(k, torch.tensor([[flat(p_k)]]), grid)
        return (rq * rk).sum().item()

    base = score((1, 2, 3), (4, 7, 5))
    for shift in [(1, 0, 0), (0, 3, 0), (0, 0, 6), (2, 4, 1)]:
        moved = score(tuple(a + s for a, s in zip((1, 2, 3), shift)), tuple(a + s for a, s in zip((4, 7, 5), shift)))
        assert math.isclose(moved, base, rel_tol=1e-5, abs_tol=1e-5)
    # ...and does depend on the difference itself, on every axis. With q == k the score peaks at
    # zero offset and a unit step on any axis lowers it by sum(1 - cos(theta)) over that axis's
    # pairs, which is large; random q, k could make a low-frequency axis change by ~1e-3 (flaky).
    ones = torch.ones(1, 1, 1, head_dim, dtype=torch.float64)
    q, k = ones, ones
    at_zero = score((1, 2, 3), (1, 2, 3))
    for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
        assert score((1, 2, 3), other) < at_zero - 0.1


@pytest.mark.parametrize("mode", ["standard", "vjepa2"])
def test_ids_none_equals_arange(mode):
    grid = (3, 4, 5)
    x = torch.randn(2, 3, 60, 32)
    ids = torch.arange(60).expand(2, 60)
    torch.testing.assert_close(apply_rope3d(x, None, grid, mode), apply_rope3d(x, ids, grid, mode))


@pytest.mark.parametrize("head_dim", [64, 88, 104, 7])
def test_leftover_channels_pass_through(head_dim):
    grid = (2, 3, 4)
    x = torch.randn(1, 2, 24, head_dim)
    r = 3 * rope3d_axis_dim(head_dim)
    for mode in ["standard", "vjepa2"]:
        out = apply_rope3d(x, None, grid, mode)
        assert torch.equal(out[..., r:], x[..., r:])
        assert not torch.allclose(out[..., :r], x[..., :r])


def test_axis_dims_and_origin_token():
    assert [rope3d_axis_dim(h) for h in HEAD_DIMS] == [8, 10, 20, 26, 28, 34]
    x = torch.randn(1, 2, 1, 64)
    # Token 0 sits at the origin: every angle is 0, the rotation is the identity.
    torch.testing.assert_close(apply_rope3d(x, torch.zeros(1, 1, dtype=torch.long), (8, 14, 14)), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_io_matches_fp32(dtype):
    grid = (8, 14, 14)
    x = torch.randn(2, 4, 40, 64)
    ids = random_ids(2, 40, grid)
    for mode in ["standard", "vjepa2"]:
        out = apply_rope3d(x.to(dtype), ids, grid, mode)
        assert out.dtype == dtype
        ref = apply_rope3d(x.to(dtype).float(), ids, grid, mode)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("mode", ["standard", "vjepa2"])
def test_gradcheck_and_backward_is_transpose(mode):
    grid = (3, 4, 5)
    x = torch.randn(2, 2, 9, 24, dtype=torch.float64, requires_grad=True)
    ids = random_ids(2, 9, grid)
    assert torch.autograd.gradcheck(lambda t: apply_rope3d(t, ids, grid, mode), (x,))
    # <R x, y> == <x, R^T y>: for the orthogonal mode R^T is the inverse rotation.
    if mode == "standard":
        y = torch.randn_like(x)
        cos, sin = rope3d_cos_sin(ids, grid, 24)
        inverse = rope3d_rotate(y.detach(), cos, -sin)
        lhs = (apply_rope3d(x.detach(), ids, grid) * y).sum()
        torch.testing.assert_close(lhs, (x.detach() * inverse).sum(), **FP32_TABLES)


def test_q_and_k_rotate_in_one_call():
    grid = (2, 4, 4)
    qk = torch.randn(2, 3, 2, 32, 64)  # [q|k, B, heads, N, head_dim]
    ids = random_ids(3, 32, grid)
    cos, sin = rope3d_cos_sin(ids, grid, 64)
    both = rope3d_rotate(qk, cos, sin)
    torch.testing.assert_close(both[0], apply_rope3d(qk[0], ids, grid))
    torch.testing.assert_close(both[1], apply_rope3d(qk[1], ids, grid))


def test_bad_inputs_name_the_problem():
    x = torch.randn(1, 2, 10, 64)
    with pytest.raises(ValueError, match="unknown RoPE mode"):
        apply_rope3d(x, None, (1, 2, 5), mode="rotary")
    with pytest.raises(ValueError, match="ids=None needs N"):
        apply_rope3d(x, None, (2, 2, 2))
    with pytest.raises(ValueError, match="integer tensor"):
        apply_rope3d(x, torch.zeros(1, 10), (1, 2, 5))
    with pytest.raises(ValueError, match="grid"):
        apply_rope3d(x, None, (1, 0, 5))
    with pytest.raises(ValueError, match="head_dim"):
        apply_rope3d(x[0], None, (1, 2, 5))
