"""Install-level promises: the extension builds, kernels stand alone and work without Triton."""

import os
import subprocess
import sys

import pytest
from support import ROOT



def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SALT_FAST_KERNELS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_extension_and_kernels_import():
    assert run_python("import salt_fast._C, salt_fast.kernels; print('ok')") == "ok"


def test_kernels_import_nothing_else_from_salt_fast():
    loaded = run_python(
        "import sys, salt_fast.kernels; "
        "print(sorted(m for m in sys.modules if m.startswith('salt_fast') and m != 'salt_fast' "
        "and not m.startswith('salt_fast.kernels')))"
    )
    assert loaded == "[]"
    for source in (ROOT / "kernels").glob("*.py"):
        for line in source.read_text().splitlines():
            assert not line.lstrip().startswith(("import salt_fast", "from salt_fast")), f"{source.name}: {line}"


def test_kernels_work_without_triton():
    # A CPU torch wheel ships no Triton: every op must import and run its reference.
    code = """
import sys
sys.modules["triton"] = None  # makes `import triton` raise ImportError
import torch
from salt_fast.kernels import apply_rope3d, gather_tokens, latent_l1_loss, pixel_mse_loss, use_triton
assert not use_triton(torch.zeros(1))
x = torch.randn(2, 2, 6, 32)
ids = torch.tensor([[0, 3, 5, 7, 9, 11], [1, 2, 4, 6, 8, 10]])
assert apply_rope3d(x, ids, (2, 2, 3)).shape == x.shape
assert gather_tokens(torch.randn(2, 12, 8), ids).shape == (2, 6, 8)
print(float(latent_l1_loss(torch.randn(2, 6, 8), torch.randn(2, 12, 8), ids)) > 0)
"""
    assert run_python(code) == "True"
    with pytest.raises(AssertionError, match="Triton is not installed"):
        run_python(code.replace("import torch\n", "import torch, os\nos.environ['SALT_FAST_KERNELS'] = 'triton'\n", 1))


def test_kernel_benchmark_smoke(tmp_path):
    out = tmp_path / "kernels.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--models", "vit_b", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    record = json.loads(out.read_text())
    ops = {case["op"] for case in record["cases"]}
    assert ops == {"rope3d_qkv_", "gather_tokens", "assemble_predictor_input", "latent_l1_loss", "pixel_mse_loss"}
    for case in record["cases"]:
        assert {"eager", "triton"} <= set(case["impls"]) and case["speedup_vs_eager"]["fwd_bwd"] > 0
