"""The Triton paths as registered custom ops (``torch.ops.salt_fast.*``, kernels/_ops.py).

``torch.library.opcheck`` checks each op's schema (declared mutations), its fake implementation
against the real one (shapes, dtypes, strides), its autograd registration and AOTAutograd on it.
On meta tensors the public ops run the fake implementations (no kernel), or the real ones within
``_dispatch.launch_on_meta()``; ``OP_COSTS`` declares every op's cost.
"""

import pytest
import torch
from torch.library import opcheck

import salt_fast.kernels as K
from salt_fast.kernels import _dispatch, _ops, latent_loss, masked_tokens, pixel_loss, rope3d

pytest.importorskip("triton")

OPS = {
    "gather_tokens", "gather_tokens_backward", "assemble_predictor_input", "mask_token_grad",
    "latent_l1_loss", "pixel_mse_loss", "rope3d", "rope3d_qkv_",
}  # fmt: skip


def unique_ids(b, n, k):
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)])


def op_cases():
    """name -> arguments of the op, small CPU tensors (the kernels run in Triton's interpreter)."""
    ids = unique_ids(2, 10, 4)
    return {
        "gather_tokens": [
            (torch.randn(2, 10, 16, requires_grad=True), ids),
            (torch.randn(2, 16, 10, dtype=torch.float64).transpose(1, 2).requires_grad_(), ids.int()),
        ],
        "gather_tokens_backward": [(torch.randn(2, 4, 16), ids, 10)],
        "assemble_predictor_input": [
            (torch.randn(2, 4, 16, requires_grad=True), torch.randn(16, requires_grad=True), 3),
            (torch.randn(2, 4, 16, dtype=torch.bfloat16, requires_grad=True), torch.randn(1, 1, 16, requires_grad=True), 0),
        ],
        "mask_token_grad": [(torch.randn(2, 7, 16), 4, 3), (torch.randn(2, 7, 16, dtype=torch.float16), 7, 0)],
        "latent_l1_loss": [
            (torch.randn(2, 4, 16, requires_grad=True), torch.randn(2, 10, 16), ids, 1e-5, torch.rand(2, 4) < 0.7, True),
            (torch.randn(2, 4, 16, dtype=torch.bfloat16), torch.randn(2, 10, 16), ids, 1e-5, None, False),
        ],
        "pixel_mse_loss": [
            (torch.randn(2, 4, 96, requires_grad=True), torch.randn(2, 3, 4, 8, 8), unique_ids(2, 8, 4), 2, 4, None, True),
            (torch.randn(2, 4, 96), torch.randn(2, 3, 4, 8, 8), unique_ids(2, 8, 4), 2, 4, torch.rand(2, 4) < 0.5, False),
        ],
        "rope3d": [
            (torch.randn(2, 3, 4, 24, requires_grad=True), ids, [2, 1, 5], "vjepa2", False, False),
            (torch.randn(2, 3, 24, 4).transpose(-1, -2).requires_grad_(), ids, [2, 1, 5], "standard", False, True),
            (torch.randn(2, 10, 3, 2, 26, requires_grad=True), None, [2, 1, 5], "standard", True, True),
        ],
        "rope3d_qkv_": [
            (torch.randn(2, 4, 3, 2, 24), ids, [2, 1, 5], "standard"),
            (torch.randn(2, 10, 3, 2, 32), None, [2, 1, 5], "vjepa2"),
        ],
    }


def test_every_op_is_registered_with_a_fake_and_a_cost():
    assert set(_ops.REGISTERED) == set(K.OP_COSTS) == {f"salt_fast.{name}" for name in OPS}
    for name in OPS:
        op = getattr(torch.ops.salt_fast, name).default
        assert str(op._overloadpacket) == f"salt_fast.{name}" and op.namespace == "salt_fast"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Meta")
    assert set(op_cases()) == OPS


@pytest.mark.parametrize("name", sorted(OPS))
def test_opcheck(name):
    for args in op_cases()[name]:
        opcheck(getattr(torch.ops.salt_fast, name).default, args)


def test_use_triton_on_meta(monkeypatch):
    meta = torch.empty(2, device="meta")
    for choice, expected in (("triton", True), ("auto", False), ("reference", False)):
        monkeypatch.setenv("SALT_FAST_KERNELS", choice)
        assert _dispatch.use_triton(meta, meta) is expected
    monkeypatch.setattr(_dispatch, "triton", None)  # the fake implementations need no Triton
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    assert _dispatch.use_triton(meta)
    with pytest.raises(RuntimeError, match="not installed"):
        _dispatch.use_triton(meta, torch.zeros(1))


def public_calls(device):
    """Every public op taking the Triton path, on ``device``: (name, call -> outputs)."""
    x = torch.randn(2, 10, 16, device=device, requires_grad=True)
    ids, context_ids = unique_ids(2, 10, 4).to(device), torch.zeros(2, 10, dtype=torch.int64, device=device)
    qkv = torch.randn(2, 10, 3, 2, 24, device=device)
    pred, video = torch.randn(2, 4, 96, device=device), torch.randn(2, 3, 4, 8, 8, device=device)
    return [
        ("gather_tokens", lambda: K.gather_tokens(x, ids, check_ids=False)),
        ("assemble_predictor_input", lambda: K.assemble_predictor_input(x, context_ids, ids, x[0, 0], check_ids=False)),
        ("latent_l1_loss", lambda: K.latent_l1_loss(x[:, :4], x.detach(), ids, check_ids=False)),
        ("pixel_mse_loss", lambda: K.pixel_mse_loss(pred, video, ids % 8, 2, 4, check_ids=False)),
        ("rope3d", lambda: K.apply_rope3d(x.view(2, 10, 2, 8).transpose(1, 2), None, (2, 1, 5), check_ids=False)),
        ("rope3d_qkv_", lambda: K.rope3d_qkv_(qkv, None, (2, 1, 5), check_ids=False)),
    ]


def test_meta_tensors_run_the_fake_implementations(monkeypatch):
    """On meta tensors under SALT_FAST_KERNELS=triton each public op runs its custom op's fake
    implementation (same shapes as on CPU, no launcher called); within launch_on_meta() the real one."""
    calls = []
    launchers = [(masked_tokens, "_launch_copy_rows"), (masked_tokens, "_launch_assemble"),
                 (latent_loss, "_latent_l1_triton"), (pixel_loss, "_pixel_mse_triton"), (rope3d, "_launch")]  # fmt: skip
    for module, name in launchers:
        real = getattr(module, name)
        spy = lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw)  # noqa: E731
        monkeypatch.setattr(module, name, spy)
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    expected = {name: torch.utils._pytree.tree_leaves(call()) for name, call in public_calls("cpu")}
    calls.clear()
    for name, call in public_calls("meta"):
        got = torch.utils._pytree.tree_leaves(call())
        layout = [(t.shape, t.dtype, t.stride()) for t in expected[name]]
        assert [(t.shape, t.dtype, t.stride()) for t in got] == layout, name
        assert all(t.is_meta for t in got), name
    assert not calls  # the fake implementations ran
    # Within launch_on_meta() the real implementation runs (its launch, on meta tensors, is recorded
    # here instead: that is what launch_on_meta is for, benchmarks/aot.py).
    record = lambda src, dst, ids, ids_on_src: calls.append((dst.shape, ids_on_src))  # noqa: E731
    monkeypatch.setattr(masked_tokens, "_launch_copy_rows", record)
    with _dispatch.launch_on_meta():
        assert _dispatch.launching_on_meta()
        x = torch.empty(2, 10, 16, device="meta", requires_grad=True)
        K.gather_tokens(x, unique_ids(2, 10, 4).to("meta"), check_ids=False).sum().backward()
    assert calls == [((2, 4, 16), True), ((2, 10, 16), False)] and not _dispatch.launching_on_meta()


def test_op_costs_count_what_the_kernels_move():
    b, n, k, d = 2, 40, 10, 64
    x, ids = torch.empty(b, n, d, device="meta"), torch.empty(b, k, dtype=torch.int64, device="meta")
    # gather: the K rows read and written, the ids once per column block (one block of 64)
    assert K.OP_COSTS["salt_fast.gather_tokens"](x, ids) == (0, 2 * b * k * d * 4 + b * k * 8)
    grad = torch.empty(b, k, d, device="meta", dtype=torch.bfloat16)
    zero_fill = b * n * d * 2
    assert K.OP_COSTS["salt_fast.gather_tokens_backward"](grad, ids, n) == (0, zero_fill + 2 * b * k * d * 2 + b * k * 8)
    # latent loss without valid: pred, target rows and ids read, the gradient and one partial per
    # program (16 rows of D=64 per program on the GPU) written, then the partials summed
    pred = torch.empty(b, k, d, device="meta", dtype=torch.bfloat16)
    flops, moved = K.OP_COSTS["salt_fast.latent_l1_loss"](pred, x, ids, 1e-5, None, True)
    programs = -(-b * k // 16)
    assert moved == b * k * d * (2 + 4) + b * k * 8 + programs * 4 + b * k * d * 2 + (programs + 1) * 4
    assert flops == b * k * d * 9 + 5 * b * k + programs + 1
    # rope3d_qkv_ in place: q and k, their 3 * 20 = 60 rotated channels of 64 (stored as 64), read and written
    qkv = torch.empty(b, n, 3, 16, 64, device="meta", dtype=torch.bfloat16)
    assert K.OP_COSTS["salt_fast.rope3d_qkv_"](qkv, None, [2, 4, 5], "standard")[1] == 2 * b * n * 2 * 16 * 64 * 2
    # every cost is a pair of ints for every case above
    for name, cases in op_cases().items():
        for args in cases:
            flops, moved = K.OP_COSTS[f"salt_fast.{name}"](*args)
            assert isinstance(flops, int) and isinstance(moved, int) and flops >= 0 and moved > 0, name
