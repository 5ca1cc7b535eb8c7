"""The Triton kernels of a training step compile for sm_90 without a GPU (benchmarks/aot.py).

The compile runs in a subprocess: here the kernels are interpreted (conftest sets
TRITON_INTERPRET=1 before they are imported), and interpreted kernels cannot be compiled.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from support import ROOT

triton = pytest.importorskip("triton", reason="Triton is not installed: nothing to compile")

SCRIPT = ROOT / "benchmarks" / "aot.py"
spec = importlib.util.spec_from_file_location("benchmarks_aot", SCRIPT)
aot = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # (its dataclasses look themselves up there)
spec.loader.exec_module(aot)


def test_training_step_kernels_compile_for_sm90(tmp_path):
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not os.access(ptxas, os.X_OK):
        pytest.skip(f"Triton's bundled ptxas is not installed ({ptxas})")
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SALT_FAST_KERNELS")}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90", "--jobs", "2", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert out.exists(), f"benchmarks/aot.py wrote nothing (exit {done.returncode}):\n{output}"
    record = json.loads(out.read_text())
    assert not aot.failures(record), "\n".join(aot.failures(record))
    assert done.returncode == 0, output

    assert record["triton"] == triton.__version__ and all(r["triton"] == triton.__version__ for r in record["results"])
    assert {t["stage"] for t in record["traced"]} == set(record["inputs"]["stages"])
    kernels = {r["kernel"] for r in record["results"]}
    assert {"_copy_rows_kernel", "_rope3d_kernel", "_latent_l1_fwd_kernel", "_pixel_mse_fwd_kernel"} <= kernels
    assert all(r["arch"] == 90 and r["registers"] and r["warps"] for r in record["results"])
    # The pixel loss reads its prediction rows and writes their gradient with 16-byte vectors:
    # the one narrow store is the per-token partial sum.
    pixel = [r for r in record["results"] if r["kernel"] == "_pixel_mse_fwd_kernel"]
    assert pixel and all(r["stores"]["scalar"] == 1 and r["stores"]["v2"] == 0 for r in pixel)
    assert all(set(r["loads"]["bytes"]) <= {"16", "8", "1"} for r in pixel)  # (8: the token id; 1: its valid flag)


PTX = """
.global .align 4 .b8 __cudart_i2opi_f[24] = {65, 144, 67, 60};
	// begin inline asm
	@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
	// end inline asm
	ld.global.nc.b16 	%rs1, [%rd2];
	@!%p2 ld.global.v2.b32 { %r5, %r6 }, [ %rd3 + 0 ];
	mov.b64 	%rd4, __cudart_i2opi_f;
	add.s64 	%rd5, %rd4, %rd6;
	ld.global.nc.b32 	%r7, [%rd5];
	@%p1 st.global.v4.b32 [ %rd7 + 0 ], { %r1, %r2, %r3, %r4 };
	st.global.b8 	[%rd8], %rs2;
	atom.global.gpu.acq_rel.add.f32 	%f1, [%rd9], %f2;
	ld.param.u64 	%rd10, [kernel_param_0];
	ld.shared.v4.b32 	{ %r8, %r9, %r10, %r11 }, [%r12];
	@%p3 cp.async.cg.shared.global [ %r13 + 0 ], [ %rd11 + 0 ], 0x10, %r14;
"""


def test_ptx_memory_ops_counts_global_accesses_by_width():
    counts = aot.ptx_memory_ops(PTX)
    assert counts["ld"] == {16: 2, 8: 1, 4: 0, 2: 1, 1: 0}  # param and shared loads are not global
    assert counts["st"] == {16: 1, 8: 0, 4: 0, 2: 0, 1: 1}
    assert counts["atomics"] == 1 and counts["table"] == 1  # the sin/cos table is not a data stream
    assert aot.vector_classes(counts["ld"]) == {"v4": 2, "v2": 1, "scalar": 1}
    log = "ptxas info : Used 40 registers\n  8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads"
    assert aot.ptxas_usage(log) == {"registers": 40, "spill_stores": 4, "spill_loads": 12, "stack": 8}


def test_cuda_autocast_casts_like_cuda_autocast_on_meta_tensors():
    meta = torch.device("meta")
    x = torch.empty(4, 8, device=meta)
    w = torch.empty(16, 8, device=meta, requires_grad=True)
    with aot.CudaAutocast(torch.bfloat16) as mode:
        y = F.linear(x, w)  # lower precision
        z = F.layer_norm(y, (16,))  # fp32
        s = y.sum()  # fp32 (as autocast's dtype=)
        p = torch.addcmul(z, y, y)  # promote: the widest input
        a = y + 1  # not autocast
        d = F.linear(x.double(), w.double())  # fp64 is never cast
        with pytest.raises(NotImplementedError, match="binary_cross_entropy"):
            F.binary_cross_entropy(torch.empty(4, device=meta), torch.empty(4, device=meta))
    assert (y.dtype, z.dtype, s.dtype, p.dtype, a.dtype, d.dtype) == (
        torch.bfloat16, torch.float32, torch.float32, torch.float32, torch.bfloat16, torch.float64,
    )  # fmt: skip
    assert mode.calls == {"linear->bfloat16": 1, "layer_norm->float32": 1, "sum->float32": 1, "addcmul->float32": 1}
    y.sum().backward()
    assert w.grad.dtype == torch.float32  # the cast is part of the graph, as with autocast
    # Every op the installed torch autocasts on CUDA has a policy here.
    assert aot.autocast_cuda_ops() <= aot.LOWER_PRECISION | aot.FP32 | aot.PROMOTE | aot.BANNED


def test_recording_needs_compiled_kernels():
    if not aot._dispatch.INTERPRETED:
        pytest.skip("the kernels are compiled in this process")
    with pytest.raises(RuntimeError, match="interpreted"), aot.recording([], "step", 132):
        pass
