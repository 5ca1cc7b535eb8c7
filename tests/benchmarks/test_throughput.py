"""benchmarks/throughput.py end to end on the CPU: every stage, tiny models, a few real steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

TINY = ["--model", "vit_tiny", "--teacher", "vit_tiny", "--depth", "1", "--batch-size", "2",
        "--frames", "4", "--resolution", "32", "--steps", "2"]  # fmt: skip
RUN_KEYS = {
    "kernels", "attention", "grid", "tokens_per_clip", "step_ms", "median_step_ms", "clips_per_s",
    "flops_per_step", "flops_per_step_each", "tflops_per_s", "mfu_datasheet", "mfu_matmul_ceiling",
    "peak_memory_mb", "paper_steps", "gpu_hours_projected", "full_run_flops_exact", "params",
}  # fmt: skip
PAPER_STEPS = {"pixel": 80_000, "salt": 160_000, "vjepa": 240_000}


def run_script(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "throughput.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, even on a GPU machine
    env.pop("SALT_FAST_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *TINY, *extra, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def check_run(run: dict, stage: str) -> None:
    assert RUN_KEYS <= set(run), RUN_KEYS - set(run)
    assert run["clips_per_s"] > 0 and run["median_step_ms"] > 0 and run["tflops_per_s"] > 0
    assert len(run["step_ms"]) == len(run["flops_per_step_each"]) == 2
    assert all(f > 0 for f in run["flops_per_step_each"])
    assert run["flops_per_step"] == pytest.approx(sum(run["flops_per_step_each"]) / 2)
    assert run["grid"] == [2, 2, 2] and run["tokens_per_clip"] == 8
    assert run["paper_steps"] == PAPER_STEPS[stage]
    assert run["gpu_hours_projected"] == pytest.approx(PAPER_STEPS[stage] * 3072 / run["clips_per_s"] / 3600)
    assert run["mfu_datasheet"] is None and run["peak_memory_mb"] is None  # CPU
    assert (run["params"]["teacher"] > 0) == (stage != "pixel")


@pytest.mark.parametrize("stage", ["salt", "vjepa"])
def test_stage(tmp_path, stage):
    record, stdout = run_script(tmp_path, "--stage", stage)
    assert record["benchmark"] == "throughput" and record["args"]["stage"] == stage
    assert {"device", "torch", "commit", "gpu_hours_formula", "matmul_ceiling_flops", "note"} <= set(record)
    assert record["matmul_ceiling_flops"] is None
    check_run(record["result"], stage)
    assert "baseline" not in record
    assert "not for claims" in stdout and "clips/s" in stdout


def test_compare_reports_a_speedup_only_between_different_code_paths(tmp_path):
    record, stdout = run_script(tmp_path, "--stage", "pixel", "--compare")  # auto on a CPU: the references, as the baseline
    check_run(record["result"], "pixel")
    assert "baseline" not in record and "speedup_vs_reference_sdpa" not in record
    assert record["compare"].startswith("same code path") and "no speedup to report" in stdout

    record, stdout = run_script(tmp_path, "--stage", "pixel", "--compare", "--kernels", "triton")  # the interpreter
    check_run(record["baseline"], "pixel")
    assert record["code_path"] == ["triton", "sdpa"]
    assert (record["baseline"]["kernels"], record["baseline"]["attention"]) == ("reference", "sdpa")
    # Same masks (seed 0) and models: the same exact FLOPs.
    assert record["baseline"]["flops_per_step_each"] == record["result"]["flops_per_step_each"]
    speedup = record["result"]["clips_per_s"] / record["baseline"]["clips_per_s"]
    assert record["speedup_vs_reference_sdpa"] == pytest.approx(speedup)
    assert "speedup" in stdout


def test_paper_sizes_on_a_cpu_print_the_prediction_and_do_not_run(tmp_path):
    out = tmp_path / "vit_g.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--model", "vit_g", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert "result" not in record and record["flops_per_step_exact"] > 50e12
    assert [p["gpu"] for p in record["predictions"]] == ["A100", "H100", "H200", "B200"]
    assert all(p["label"].startswith("PREDICTED") for p in record["predictions"])
    assert "not timed on this CPU" in proc.stdout and "--model vit_tiny" in proc.stdout
