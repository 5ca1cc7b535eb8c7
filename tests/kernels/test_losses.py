"""Fused losses: Triton kernels (interpreted on CPU) vs their references vs formulas written out.

Every kernel run poisons its output buffers with NaN first, so an element a kernel forgets
to write fails the comparison.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from salt_fast.kernels import _fused_loss, _launch, latent_loss
from salt_fast.kernels.latent_loss import latent_l1_loss
from salt_fast.kernels.pixel_loss import pixel_mse_loss, pixel_mse_loss_reference, pixel_targets_reference
from inside_ops import run_inside

pytest.importorskip("triton")

GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # bf16 stores truncate in the interpreter
PRED_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def kernels(monkeypatch):
    """``kernels("triton" | "reference" | "auto")`` selects the implementation; kernel buffers start as NaN."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_launch, "new_buffer", poisoned)

    def select(mode):
        monkeypatch.setenv("SALT_FAST_KERNELS", mode)

    return select


def loss_and_grad(fn, pred, *args, **kwargs):
    p = pred.detach().clone().requires_grad_(True)
    loss = fn(p, *args, **kwargs)
    loss.backward()
    return loss.detach(), p.grad


def random_ids(batch, n, k, unique=True):
    if unique:
        return torch.stack([torch.randperm(n)[:k] for _ in range(batch)])
    return torch.randint(0, n, (batch, k))


def with_invalid(batch, k):
    valid = torch.rand(batch, k) < 0.7
    valid[0] = False  # a sample with no valid token at all
    valid[-1, 0] = True  # and at least one valid token somewhere
    return valid


# --------------------------------------------------------------------------------------
# Latent L1 loss
# --------------------------------------------------------------------------------------


def latent_formula(pred, target, ids, eps=1e-5, valid=None):
    """V-JEPA 2's loss written out in fp64: layer_norm of the whole target, gather, |.|, mean."""
    b = pred.shape[0]
    ids = ids if valid is None else ids.where(valid, 0)
    normed = F.layer_norm(target.double(), target.shape[-1:], eps=eps)
    picked = normed[torch.arange(b)[:, None], ids]
    diff = pred.double() - picked
    keep = torch.ones(ids.shape, dtype=torch.bool) if valid is None else valid
    count = max(int(keep.sum()) * pred.shape[-1], 1)
    loss = (diff.abs() * keep[..., None]).sum() / count
    grad = diff.sign() * keep[..., None] / count
    return loss, grad, diff


def check_latent(kernels, pred, target, ids, valid=None, eps=1e-5):
    kernels("triton")
    loss, grad = loss_and_grad(latent_l1_loss, pred, target, ids, eps=eps, valid=valid)
    kernels("reference")
    ref_loss, ref_grad = loss_and_grad(latent_l1_loss, pred, target, ids, eps=eps, valid=valid)
    f_loss, f_grad, diff = latent_formula(pred, target, ids, eps, valid)

    assert loss.dtype == ref_loss.dtype == torch.float32 and loss.shape == ()
    assert grad.dtype == pred.dtype and grad.shape == pred.shape
    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(loss.double(), f_loss, rtol=1e-5, atol=1e-7)
    # Signs are only certain away from diff == 0; there the gradient is +-1/count or 0.
    sure = diff.abs() > 1e-4
    rtol = GRAD_RTOL[pred.dtype]
    torch.testing.assert_close(grad.double()[sure], f_grad[sure], rtol=rtol, atol=0)
    torch.testing.assert_close(grad.double()[sure], ref_grad.double()[sure], rtol=rtol, atol=0)
    assert (grad.double().abs() <= f_grad.abs().max() * (1 + rtol)).all()
    return loss, grad


LATENT_SHAPES = [  # (B, N, K, D): N = 37 and 19 are no multiple of any block; K from 1 to N
    (2, 37, 1, 384),
    (2, 37, 37, 100),
    (3, 37, 20, 1024),
    (1, 37, 11, 1408),
    (2, 19, 7, 100),
]


@pytest.mark.parametrize("dtype", PRED_DTYPES, ids=str)
@pytest.mark.parametrize("shape", LATENT_SHAPES, ids=str)
def test_latent_matches_reference_and_formula(kernels, shape, dtype):
    b, n, k, d = shape
    target = torch.randn(b, n, d) * 2.5 + 0.7  # raw teacher output: not zero-mean, not unit-var
    pred = torch.randn(b, k, d).to(dtype)
    check_latent(kernels, pred, target, random_ids(b, n, k))


@pytest.mark.parametrize("target_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_latent_low_precision_target_duplicate_int32_ids(kernels, target_dtype):
    target = (torch.randn(2, 23, 256) * 3).to(target_dtype)
    pred = torch.randn(2, 30, 256)
    check_latent(kernels, pred, target, random_ids(2, 23, 30, unique=False).int())  # int32 ids too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [100, 1024])
def test_latent_valid_mask(kernels, d, dtype):
    b, n, k = 3, 29, 13
    target, pred = torch.randn(b, n, d), torch.randn(b, k, d).to(dtype)
    ids, valid = random_ids(b, n, k), with_invalid(b, k)
    ids[~valid] = torch.randint(-10**6, 10**6, ids[~valid].shape)  # padding ids may be anything: never read
    _, grad = check_latent(kernels, pred, target, ids, valid)
    assert (grad[~valid] == 0).all()


def test_finish_mean_sums_every_partial_in_fixed_order():
    """The final one-program reduction loops over blocks of 1024 partials (more than tests launch)."""
    partials = torch.rand(5000)
    out = _fused_loss.finish_mean(partials, None, 1234.0, 1, torch.float32)
    torch.testing.assert_close(out.double(), partials.double().sum() / 1234.0, rtol=1e-6, atol=0)
    valid = torch.rand(77) < 0.5
    counted = _fused_loss.finish_mean(partials, valid.sum(), 0.0, 7, torch.float32)
    torch.testing.assert_close(counted.double(), partials.double().sum() / (int(valid.sum()) * 7), rtol=1e-6, atol=0)
    assert torch.equal(_fused_loss.finish_mean(partials, valid.sum(), 0.0, 7, torch.float32), counted)


def test_latent_no_valid_token(kernels):
    target, pred, ids = torch.randn(2, 9, 64), torch.randn(2, 4, 64), random_ids(2, 9, 4)
    valid = torch.zeros(2, 4, dtype=torch.bool)
    for mode in ("triton", "reference"):
        kernels(mode)
        loss, grad = loss_and_grad(latent_l1_loss, pred, target, ids, valid=valid)
        assert loss.item() == 0 and torch.equal(grad, torch.zeros_like(pred))


def test_latent_deterministic_and_grad_scaling(kernels):
    kernels("triton")
    b, n, k, d = 4, 50, 40, 384
    target, pred, ids, valid = torch.randn(b, n, d), torch.randn(b, k, d), random_ids(b, n, k), with_invalid(b, k)
    first = loss_and_grad(latent_l1_loss, pred, target, ids, valid=valid)
    second = loss_and_grad(latent_l1_loss, pred, target, ids, valid=valid)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with torch.no_grad():  # forward-only launch (no gradient written): the same loss, bit for bit
        assert torch.equal(latent_l1_loss(pred, target, ids, valid=valid), first[0])
    # Backward scales the stored gradient by grad_output, and a retained graph can run twice.
    p = pred.clone().requires_grad_(True)
    loss = latent_l1_loss(p, target, ids, valid=valid)
    (loss * 3.0).backward(retain_graph=True)
    torch.testing.assert_close(p.grad, 3.0 * first[1])
    loss.backward()
    torch.testing.assert_close(p.grad, 4.0 * first[1])


def test_latent_strided_inputs_and_eps(kernels):
    b, n, k, d = 2, 21, 9, 96
    target = torch.randn(b, d, n).transpose(1, 2)  # [B, N, D] with channel stride N
    pred = torch.randn(b, d, k).transpose(1, 2)
    check_latent(kernels, pred, target, random_ids(b, n, k), eps=1e-3)
    small = torch.randn(b, n, d) * 1e-3  # eps matters when the variance is tiny
    check_latent(kernels, pred, small, random_ids(b, n, k), eps=1e-5)
    check_latent(kernels, pred, small, random_ids(b, n, k), eps=1e-4)


def test_latent_gradcheck_fp64(kernels):
    kernels("triton")
    target = torch.randn(2, 6, 3, dtype=torch.float64)  # ~25 ms per interpreted call: keep it tiny
    pred = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    ids, valid = random_ids(2, 6, 2), torch.tensor([[True, False], [True, True]])
    assert torch.autograd.gradcheck(lambda p: latent_l1_loss(p, target, ids), (pred,))
    assert torch.autograd.gradcheck(lambda p: latent_l1_loss(p, target, ids, valid=valid), (pred,))
    # A target that needs grad takes the reference (the kernel differentiates pred only).
    t = target.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, t: latent_l1_loss(p, t, ids, valid=valid), (pred, t))


def test_latent_dispatch(kernels, monkeypatch):
    calls = []
    real = latent_loss._latent_l1_triton
    monkeypatch.setattr(latent_loss, "_latent_l1_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    target, pred, ids = torch.randn(2, 9, 16), torch.randn(2, 4, 16), random_ids(2, 9, 4)
    for mode, launches in (("auto", 0), ("reference", 0), ("triton", 1)):  # auto: CPU tensors -> reference
        kernels(mode)
        calls.clear()
        latent_l1_loss(pred, target, ids)
        assert len(calls) == launches, mode
    with pytest.raises(ValueError, match="ids"):
        latent_l1_loss(pred, target, ids[:, :3])
    with pytest.raises(ValueError, match="target"):
        latent_l1_loss(pred, target[..., :8], ids)
    with pytest.raises(ValueError, match="valid"):
        latent_l1_loss(pred, target, ids, valid=torch.ones(2, 5, dtype=torch.bool))


class NewStorages(TorchDispatchMode):
    """Records (numel, dtype) of every tensor an op returns in fresh storage (an allocation)."""

    def __init__(self):
        super().__init__()
        self.allocs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "salt_fast":  # its allocations are recorded inside
            return run_inside(self, func, args, kwargs or {})
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.allocs.append((t.numel(), t.dtype, str(func)))
        return out


def test_latent_memory(kernels):
    """No [B, N, D] buffer and no normalized copy: the gradient is the only [B, K, D] allocation."""
    kernels("triton")
    b, n, k, d = 2, 40, 10, 64
    target, pred, ids, valid = torch.randn(b, n, d), torch.randn(b, k, d), random_ids(b, n, k), with_invalid(b, k)
    with torch.no_grad(), NewStorages() as mode:
        latent_l1_loss(pred, target, ids, valid=valid)
    assert mode.allocs and max(numel for numel, _, _ in mode.allocs) < b * k * d, mode.allocs
    p = pred.clone().requires_grad_(True)
    with NewStorages() as mode:
        latent_l1_loss(p, target, ids, valid=valid)
    big = [a for a in mode.allocs if a[0] >= b * k * d]
    assert len(big) == 1 and big[0][:2] == (b * k * d, torch.float32), mode.allocs


# --------------------------------------------------------------------------------------
# Pixel MSE loss
# --------------------------------------------------------------------------------------


def pixel_formula(pred, video, ids, tubelet, patch, valid=None):
    """VideoMAE's target written out token by token in fp64 (slice the patch, torch.std per channel)."""
    _, c, _, h, w = video.shape
    hp, wp = h // patch, w // patch
    ids = ids if valid is None else ids.where(valid, 0)
    targets = torch.empty(pred.shape, dtype=torch.float64)
    for bi in range(ids.shape[0]):
        for ki in range(ids.shape[1]):
            tok = int(ids[bi, ki])
            t, y, x = tok // (hp * wp), (tok // wp) % hp, tok % wp
            cube = video[bi, :, t * tubelet : (t + 1) * tubelet, y * patch : (y + 1) * patch, x * patch : (x + 1) * patch]
            vals = cube.double().reshape(c, -1)  # [C, (dt dy dx)]
            vals = (vals - vals.mean(dim=1, keepdim=True)) / (vals.std(dim=1, keepdim=True) + 1e-6)
            targets[bi, ki] = vals.t().reshape(-1)  # pixel-major, channel innermost
    diff = pred.double() - targets
    keep = torch.ones(ids.shape, dtype=torch.bool) if valid is None else valid
    count = max(int(keep.sum()) * pred.shape[-1], 1)
    return (diff.square() * keep[..., None]).sum() / count, 2 * diff * keep[..., None] / count, targets


def check_pixel(kernels, pred, video, ids, tubelet, patch, valid=None):
    kernels("triton")
    loss, grad = loss_and_grad(pixel_mse_loss, pred, video, ids, tubelet, patch, valid)
    kernels("reference")
    ref_loss, ref_grad = loss_and_grad(pixel_mse_loss, pred, video, ids, tubelet, patch, valid)
    f_loss, f_grad, _ = pixel_formula(pred, video, ids, tubelet, patch, valid)

    assert loss.dtype == torch.float32 and loss.shape == ()
    assert grad.dtype == pred.dtype and grad.shape == pred.shape
    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(loss.double(), f_loss, rtol=1e-5, atol=1e-7)
    count = max(int(ids.numel() if valid is None else valid.sum()) * pred.shape[-1], 1)
    # fp32 targets differ from fp64 ones by ~1e-5; fp16 gradients this small are subnormal (step 2**-24).
    tol = {"rtol": GRAD_RTOL[pred.dtype], "atol": 2e-4 / count + (2**-24 if pred.dtype == torch.float16 else 0)}
    # Each backend against the fp64 formula: two roundings that are each within tol of the
    # truth can be 2 * tol apart, so comparing them to each other at tol is flaky.
    torch.testing.assert_close(grad.double(), f_grad, **tol)
    torch.testing.assert_close(ref_grad.double(), f_grad, **tol)
    return loss, grad


def make_video(b, c, t, h, w, dtype=torch.float32):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, c, t, h, w), dtype=torch.uint8)
    # Per-channel offsets and scales, as in a real (unnormalized) clip. Scales stay >= 0.5: a
    # near-flat channel makes the fp32 target (x - mean) / std lose digits
    # in proportion to mean / std, which tests the conditioning, not the kernels' index math.
    scale = 0.5 + 1.5 * torch.rand(1, c, 1, 1, 1)
    return (torch.rand(b, c, t, h, w) * scale + torch.rand(1, c, 1, 1, 1)).to(dtype)


@pytest.mark.parametrize("dtype", PRED_DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_pixel_matches_reference_and_formula(kernels, k, dtype):
    video = make_video(2, 3, 4, 32, 48)  # grid 2 x 2 x 3 = 12 tokens, 1536 values per token
    pred = torch.randn(2, k, 1536).to(dtype)
    check_pixel(kernels, pred, video, random_ids(2, 12, k), 2, 16)


@pytest.mark.parametrize(
    "shape",  # (B, C, T, H, W, tubelet, patch, K)
    [
        (2, 3, 4, 24, 40, 2, 8, 30),  # patch 8: grid 2 x 3 x 5, every token
        (1, 3, 4, 24, 40, 2, 8, 7),
        (1, 2, 3, 12, 18, 1, 6, 18),  # 36 pixels per channel: not a power of two; C = 2
        (1, 4, 2, 16, 16, 2, 8, 3),  # C = 4
        (1, 1, 2, 8, 8, 1, 4, 4),  # C = 1, tiny patches
    ],
    ids=str,
)
def test_pixel_index_math(kernels, shape):
    b, c, t, h, w, tubelet, patch, k = shape
    n = (t // tubelet) * (h // patch) * (w // patch)
    pred = torch.randn(b, k, tubelet * patch * patch * c)
    check_pixel(kernels, pred, make_video(b, c, t, h, w), random_ids(b, n, k), tubelet, patch)


def test_pixel_targets_reference_layout():
    """The reference's patchify agrees with the per-token formula on every token."""
    video = make_video(2, 3, 4, 24, 16)
    ids = torch.arange(2 * 3 * 2).expand(2, -1)
    targets = pixel_targets_reference(video, 2, 8, torch.float64)
    _, _, expected = pixel_formula(torch.zeros(2, 12, 384), video, ids, 2, 8)
    torch.testing.assert_close(targets, expected)


@pytest.mark.parametrize("video_dtype", [torch.bfloat16, torch.float16, torch.uint8], ids=str)
def test_pixel_video_dtypes(kernels, video_dtype):
    video = make_video(1, 3, 2, 16, 32, video_dtype)
    check_pixel(kernels, torch.randn(1, 3, 384), video, random_ids(1, 4, 3), 2, 8)


def test_pixel_strided_video_and_pred(kernels):
    video = make_video(2, 4, 3, 16, 24).permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)  # [B,T,C,H,W] storage
    video = video[:, :3, :2]  # and a channel / frame slice
    assert not video.is_contiguous()
    pred = torch.randn(2, 384, 5).transpose(1, 2)
    check_pixel(kernels, pred, video, random_ids(2, 6, 5), 2, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pixel_valid_mask(kernels, dtype):
    video = make_video(3, 3, 4, 16, 24)
    ids, valid = random_ids(3, 12, 7), with_invalid(3, 7)
    ids[~valid] = torch.randint(-10**6, 10**6, ids[~valid].shape)  # padding ids may be anything: never read
    _, grad = check_pixel(kernels, torch.randn(3, 7, 384).to(dtype), video, ids, 2, 8, valid)
    assert (grad[~valid] == 0).all()
    kernels("triton")
    none = torch.zeros_like(valid)
    loss, grad = loss_and_grad(pixel_mse_loss, torch.randn(3, 7, 384), video, ids, 2, 8, none)
    assert loss.item() == 0 and (grad == 0).all()


def test_pixel_deterministic_and_no_grad(kernels):
    kernels("triton")
    video, pred, ids = make_video(2, 3, 4, 32, 48), torch.randn(2, 9, 1536), random_ids(2, 12, 9)
    first = loss_and_grad(pixel_mse_loss, pred, video, ids)
    second = loss_and_grad(pixel_mse_loss, pred, video, ids)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with torch.no_grad():
        assert torch.equal(pixel_mse_loss(pred, video, ids), first[0])
    p = pred.clone().requires_grad_(True)
    (0.5 * pixel_mse_loss(p, video, ids)).backward()
    torch.testing.assert_close(p.grad, 0.5 * first[1])


def test_pixel_gradcheck_fp64(kernels):
    kernels("triton")
    video = torch.randn(1, 2, 2, 4, 4, dtype=torch.float64)  # tubelet 1, patch 2: 8 tokens of 8 values
    pred = torch.randn(1, 2, 8, dtype=torch.float64, requires_grad=True)
    ids, valid = random_ids(1, 8, 2), torch.tensor([[False, True]])
    assert torch.autograd.gradcheck(lambda p: pixel_mse_loss(p, video, ids, 1, 2), (pred,))
    assert torch.autograd.gradcheck(lambda p: pixel_mse_loss(p, video, ids, 1, 2, valid), (pred,))


def test_pixel_shape_errors(kernels):
    kernels("triton")
    video, pred, ids = make_video(1, 3, 4, 32, 32), torch.randn(1, 2, 1536), random_ids(1, 8, 2)
    with pytest.raises(ValueError, match="divisible"):
        pixel_mse_loss(pred, video[:, :, :3], ids)
    with pytest.raises(ValueError, match="divisible"):
        pixel_mse_loss(pred, video[..., :30], ids)
    with pytest.raises(ValueError, match="1536"):
        pixel_mse_loss(pred[..., :1000], video, ids)
    with pytest.raises(ValueError, match="expected"):
        pixel_mse_loss(pred, video, ids[:, :1])
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        pixel_mse_loss(pred, video[0], ids)
    with pytest.raises(ValueError, match="patch"):
        pixel_mse_loss(pred, video, ids, patch=0)
    with pytest.raises(ValueError, match=">= 2"):
        pixel_mse_loss(torch.randn(1, 2, 3), video, ids, tubelet=1, patch=1)
    with pytest.raises(ValueError, match="valid"):
        pixel_mse_loss(pred, video, ids, valid=torch.ones(1, 3, dtype=torch.bool))


def test_pixel_memory(kernels):
    """The patchified video (as large as the video) is never built; only the gradient is [B, K, P]."""
    kernels("triton")
    video, ids = make_video(2, 3, 4, 32, 48), random_ids(2, 12, 4)
    pred = torch.randn(2, 4, 1536, requires_grad=True)
    with NewStorages() as mode:
        loss = pixel_mse_loss(pred, video, ids)
    big = [a for a in mode.allocs if a[0] >= pred.numel()]
    assert len(big) == 1 and big[0][:2] == (pred.numel(), torch.float32), mode.allocs
    assert math.isfinite(loss.item())
    kernels("reference")  # sanity check of the probe: the reference does patchify the whole video
    with torch.no_grad(), NewStorages() as mode:
        pixel_mse_loss_reference(pred, video, ids)
    assert max(numel for numel, _, _ in mode.allocs) >= video.numel()
