"""Masked token ops: Triton kernels (run in the interpreter on CPU) against the references.

Every output buffer the ops allocate is poisoned with NaN (``_launch.new_buffer`` is patched),
so an element a kernel forgets to write fails the comparison.
"""

import pytest
import torch

from salt_fast.kernels import _dispatch, _launch
from salt_fast.kernels import masked_tokens as mt

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
WIDTHS = [384, 1024, 1408, 100]


@pytest.fixture
def poisoned(monkeypatch):
    """Make every kernel output buffer start as NaN; yields the list of allocated shapes."""
    shapes = []

    def alloc(shape, dtype, device):
        shapes.append(tuple(shape))
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_launch, "new_buffer", alloc)
    return shapes


@pytest.fixture
def gpu_tiling(monkeypatch):
    """Use the GPU launch configuration (small blocks, several per axis) in the interpreter."""
    monkeypatch.setattr(_dispatch, "INTERPRETED", False)


def with_kernels(monkeypatch, mode, fn, *args):
    monkeypatch.setenv("SALT_FAST_KERNELS", mode)
    return fn(*args)


def random_ids(B, N, K, dtype=torch.int64):
    """``[B, K]`` unique ids per row, in random (unsorted) order."""
    return torch.stack([torch.randperm(N)[:K] for _ in range(B)]).to(dtype)


# --------------------------------------------------------------------------------------
# gather_tokens
# --------------------------------------------------------------------------------------


def check_gather(monkeypatch, x, ids, grad_out=None):
    """Triton forward and backward of gather_tokens equal the reference exactly."""
    x = x.detach().requires_grad_(True)
    out = with_kernels(monkeypatch, "triton", mt.gather_tokens, x, ids)
    ref = with_kernels(monkeypatch, "reference", mt.gather_tokens, x, ids)
    assert out.dtype == x.dtype and out.shape == (*ids.shape, x.shape[-1])
    assert torch.equal(out, ref)
    assert torch.equal(out, torch.stack([x[b, ids[b].long()] for b in range(x.shape[0])]))

    g = torch.randn(out.shape, dtype=torch.float32).to(x.dtype) if grad_out is None else grad_out
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    assert torch.equal(grad, grad_ref)
    hit = torch.zeros(x.shape[:2], dtype=torch.bool)
    hit.scatter_(1, ids.long(), True)
    assert torch.equal(grad[~hit], torch.zeros_like(grad[~hit]))  # untouched rows exactly zero
    return out, grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", WIDTHS)
@pytest.mark.parametrize("K", [1, 17, 37])
def test_gather_matches_reference(monkeypatch, poisoned, dtype, D, K):
    B, N = 2, 37
    x = torch.randn(B, N, D).to(dtype)
    check_gather(monkeypatch, x, random_ids(B, N, K))
    assert (B, K, D) in poisoned


def test_gather_every_k(monkeypatch, poisoned):
    B, N, D = 3, 13, 100
    x = torch.randn(B, N, D)
    for K in range(1, N + 1):
        check_gather(monkeypatch, x, random_ids(B, N, K))


@pytest.mark.parametrize("dtype,D", [(torch.float16, 1408), (torch.bfloat16, 384), (torch.float32, 100)])
def test_gather_gpu_tiling(monkeypatch, poisoned, gpu_tiling, dtype, D):
    """Several row blocks with a partial last one, and several or partial column blocks."""
    B, N, K = 2, 150, 77
    block_k, block_d, _ = mt._row_tile(K, D, torch.tensor([], dtype=dtype).element_size())
    assert K > block_k and K % block_k and D != block_d
    check_gather(monkeypatch, torch.randn(B, N, D).to(dtype), random_ids(B, N, K))


def test_gather_strided_inputs(monkeypatch, poisoned):
    """Row-strided x, transposed int32 ids and a stride-0 upstream gradient."""
    B, N, D, K = 2, 29, 100, 11
    x = torch.randn(B, N, 2 * D)[..., :D]
    ids = random_ids(B, N, K, dtype=torch.int32).t().contiguous().t()  # [B, K], column-major
    assert not ids.is_contiguous()
    grad_out = torch.ones(1, 1, 1).expand(B, K, D)
    check_gather(monkeypatch, x, ids, grad_out)


def test_gather_gradcheck_fp64(monkeypatch):
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    ids = random_ids(2, 7, 4)
    assert torch.autograd.gradcheck(lambda t: mt.gather_tokens(t, ids), (x,))


def test_gather_no_grad_input(monkeypatch, poisoned):
    x = torch.randn(2, 9, 100)
    ids = random_ids(2, 9, 4)
    out = with_kernels(monkeypatch, "triton", mt.gather_tokens, x, ids)
    assert not out.requires_grad and torch.equal(out, mt.gather_tokens_reference(x, ids))


def test_gather_empty(monkeypatch):
    x = torch.randn(2, 9, 100, requires_grad=True)
    out = with_kernels(monkeypatch, "triton", mt.gather_tokens, x, torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (2, 0, 100)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))


def test_gather_ids_contract(monkeypatch):
    """Unchecked (check_ids=False) out-of-range ids read zeros and drop their gradient; checked ones
    raise (tests/kernels/test_kernel_inputs.py); SALT_FAST_DEBUG=1 raises even unchecked, and on duplicates."""
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    x = torch.randn(1, 6, 100, requires_grad=True)
    bad = torch.tensor([[2, 6, -1]])
    out = mt.gather_tokens(x, bad, check_ids=False)
    assert torch.equal(out[0, 0], x[0, 2]) and not out[0, 1:].any()
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert grad[0, 2].eq(1).all() and grad.sum() == 100

    monkeypatch.setenv("SALT_FAST_DEBUG", "1")
    with pytest.raises(ValueError, match="lie in"):
        mt.gather_tokens(x, bad, check_ids=False)
    with pytest.raises(ValueError, match="unique"):
        mt.gather_tokens(x, torch.tensor([[1, 3, 1]]))
    mt.gather_tokens(x, torch.tensor([[1, 3, 5]]))  # valid ids pass


def test_gather_reference_sums_duplicates(monkeypatch):
    x = torch.randn(1, 5, 3, requires_grad=True)
    out = with_kernels(monkeypatch, "reference", mt.gather_tokens, x, torch.tensor([[4, 1, 4]]))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad[0, :, 0].tolist() == [0, 1, 0, 0, 2]


# --------------------------------------------------------------------------------------
# assemble_predictor_input
# --------------------------------------------------------------------------------------

GRAD_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def check_assemble(monkeypatch, context, mask_token, kt, grad=None):
    """Triton tokens/ids equal the reference exactly; grad_context exactly the context slice;
    grad_mask_token within the dtype's rounding of the exact (fp64) sum."""
    B, kc, D = context.shape
    context = context.detach().requires_grad_(True)
    mask_token = mask_token.detach().requires_grad_(True)
    context_ids = random_ids(B, kc + kt + 5, kc)
    target_ids = random_ids(B, kc + kt + 5, kt)
    args = (context, context_ids, target_ids, mask_token)
    tokens, ids = with_kernels(monkeypatch, "triton", mt.assemble_predictor_input, *args)
    tokens_ref, ids_ref = with_kernels(monkeypatch, "reference", mt.assemble_predictor_input, *args)
    assert tokens.dtype == tokens_ref.dtype and tokens.shape == (B, kc + kt, D)
    assert torch.equal(tokens, tokens_ref)
    assert torch.equal(ids, ids_ref) and not ids.requires_grad

    g = torch.randn(tokens.shape).to(tokens.dtype) if grad is None else grad
    grad_context, grad_token = torch.autograd.grad(tokens, (context, mask_token), g)
    ref_context, ref_token = torch.autograd.grad(tokens_ref, (context, mask_token), g)
    assert grad_context.dtype == context.dtype and torch.equal(grad_context, ref_context)
    assert grad_token.dtype == mask_token.dtype and grad_token.shape == mask_token.shape

    exact = g[:, kc:].double().sum((0, 1))
    scale = g[:, kc:].double().abs().sum((0, 1))
    tol = GRAD_TOL[mask_token.dtype]
    for got in (grad_token, ref_token):
        err = (got.double().reshape(D) - exact).abs()
        assert (err <= tol * exact.abs() + 1e-5 * scale + 1e-30).all(), err.max()
    return grad_token


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", WIDTHS)
def test_assemble_matches_reference(monkeypatch, poisoned, dtype, D):
    B, kc, kt = 3, 7, 30
    check_assemble(monkeypatch, torch.randn(B, kc, D).to(dtype), torch.randn(1, 1, D).to(dtype), kt)
    assert (B, kc + kt, D) in poisoned  # tokens
    assert any(s[-1] == D and len(s) == 2 for s in poisoned)  # mask-token partial sums


@pytest.mark.parametrize("kc,kt", [(0, 9), (9, 0), (1, 1), (13, 50)])
def test_assemble_edge_sizes(monkeypatch, poisoned, kc, kt):
    check_assemble(monkeypatch, torch.randn(2, kc, 100), torch.randn(100), kt)


def test_assemble_mixed_dtypes(monkeypatch, poisoned):
    """bf16 context with an fp32 mask token: fp32 tokens (as torch.cat), bf16 context grads."""
    check_assemble(monkeypatch, torch.randn(2, 5, 384).bfloat16(), torch.randn(384), 11)


def test_assemble_strided(monkeypatch, poisoned):
    """Row-strided context, a strided mask token and a stride-0 upstream gradient."""
    B, kc, kt, D = 2, 6, 9, 100
    context = torch.randn(B, kc, 3 * D)[..., D : 2 * D]
    token = torch.randn(D, 2)[:, 1]
    check_assemble(monkeypatch, context, token, kt, grad=torch.ones(1, 1, 1).expand(B, kc + kt, D))


@pytest.mark.parametrize("dtype,D", [(torch.bfloat16, 384), (torch.float16, 1408), (torch.float32, 100)])
def test_assemble_gpu_tiling(monkeypatch, poisoned, gpu_tiling, dtype, D):
    """GPU configuration: several tiles per axis, a tile straddling the context/target edge,
    and a mask-token reduction split over several programs."""
    B, kc, kt = 3, 21, 300
    block_r, _, per_program, _ = mt._reduce_plan(B * kt, D)
    assert B * kt > per_program > block_r
    check_assemble(monkeypatch, torch.randn(B, kc, D).to(dtype), torch.randn(D).to(dtype), kt)


def test_mask_token_grad_deterministic(monkeypatch, gpu_tiling):
    B, kc, kt, D = 3, 10, 400, 384
    context = torch.randn(B, kc, D, dtype=torch.bfloat16)
    token = torch.randn(1, 1, D, requires_grad=True)
    ids_c, ids_t = random_ids(B, 500, kc), random_ids(B, 500, kt)
    g = torch.randn(B, kc + kt, D) * 100
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    grads = []
    for _ in range(2):
        tokens, _ = mt.assemble_predictor_input(context, ids_c, ids_t, token)
        grads.append(torch.autograd.grad(tokens, token, g)[0])
    assert torch.equal(grads[0].view(torch.int32), grads[1].view(torch.int32))


def test_assemble_gradcheck_fp64(monkeypatch):
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    context = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    token = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ids_c, ids_t = random_ids(2, 9, 3), random_ids(2, 9, 4)
    fn = lambda c, t: mt.assemble_predictor_input(c, ids_c, ids_t, t)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (context, token))


def test_assemble_rejects_bad_shapes(monkeypatch):
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    ctx, ids = torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="mask_token"):
        mt.assemble_predictor_input(ctx, ids, ids, torch.randn(1, 8, 1))
    with pytest.raises(ValueError, match="context_ids"):
        mt.assemble_predictor_input(ctx, ids[:, :2], ids, torch.randn(8))


# --------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------


def test_dispatch_honours_env(monkeypatch):
    launched = []
    for name in ("_launch_copy_rows", "_launch_assemble", "_launch_mask_token_grad"):
        real = getattr(mt, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            launched.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(mt, name, spy)

    x = torch.randn(2, 6, 16, requires_grad=True)
    token = torch.randn(16, requires_grad=True)
    ids = random_ids(2, 6, 3)

    def run_both():
        launched.clear()
        out = mt.gather_tokens(x, ids)
        tokens, _ = mt.assemble_predictor_input(out, ids, ids, token)
        tokens.sum().backward()
        return sorted(set(launched))

    for mode in ("reference", "auto"):  # auto on CPU tensors: the reference
        monkeypatch.setenv("SALT_FAST_KERNELS", mode)
        assert run_both() == []
    monkeypatch.delenv("SALT_FAST_KERNELS")
    assert run_both() == []
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    assert run_both() == ["_launch_assemble", "_launch_copy_rows", "_launch_mask_token_grad"]
    monkeypatch.setenv("SALT_FAST_KERNELS", "cuda")
    with pytest.raises(ValueError, match="SALT_FAST_KERNELS"):
        mt.gather_tokens(x, ids)
