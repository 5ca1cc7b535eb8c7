"""3D RoPE Triton kernels (run in Triton's interpreter on CPU) against the PyTorch reference.

Every test forces the kernel path with SALT_FAST_KERNELS=triton and computes its expected
values with SALT_FAST_KERNELS=reference. Outputs are poisoned (NaN-filled allocations, or
untouched slots/channels compared bitwise) so that an element the kernel fails to write fails.
"""

import math

import pytest
import torch

from salt_fast.kernels import rope3d as R
from salt_fast.kernels.rope3d import apply_rope3d, rope3d_axis_dim, rope3d_cos_sin, rope3d_qkv_

pytest.importorskip("triton")

HEAD_DIMS = [24, 32, 64, 80, 88, 104, 7]
MODES = ["standard", "vjepa2"]
GRID = (3, 4, 5)  # 60 tokens
FP32 = {"atol": 2e-6, "rtol": 1e-5}  # fp32 math both ways: ~1 ulp apart (sin/cos libraries differ)


def tol(dtype):
    """At least one ulp of the I/O dtype (the interpreter truncates bf16 stores, the reference rounds)."""
    if dtype == torch.float32:
        return FP32
    eps = torch.finfo(dtype).eps
    return {"atol": eps, "rtol": 2 * eps}


def random_ids(batch, n, grid=GRID):
    total = grid[0] * grid[1] * grid[2]
    return torch.stack([torch.randperm(total)[:n] for _ in range(batch)])  # unsorted on purpose


@pytest.fixture
def kernels(monkeypatch):
    """``kernels("triton" | "reference", fn, *args)`` runs ``fn`` with that implementation."""

    def run(choice, fn, *args, **kwargs):
        monkeypatch.setenv("SALT_FAST_KERNELS", choice)
        return fn(*args, **kwargs)

    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    return run


@pytest.fixture
def launches(monkeypatch):
    """Counts kernel launches (so a silent fallback to the reference cannot pass)."""
    calls = []
    launch = R._launch

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return launch(*args, **kwargs)

    monkeypatch.setattr(R, "_launch", counting)
    return calls


@pytest.fixture
def poisoned(monkeypatch):
    """New tensors start out NaN (and ints at -1), so any element the kernel does not write shows."""
    empty_like, empty = torch.empty_like, torch.empty

    def fill(t):
        return t.fill_(math.nan) if t.is_floating_point() else t.fill_(-1)

    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))
    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))


@pytest.fixture
def small_blocks(monkeypatch):
    """Several token blocks (N not a multiple of the block) and one head per program."""
    monkeypatch.setattr(R, "_launch_config", lambda batch, n, heads, block_p, device: (8, 1, 4))


def rope_and_grads(choice, kernels, x, ids, mode, grad_out):
    x = x.detach().requires_grad_()
    y = kernels(choice, apply_rope3d, x, ids, GRID, mode)
    (g,) = torch.autograd.grad(y, x, grad_out)
    return y.detach(), g


# ---------------------------------------------------------------------------------------
# apply_rope3d (out of place)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("mode", MODES)
def test_apply_forward_and_backward_match_reference(mode, head_dim, kernels, launches, poisoned):
    x = torch.randn(2, 3, 37, head_dim)
    ids = random_ids(2, 37)
    grad_out = torch.randn_like(x)
    y, g = rope_and_grads("triton", kernels, x, ids, mode, grad_out)
    assert [c["backward"] for c in launches] == [False, True]
    y_ref, g_ref = rope_and_grads("reference", kernels, x, ids, mode, grad_out)
    torch.testing.assert_close(y, y_ref, **FP32)
    torch.testing.assert_close(g, g_ref, **FP32)
    r = 3 * rope3d_axis_dim(head_dim)
    assert torch.equal(y[..., r:], x[..., r:]) and torch.equal(g[..., r:], grad_out[..., r:])


@pytest.mark.parametrize("head_dim", [24, 88, 7])
@pytest.mark.parametrize("mode", MODES)
def test_apply_several_token_blocks_and_head_programs(mode, head_dim, kernels, launches, poisoned, small_blocks):
    x = torch.randn(2, 3, 37, head_dim)  # 37 tokens: blocks of 8, the last one partial
    ids = random_ids(2, 37)
    grad_out = torch.randn_like(x)
    y, g = rope_and_grads("triton", kernels, x, ids, mode, grad_out)
    y_ref, g_ref = rope_and_grads("reference", kernels, x, ids, mode, grad_out)
    assert len(launches) == 2
    torch.testing.assert_close(y, y_ref, **FP32)
    torch.testing.assert_close(g, g_ref, **FP32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_apply_io_dtypes(mode, dtype, kernels, launches, poisoned):
    x = torch.randn(2, 3, 29, 64).to(dtype)
    ids = random_ids(2, 29)
    grad_out = torch.randn_like(x)
    y, g = rope_and_grads("triton", kernels, x, ids, mode, grad_out)
    y_ref, g_ref = rope_and_grads("reference", kernels, x, ids, mode, grad_out)
    assert y.dtype == g.dtype == dtype and len(launches) == 2
    torch.testing.assert_close(y.float(), y_ref.float(), **tol(dtype))
    torch.testing.assert_close(g.float(), g_ref.float(), **tol(dtype))


@pytest.mark.parametrize("mode", MODES)
def test_apply_ids_variants(mode, kernels, launches, poisoned):
    x = torch.randn(2, 2, 60, 32)
    expected = kernels("reference", apply_rope3d, x, None, GRID, mode)
    torch.testing.assert_close(kernels("triton", apply_rope3d, x, None, GRID, mode), expected, **FP32)
    arange = torch.arange(60).expand(2, 60)  # stride 0 on the batch
    torch.testing.assert_close(kernels("triton", apply_rope3d, x, arange, GRID, mode), expected, **FP32)
    # One id row shared by the batch, int32, non-contiguous.
    ids = random_ids(1, 40).int().repeat_interleave(2, dim=1)[:, ::2]
    assert ids.stride(1) == 2
    sub = x[:, :, :40]
    torch.testing.assert_close(
        kernels("triton", apply_rope3d, sub, ids, GRID, mode), kernels("reference", apply_rope3d, sub, ids, GRID, mode), **FP32
    )
    assert len(launches) == 3


def test_apply_strided_input_and_large_positions(kernels, launches, poisoned):
    grid = (64, 64, 64)  # angles up to ~63 rad
    base = torch.randn(2, 40, 4, 80)
    x = base.transpose(1, 2)[:, :3]  # [2, 3, 40, 80], heads and tokens strided
    ids = torch.randint(0, 64**3, (2, 40))
    x_t = torch.randn(2, 3, 80, 40).transpose(-1, -2)  # last dim not contiguous
    for mode in MODES:
        for inp in (x, x_t):
            torch.testing.assert_close(
                kernels("triton", apply_rope3d, inp, ids, grid, mode),
                kernels("reference", apply_rope3d, inp, ids, grid, mode),
                **FP32,
            )
    assert len(launches) == 4


@pytest.mark.parametrize("mode", MODES)
def test_apply_gradcheck_fp64(mode, kernels, launches):
    # fp64 I/O computes in fp64 (angles in fp32, as the reference): the map is exactly linear.
    # Tiny shapes: every finite-difference evaluation is a launch (~35 ms per program here).
    ids = random_ids(1, 3)
    for head_dim in (7, 12):  # with and without leftover channels
        x = torch.randn(1, 1, 3, head_dim, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: apply_rope3d(t, ids, GRID, mode), (x,))
    x = torch.randn(2, 2, 5, 24, dtype=torch.float64, requires_grad=True)
    ids = random_ids(2, 5)
    assert torch.autograd.gradcheck(lambda t: apply_rope3d(t, ids, GRID, mode), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda t: apply_rope3d(t, ids, GRID, mode), (x,), fast_mode=True)
    assert launches


@pytest.mark.parametrize("mode", MODES)
def test_backward_is_the_transpose_and_only_standard_inverts(mode, kernels, launches):
    x = torch.randn(2, 2, 30, 64, dtype=torch.float64)
    y = torch.randn_like(x)
    ids = random_ids(2, 30)
    rx = apply_rope3d(x, ids, GRID, mode)
    xr = x.clone().requires_grad_()
    (rty,) = torch.autograd.grad(apply_rope3d(xr, ids, GRID, mode), xr, y)
    torch.testing.assert_close((rx * y).sum(), (x * rty).sum())  # <R x, y> == <x, R^T y>
    assert len(launches) == 3
    cos, sin = rope3d_cos_sin(ids, GRID, 64, mode)
    undone = R.rope3d_rotate(rx, cos, -sin)  # rotation by -angle
    if mode == "standard":
        torch.testing.assert_close(undone, x, **FP32)
    else:
        assert not torch.allclose(undone, x, atol=1e-3)


# ---------------------------------------------------------------------------------------
# rope3d_qkv_ (in place on the packed projection)
# ---------------------------------------------------------------------------------------


def packed_qkv(batch, n, heads, head_dim, dtype=torch.float32, layout="contiguous"):
    if layout == "contiguous":
        return torch.randn(batch, n, 3, heads, head_dim).to(dtype)
    if layout == "padded":  # a slice of a wider projection output: odd row stride
        width = 3 * heads * head_dim
        return torch.randn(batch, n, width + 5).to(dtype)[..., :width].unflatten(-1, (3, heads, head_dim))
    # token-major buffer: batch stride smaller than the token stride
    return torch.randn(n, batch, 3, heads, head_dim).to(dtype).transpose(0, 1)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("mode", MODES)
def test_qkv_inplace_matches_reference(mode, head_dim, kernels, launches):
    qkv = packed_qkv(2, 37, 3, head_dim)
    ids = random_ids(2, 37)
    original = qkv.clone()
    out = kernels("triton", rope3d_qkv_, qkv, ids, GRID, mode)
    assert out is qkv and len(launches) == 1
    expected = kernels("reference", rope3d_qkv_, original.clone(), ids, GRID, mode)
    torch.testing.assert_close(qkv, expected, **FP32)
    r = 3 * rope3d_axis_dim(head_dim)
    assert torch.equal(qkv[:, :, 2], original[:, :, 2])  # v bitwise untouched
    assert torch.equal(qkv[..., r:], original[..., r:])  # leftover channels untouched
    q = kernels("reference", apply_rope3d, original[:, :, 0].transpose(1, 2), ids, GRID, mode)
    torch.testing.assert_close(qkv[:, :, 0].transpose(1, 2), q, **FP32)


@pytest.mark.parametrize("layout", ["padded", "token_major"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_qkv_dtypes_and_layouts(dtype, layout, kernels, launches, small_blocks):
    qkv = packed_qkv(2, 21, 2, 40, dtype, layout)
    original = qkv.clone()
    ids = random_ids(2, 21)
    for mode in MODES:
        qkv.copy_(original)
        kernels("triton", rope3d_qkv_, qkv, ids, GRID, mode)
        expected = kernels("reference", rope3d_qkv_, original.clone(), ids, GRID, mode)
        torch.testing.assert_close(qkv.float(), expected.float(), **tol(dtype))
        assert torch.equal(qkv[:, :, 2], original[:, :, 2])
        assert torch.equal(qkv[..., 36:], original[..., 36:])  # 40 = 3 * 12 + 4 leftover
    assert len(launches) == 2


def inplace_loss_grads(choice, kernels, x, ids, mode, weight, heads, head_dim, use_sum=False):
    x = x.detach().requires_grad_()
    qkv = (x * 1.0).unflatten(-1, (3, heads, head_dim))  # a view of a non-leaf, as after a Linear
    out = kernels(choice, rope3d_qkv_, qkv, ids, GRID, mode)
    loss = out.sum() if use_sum else (out * weight).sum()
    (g,) = torch.autograd.grad(loss, x)
    return out.detach(), g


def out_of_place_loss_grads(kernels, x, ids, mode, weight, heads, head_dim, use_sum=False):
    """The same loss through the out-of-place reference: q and k via apply_rope3d, v as is."""
    x = x.detach().requires_grad_()
    q, k, v = x.unflatten(-1, (3, heads, head_dim)).unbind(2)  # [B, N, heads, head_dim]
    q, k = (kernels("reference", apply_rope3d, t.transpose(1, 2), ids, GRID, mode).transpose(1, 2) for t in (q, k))
    out = torch.stack((q, k, v), dim=2)
    loss = out.sum() if use_sum else (out * weight).sum()
    (g,) = torch.autograd.grad(loss, x)
    return out.detach(), g


@pytest.mark.parametrize("head_dim", [24, 64, 88, 7])
@pytest.mark.parametrize("mode", MODES)
def test_qkv_grad_equals_out_of_place_reference(mode, head_dim, kernels, launches, poisoned):
    heads = 2
    x = torch.randn(2, 33, 3 * heads * head_dim)
    ids = random_ids(2, 33)
    weight = torch.randn(2, 33, 3, heads, head_dim)
    out_ref, g_ref = out_of_place_loss_grads(kernels, x, ids, mode, weight, heads, head_dim)
    out, g = inplace_loss_grads("triton", kernels, x, ids, mode, weight, heads, head_dim)
    assert [c["backward"] for c in launches] == [False, True]
    torch.testing.assert_close(out, out_ref, **FP32)
    torch.testing.assert_close(g, g_ref, **FP32)
    # v's grad passes through bitwise; so do the leftover channels' grads.
    r = 3 * rope3d_axis_dim(head_dim)
    g5 = g.unflatten(-1, (3, heads, head_dim))
    assert torch.equal(g5[:, :, 2], weight[:, :, 2]) and torch.equal(g5[..., r:], weight[..., r:])
    # The reference in-place path (slice assignment) gives the same grads.
    out_r, g_r = inplace_loss_grads("reference", kernels, x, ids, mode, weight, heads, head_dim)
    torch.testing.assert_close(out_r, out_ref, **FP32)
    torch.testing.assert_close(g_r, g_ref, **FP32)


def test_qkv_backward_with_expanded_grad_and_shared_grad(kernels, launches):
    """A sum's grad is an expanded (stride-0) tensor and may be shared: it must not be written to."""
    heads, head_dim = 2, 32
    x = torch.randn(2, 60, 3 * heads * head_dim)
    for mode in MODES:
        _, g_ref = out_of_place_loss_grads(kernels, x, None, mode, None, heads, head_dim, use_sum=True)
        _, g = inplace_loss_grads("triton", kernels, x, None, mode, None, heads, head_dim, use_sum=True)
        torch.testing.assert_close(g, g_ref, **FP32)
    # The same upstream grad feeds rope3d_qkv_ and another branch: the other branch sees it intact.
    xr = x.detach().requires_grad_()
    qkv = (xr * 1.0).unflatten(-1, (3, heads, head_dim))
    other = xr * 2.0
    out = kernels("triton", rope3d_qkv_, qkv, None, GRID).flatten(-3) + other
    upstream = torch.randn_like(out)
    kept = upstream.clone()
    (g,) = torch.autograd.grad(out, xr, upstream)
    assert torch.equal(upstream, kept)
    _, g_rot = out_of_place_loss_grads(kernels, x, None, "standard", kept.unflatten(-1, (3, heads, head_dim)), heads, head_dim)
    torch.testing.assert_close(g, g_rot + 2.0 * kept, **FP32)


def test_qkv_gradcheck_fp64(kernels, launches):
    ids = random_ids(1, 2)
    x = torch.randn(1, 2, 3, 1, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rope3d_qkv_(t * 1.0, ids, GRID, "vjepa2"), (x,))
    ids = random_ids(2, 5)
    x = torch.randn(2, 5, 3, 2, 12, dtype=torch.float64, requires_grad=True)
    for mode in MODES:
        assert torch.autograd.gradcheck(lambda t: rope3d_qkv_(t * 1.0, ids, GRID, mode), (x,), fast_mode=True)
    assert launches


def test_qkv_cos_sin_tables(kernels, launches):
    qkv = packed_qkv(2, 60, 2, 64)
    ids = random_ids(2, 60)
    cos_sin = rope3d_cos_sin(ids, GRID, 64, "vjepa2")
    with_tables = kernels("reference", rope3d_qkv_, qkv.clone(), ids, GRID, "vjepa2", cos_sin=cos_sin)
    without = kernels("reference", rope3d_qkv_, qkv.clone(), ids, GRID, "vjepa2")
    assert torch.equal(with_tables, without)
    # Full-grid tables ([1, N, 3d]) broadcast over the batch.
    full = kernels("reference", rope3d_qkv_, qkv.clone(), None, GRID, cos_sin=rope3d_cos_sin(None, GRID, 64))
    torch.testing.assert_close(full, kernels("reference", rope3d_qkv_, qkv.clone(), None, GRID), **FP32)
    assert not launches
    # The kernel path ignores the tables (angles are computed in-kernel).
    wrong = (torch.zeros_like(cos_sin[0]), torch.zeros_like(cos_sin[1]))
    torch.testing.assert_close(kernels("triton", rope3d_qkv_, qkv.clone(), ids, GRID, "vjepa2", cos_sin=wrong), without, **FP32)
    assert len(launches) == 1


def test_nothing_to_rotate_is_identity(kernels, launches):
    qkv = packed_qkv(1, 60, 2, 5)  # head_dim 5: d = 0
    original = qkv.clone()
    assert kernels("triton", rope3d_qkv_, qkv, None, GRID) is qkv and torch.equal(qkv, original)
    x = torch.randn(1, 2, 60, 4)
    assert torch.equal(kernels("triton", apply_rope3d, x, None, GRID), x)
    assert not launches


def test_launch_config_splits_heads_evenly(monkeypatch):
    monkeypatch.setattr(R, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    for batch, n, heads in [(1, 1568, 16), (1, 1568, 12), (1, 40, 22), (64, 1568, 16), (2, 7, 3)]:
        for block_p in (16, 32, 64):
            block_n, per_program, _ = R._launch_config(batch, n, heads, block_p, cuda)
            assert heads % per_program == 0 and block_n * 2 * block_p <= max(R._TILE_ELEMENTS, 2 * block_p)
    assert R._launch_config(64, 1568, 16, 32, cuda)[1] == 16  # enough programs: all heads share the angles


# ---------------------------------------------------------------------------------------
# Dispatch and validation
# ---------------------------------------------------------------------------------------


def test_dispatch_honours_salt_fast_kernels(monkeypatch, launches):
    x = torch.randn(1, 2, 60, 24)
    qkv = packed_qkv(1, 60, 2, 24)
    monkeypatch.setenv("SALT_FAST_KERNELS", "reference")
    apply_rope3d(x, None, GRID)
    rope3d_qkv_(qkv, None, GRID)
    assert not launches
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    apply_rope3d(x, None, GRID)
    rope3d_qkv_(qkv, None, GRID)
    assert len(launches) == 2
    monkeypatch.setenv("SALT_FAST_KERNELS", "auto")  # CPU tensors: the reference
    apply_rope3d(x, None, GRID)
    assert len(launches) == 2
    monkeypatch.setenv("SALT_FAST_KERNELS", "cuda")
    with pytest.raises(ValueError, match="SALT_FAST_KERNELS"):
        apply_rope3d(x, None, GRID)
    with pytest.raises(ValueError, match="SALT_FAST_KERNELS"):
        rope3d_qkv_(qkv, None, GRID)


@pytest.mark.parametrize("choice", ["triton", "reference"])
def test_qkv_bad_inputs_name_the_problem(choice, monkeypatch):
    monkeypatch.setenv("SALT_FAST_KERNELS", choice)
    qkv = packed_qkv(2, 10, 2, 24)
    ids = random_ids(2, 10)
    with pytest.raises(ValueError, match=r"\[B, N, 3, heads, head_dim\]"):
        rope3d_qkv_(qkv[:, :, :2], ids, GRID)
    with pytest.raises(ValueError, match="contiguous"):
        rope3d_qkv_(torch.randn(2, 10, 3, 24, 2).transpose(-1, -2), ids, GRID)
    with pytest.raises(ValueError, match="float"):
        rope3d_qkv_(torch.zeros(2, 10, 3, 2, 24, dtype=torch.long), ids, GRID)
    with pytest.raises(ValueError, match="unknown RoPE mode"):
        rope3d_qkv_(qkv, ids, GRID, mode="rotary")
    with pytest.raises(ValueError, match="integer tensor"):
        rope3d_qkv_(qkv, ids.float(), GRID)
    with pytest.raises(ValueError, match="does not match"):
        rope3d_qkv_(qkv, ids[:, :9], GRID)
    with pytest.raises(ValueError, match="ids=None needs N"):
        rope3d_qkv_(qkv, None, GRID)
    with pytest.raises(ValueError, match="grid"):
        rope3d_qkv_(qkv, ids, (3, 4))
    with pytest.raises(ValueError, match="device"):
        rope3d_qkv_(qkv, ids.to("meta"), GRID)
    with pytest.raises(ValueError, match="cos_sin"):
        rope3d_qkv_(qkv, ids, GRID, cos_sin=rope3d_cos_sin(ids, GRID, 32))
    with pytest.raises(ValueError, match="device"):
        apply_rope3d(torch.randn(2, 2, 10, 24), ids.to("meta"), GRID)
