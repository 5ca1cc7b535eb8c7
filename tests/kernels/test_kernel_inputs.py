"""Input validation of every public kernel op, on both paths (reference and Triton's interpreter).

Token ids are range-checked on the device without a host sync (``check_ids=True``, the default;
``torch._assert_async`` raises RuntimeError on CPU), only in valid slots; ``SALT_FAST_DEBUG=1``
checks synchronously (ValueError) and adds the uniqueness check where a backward relies on it.
Non-float activations are refused; empty inputs give the loss of an all-padding batch (0).
Also: choosing ``SALT_FAST_KERNELS=triton`` after the import works on a CPU machine.
"""

import ast
import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import salt_fast.kernels as K
import torch
from salt_fast.kernels import _dispatch
from torch.utils._python_dispatch import TorchDispatchMode
from support import ROOT
from inside_ops import run_inside

pytest.importorskip("triton")

PATHS = ["reference", "triton"]
ID_ERRORS = (RuntimeError, ValueError)  # the async check raises RuntimeError on CPU, debug mode ValueError
GRID = (2, 2, 2)  # 8 tokens
N = 8
VIDEO = (2, 3, 4, 8, 8)  # tubelet 2, patch 4 -> the (2, 2, 2) grid; pred width 2*4*4*3 = 96


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setenv("SALT_FAST_KERNELS", request.param)
    monkeypatch.delenv("SALT_FAST_DEBUG", raising=False)
    return request.param


def unique_ids(b=2, k=4, n=N):
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)])


def with_bad(ids, value):
    ids = ids.clone()
    ids[-1, -1] = value
    return ids


def leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_()


# One entry per public op taking ids: name -> (n, call(ids, **kw) -> a tensor to backpropagate).
def _assemble(ids, **kw):
    return K.assemble_predictor_input(leaf(2, 4, 16), ids, ids, leaf(16), **kw)[0]


OPS = {
    "gather_tokens": (N, lambda ids, **kw: K.gather_tokens(leaf(2, N, 16), ids, **kw)),
    "latent_l1_loss": (N, lambda ids, **kw: K.latent_l1_loss(leaf(2, 4, 16), torch.randn(2, N, 16), ids, **kw)),
    "pixel_mse_loss": (N, lambda ids, **kw: K.pixel_mse_loss(leaf(2, 4, 96), torch.randn(VIDEO), ids, 2, 4, **kw)),
    "apply_rope3d": (N, lambda ids, **kw: K.apply_rope3d(leaf(2, 2, 4, 24), ids, GRID, **kw)),
    "rope3d_qkv_": (N, lambda ids, **kw: K.rope3d_qkv_(leaf(2, 4, 3, 2, 24) * 1, ids, GRID, **kw)),
    "rope3d_cos_sin": (N, lambda ids, **kw: K.rope3d_cos_sin(ids, GRID, 24, **kw)[0]),
    "apply_masks": (N, lambda ids, **kw: K.apply_masks(leaf(2, N, 16), [ids, ids], **kw)),
    "rotate_qk": (N, lambda ids, **kw: K.rotate_qk(leaf(2, 2, 4, 24), leaf(2, 2, 4, 24), [ids], GRID, **kw)[1]),
    "rotate_qkv_": (N, lambda ids, **kw: K.rotate_qkv_(leaf(2, 4, 3, 2, 24) * 1, ids, GRID, **kw)),
    "jepa_latent_loss": (N, lambda ids, **kw: K.jepa_latent_loss(leaf(2, 4, 16), torch.randn(2, N, 16), ids, **kw)),
    "jepa_latent_loss(loss_exp=2)": (
        N,
        lambda ids, **kw: K.jepa_latent_loss(leaf(2, 4, 16), torch.randn(2, N, 16), ids, loss_exp=2, **kw),
    ),
    "assemble_predictor_input": (None, _assemble),
}
# The op an error names (the drop-ins report the op that checks).
CHECKER = {
    "apply_masks": "gather_tokens",
    "rotate_qk": "apply_rope3d",
    "rotate_qkv_": "rope3d_qkv_",
    "jepa_latent_loss": "latent_l1_loss",
    "jepa_latent_loss(loss_exp=2)": "gather_tokens",
}


def forward_backward(out):
    if out.requires_grad:
        out.backward(torch.ones_like(out))
    return out


# --------------------------------------------------------------------------------------
# Range checks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_out_of_range_ids_raise(path, op):
    n, call = OPS[op]
    forward_backward(call(unique_ids()))  # valid ids pass
    name = CHECKER.get(op, op)
    for bad in (-1,) if n is None else (-1, n, 10_000_000):
        span = r"\[0, inf\)" if n is None else rf"\[0, {n}\)"
        with pytest.raises(ID_ERRORS, match=rf"{name}: .*ids.* must lie in {span}"):
            forward_backward(call(with_bad(unique_ids(), bad)))


@pytest.mark.parametrize("op", ["apply_rope3d", "rope3d_qkv_", "rope3d_cos_sin", "assemble_predictor_input"])
def test_check_ids_false_skips_the_check_and_debug_overrides_it(path, op, monkeypatch):
    """Ops whose kernels read nothing at an id (positions only) run unchecked ids; debug raises."""
    _, call = OPS[op]
    bad = with_bad(unique_ids(), -3)
    forward_backward(call(bad, check_ids=False))
    monkeypatch.setenv("SALT_FAST_DEBUG", "1")
    with pytest.raises(ValueError, match=rf"{op}: .*ids.* must lie in .*got values in \[-3, "):
        call(bad, check_ids=False)


def test_gather_unchecked_out_of_range_is_memory_safe(monkeypatch):
    """check_ids=False on the Triton path: out-of-range ids read zero rows, their gradient is dropped."""
    monkeypatch.setenv("SALT_FAST_KERNELS", "triton")
    x = leaf(2, N, 16)
    ids = with_bad(with_bad(unique_ids(), 10_000_000).flip(1), -1)
    out = K.gather_tokens(x, ids, check_ids=False)
    assert not out[-1, 0].any() and not out[-1, -1].any()
    out.sum().backward()
    assert x.grad.sum() == 16 * (2 * 4 - 2)


@pytest.mark.parametrize("loss", ["latent_l1_loss", "pixel_mse_loss"])
def test_padding_slots_may_hold_any_id(path, loss):
    """Only valid slots are range-checked; padding ids are never read (Triton) or clamped (reference)."""
    ids = unique_ids()
    valid = torch.tensor([[True, False, True, False], [False, True, True, True]])
    junk = ids.clone()
    junk[~valid] = torch.tensor([10_000_000, -1, -7])
    pred = torch.randn(2, 4, 16 if loss == "latent_l1_loss" else 96)
    source = torch.randn(2, N, 16) if loss == "latent_l1_loss" else torch.randn(VIDEO)
    fn = K.latent_l1_loss if loss == "latent_l1_loss" else lambda p, s, i, **kw: K.pixel_mse_loss(p, s, i, 2, 4, **kw)
    results = []
    for i in (ids, junk):
        p = pred.clone().requires_grad_()
        value = fn(p, source, i, valid=valid)
        value.backward()
        results.append((value.detach(), p.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert (results[1][1][~valid] == 0).all()
    with pytest.raises(ID_ERRORS, match=rf"{loss}: ids must lie in \[0, {N}\)"):
        fn(pred, source, junk, valid=valid | (junk < 0))  # a negative id in a valid slot


# --------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------


def test_non_float_activations_are_refused(path):
    ids = unique_ids()
    with pytest.raises(ValueError, match="apply_rope3d: x must be a floating-point tensor, got torch.int32"):
        K.apply_rope3d(torch.randint(-5, 5, (2, 2, 4, 24), dtype=torch.int32), ids, GRID)
    with pytest.raises(ValueError, match="rope3d_qkv_: qkv must be a floating-point tensor"):
        K.rope3d_qkv_(torch.zeros(2, 4, 3, 2, 24, dtype=torch.int64), ids, GRID)
    with pytest.raises(ValueError, match="rotate_qk|apply_rope3d"):
        K.rotate_qk(torch.zeros(2, 2, 4, 24, dtype=torch.int16), torch.zeros(2, 2, 4, 24, dtype=torch.int16), ids, GRID)
    with pytest.raises(ValueError, match="latent_l1_loss: pred must be a floating-point tensor"):
        K.latent_l1_loss(torch.zeros(2, 4, 16, dtype=torch.int32), torch.randn(2, N, 16), ids)
    with pytest.raises(ValueError, match="latent_l1_loss: target must be a floating-point tensor"):
        K.latent_l1_loss(torch.randn(2, 4, 16), torch.zeros(2, N, 16, dtype=torch.uint8), ids)
    with pytest.raises(ValueError, match="pixel_mse_loss: pred must be a floating-point tensor"):
        K.pixel_mse_loss(torch.zeros(2, 4, 96, dtype=torch.int32), torch.randn(VIDEO), ids, 2, 4)
    with pytest.raises(ValueError, match="jepa_latent_loss: preds must be a floating-point tensor"):
        K.jepa_latent_loss(torch.zeros(2, 4, 16, dtype=torch.int32), torch.randn(2, N, 16), ids, loss_exp=2)
    for op, call in (
        ("gather_tokens", lambda i: K.gather_tokens(torch.randn(2, N, 16), i)),
        ("latent_l1_loss", lambda i: K.latent_l1_loss(torch.randn(2, 4, 16), torch.randn(2, N, 16), i)),
        ("pixel_mse_loss", lambda i: K.pixel_mse_loss(torch.randn(2, 4, 96), torch.randn(VIDEO), i, 2, 4)),
        ("apply_rope3d", lambda i: K.apply_rope3d(torch.randn(2, 2, 4, 24), i, GRID)),
        ("assemble_predictor_input", lambda i: K.assemble_predictor_input(torch.randn(2, 4, 8), i, i, torch.randn(8))),
        ("apply_masks", lambda i: K.apply_masks(torch.randn(2, N, 16), [i])),
    ):
        with pytest.raises(ValueError, match=f"{op}: .*must be an integer tensor"):
            call(ids.float())


def test_pixel_video_may_be_integer(path):
    """uint8 / int video is legitimate (the kernel upcasts); same loss as the float clip."""
    video = torch.randint(0, 256, VIDEO, dtype=torch.uint8)
    ids, pred = unique_ids(), torch.randn(2, 4, 96)
    as_int = K.pixel_mse_loss(pred, video, ids, 2, 4)
    torch.testing.assert_close(as_int, K.pixel_mse_loss(pred, video.float(), ids, 2, 4))
    torch.testing.assert_close(K.pixel_mse_loss(pred, video.int(), ids, 2, 4), as_int)


# --------------------------------------------------------------------------------------
# Empty inputs: the answer of an all-padding batch
# --------------------------------------------------------------------------------------


def _loss_cases(b, k):
    ids = torch.zeros(b, k, dtype=torch.long)
    target, video = torch.randn(b, N, 16), torch.randn(b, *VIDEO[1:])
    return {
        "latent_l1_loss": (lambda p, **kw: K.latent_l1_loss(p, target, ids, **kw), (b, k, 16)),
        "pixel_mse_loss": (lambda p, **kw: K.pixel_mse_loss(p, video, ids, 2, 4, **kw), (b, k, 96)),
        "jepa_latent_loss": (lambda p: K.jepa_latent_loss(p, target, ids), (b, k, 16)),
        "jepa_latent_loss(loss_exp=2)": (lambda p: K.jepa_latent_loss(p, target, ids, loss_exp=2), (b, k, 16)),
    }


@pytest.mark.filterwarnings("ignore:var\\(\\)")  # the pixel reference's std of an empty batch
@pytest.mark.parametrize("loss", list(_loss_cases(1, 1)))
@pytest.mark.parametrize(("b", "k"), [(0, 4), (2, 0), (0, 0)], ids=["B=0", "K=0", "B=K=0"])
def test_empty_inputs_give_zero_loss_and_zero_grad(path, loss, b, k):
    fn, shape = _loss_cases(b, k)[loss]
    pred = torch.randn(shape).requires_grad_()
    value = fn(pred)
    assert value.shape == () and value.dtype == torch.float32 and value.item() == 0.0
    value.backward()
    assert pred.grad is not None and pred.grad.shape == pred.shape and not pred.grad.any()
    if not loss.startswith("jepa"):  # same answer as an all-False valid of the non-empty case
        fn2, shape2 = _loss_cases(2, 4)[loss]
        p2 = torch.randn(shape2).requires_grad_()
        padded = fn2(p2, valid=torch.zeros(2, 4, dtype=torch.bool))
        padded.backward()
        assert torch.equal(padded.detach(), value.detach()) and not p2.grad.any()


# --------------------------------------------------------------------------------------
# Duplicates (SALT_FAST_DEBUG=1)
# --------------------------------------------------------------------------------------


def test_duplicates_are_caught_in_debug_mode(path, monkeypatch):
    dup = torch.tensor([[1, 3, 1, 5], [0, 2, 4, 6]])
    x = leaf(2, N, 16)
    target = torch.randn(2, N, 16)
    # Without debug: accepted (the reference sums duplicates; the Triton backward keeps one writer).
    K.gather_tokens(x, dup).sum().backward()
    K.apply_masks(x, [dup]).sum().backward()
    monkeypatch.setenv("SALT_FAST_DEBUG", "1")
    with pytest.raises(ValueError, match="gather_tokens: ids must be unique within each row"):
        K.gather_tokens(x, dup)
    with pytest.raises(ValueError, match="gather_tokens: ids must be unique within each row"):
        K.apply_masks(x, [unique_ids(), dup])
    with pytest.raises(ValueError, match="unique"):  # its gather's backward reaches a target that needs grad
        K.jepa_latent_loss(leaf(2, 4, 16), target.requires_grad_(), dup, loss_exp=2)
    # No backward through the gather, or ops that do not rely on uniqueness: duplicates are fine.
    K.gather_tokens(x.detach(), dup)
    with torch.no_grad():
        K.apply_masks(x, dup)
    K.jepa_latent_loss(leaf(2, 4, 16), target.detach(), dup, loss_exp=2).backward()
    K.latent_l1_loss(leaf(2, 4, 16), target.detach(), dup).backward()
    K.pixel_mse_loss(leaf(2, 4, 96), torch.randn(VIDEO), dup, 2, 4).backward()
    K.apply_rope3d(leaf(2, 2, 4, 24), dup, GRID).sum().backward()
    K.gather_tokens(x, unique_ids()).sum().backward()  # unique ids pass


# --------------------------------------------------------------------------------------
# No host sync on the hot path
# --------------------------------------------------------------------------------------

SYNCS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.equal")


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func).rsplit(".", 1)[0]] += 1
        return run_inside(self, func, args, kwargs or {})  # the ops inside salt_fast's custom ops too


@pytest.mark.parametrize("check_ids", [True, False])
def test_no_host_sync(path, check_ids):
    """Forward + backward of every op dispatches no sync; check_ids=True adds one _assert_async per
    id tensor (on CPU its value is tested inside the kernel, below the dispatcher: nothing to sync)."""
    valid = torch.tensor([[True, False, True, True], [True, True, False, True]])
    cases = dict(OPS)
    cases["latent_l1_loss+valid"] = (N, lambda i, **kw: K.latent_l1_loss(leaf(2, 4, 16), torch.randn(2, N, 16), i, valid=valid, **kw))
    cases["pixel_mse_loss+valid"] = (N, lambda i, **kw: K.pixel_mse_loss(leaf(2, 4, 96), torch.randn(VIDEO), i, 2, 4, valid=valid, **kw))
    for op, (_, call) in cases.items():
        ids = unique_ids()
        with CountOps() as counted:
            forward_backward(call(ids, check_ids=check_ids))
        assert not [s for s in SYNCS if counted.ops[s]], (op, counted.ops)
        asserts = counted.ops["aten._assert_async"]
        assert (asserts >= 1) if check_ids else (asserts == 0), (op, asserts)
        # the Triton path is the custom ops (whose insides were counted too); the RoPE tables are PyTorch's
        custom = path == "triton" and op != "rope3d_cos_sin"
        assert any(name.startswith("salt_fast.") for name in counted.ops) == custom, (op, counted.ops)


# --------------------------------------------------------------------------------------
# Module layout, exports
# --------------------------------------------------------------------------------------


def test_exports():
    assert K.KERNEL_CHOICES is _dispatch.CHOICES == ("auto", "triton", "reference")
    assert K.use_triton is _dispatch.use_triton
    assert K.vjepa2_ops.apply_masks is K.apply_masks and K.vjepa2_ops.rotate_qkv_ is K.rotate_qkv_


def test_no_private_imports_across_op_files():
    """Op files share machinery through the private modules (``_launch``, ``_checks``, ...) only."""
    for source in (ROOT / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and not node.module.startswith("_"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{source.name} imports {private} from .{node.module}"


# --------------------------------------------------------------------------------------
# SALT_FAST_KERNELS=triton chosen after the import, on a CPU machine
# --------------------------------------------------------------------------------------

LATE_SWITCH = textwrap.dedent(
    """
    import os
    import torch
    from triton.runtime import JITFunction
    import salt_fast.kernels as K
    from salt_fast.kernels import _dispatch, latent_loss, rope3d

    assert isinstance(latent_loss._latent_l1_fwd_kernel, JITFunction) and not _dispatch.INTERPRETED
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    ids, valid = torch.randint(0, 9, (2, 5)), torch.rand(2, 5) < 0.7
    x, rope_ids = torch.randn(2, 2, 12, 24), torch.stack([torch.randperm(24)[:12] for _ in range(2)])
    video, pix_ids = torch.randn(1, 3, 4, 8, 8), torch.randperm(8)[:4].unsqueeze(0)

    def run():
        out = []
        p = pred.clone().requires_grad_()
        loss = K.latent_l1_loss(p, target, ids, valid=valid)
        loss.backward()
        xr = x.clone().requires_grad_()
        y = K.apply_rope3d(xr, rope_ids, (2, 3, 4))
        y.backward(torch.ones_like(y))
        xg = target.clone().requires_grad_()
        g = K.gather_tokens(xg, pix_ids.repeat(2, 1))  # unique per row: the Triton backward needs it
        g.backward(torch.ones_like(g))
        pp = torch.randn(1, 4, 96, generator=torch.Generator().manual_seed(1)).requires_grad_()
        pl = K.pixel_mse_loss(pp, video, pix_ids, 2, 4)
        pl.backward()
        return [loss, p.grad, y, xr.grad, g, xg.grad, pl, pp.grad]

    os.environ["SALT_FAST_KERNELS"] = "reference"
    expected = run()
    os.environ["SALT_FAST_KERNELS"] = "triton"
    got = run()
    assert _dispatch.INTERPRETED and not _dispatch._compiled_kernels()
    assert type(latent_loss._latent_l1_fwd_kernel).__name__ == "InterpretedFunction"
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    print("ok")
    """
)


def test_triton_chosen_after_import_on_cpu():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SALT_FAST_KERNELS", "SALT_FAST_DEBUG")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", LATE_SWITCH], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
