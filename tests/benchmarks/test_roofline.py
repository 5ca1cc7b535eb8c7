"""The step model: an exact trace of a real step, and a prediction that adds up."""

import dataclasses
import json
import subprocess
import sys

import pytest

from salt_fast.config import load_config
from salt_fast.flops import GPUS, step_flops
from salt_fast.masking import MaskSampler
from salt_fast.perf_model import Assumptions, gpu_hours, predict, trace_step
from salt_fast.stages import STAGES
from support import ROOT

SMALL = {"model.encoder_overrides": {"depth": 2}, "model.teacher_overrides": {"depth": 2},
         "model.predictor_overrides": {"depth": 2}, "data.batch_size": 4, "data.frames": 8, "data.resolution": 64}  # fmt: skip


def small(stage):
    return load_config(None, [f"stage={stage}", "model.encoder=vit_small", "model.teacher=vit_small",
                              *(f"{k}={v}" for k, v in SMALL.items())])  # fmt: skip


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_trace_counts_the_steps_exact_flops(stage):
    cfg = small(stage)
    ops = trace_step(cfg)
    kinds = {op.kind for op in ops}
    assert {"matmul", "attention", "memory", "optimizer"} <= kinds
    matmul = sum(op.flops for op in ops if op.kind == "matmul")
    attention_fwd = sum(op.flops for op in ops if op.kind == "attention" and not op.backward)
    # salt_fast.flops counts a trained attention as 3x its forward, like every matmul; the flash
    # backward's own formula differs, so compare the forward: the trace is the same step.
    learner, teacher = STAGES[stage].build(cfg.model, 2, load_teacher=False)
    grid = learner.encoder.token_grid((4, 3, 8, 64, 64))
    masks = MaskSampler(grid, seed=0).sample(4, 0)
    n_all = grid[0] * grid[1] * grid[2]
    batch = 4
    teacher_attention = 0  # the frozen teacher's runs forward only: once in both counts
    if teacher is not None:
        teacher_attention = batch * teacher.cfg.depth * 4 * n_all**2 * teacher.embed_dim
    trained_attention_fwd = attention_fwd - teacher_attention
    assert matmul + 3 * trained_attention_fwd + teacher_attention == step_flops(learner.encoder, learner.head, masks,
                                                                                 n_all, teacher)  # fmt: skip


def test_the_prediction_adds_up_and_follows_the_ceilings():
    ops = trace_step(small("salt"))
    a = Assumptions()
    h100 = predict(ops, "h100", 4, assumptions=a)
    assert h100.step_s == pytest.approx(sum(v["s"] for v in h100.by_kind.values()))
    assert h100.clips_per_s == pytest.approx(4 / h100.step_s)
    assert h100.mfu == pytest.approx(h100.flops / h100.step_s / GPUS["h100"].bf16_dense)
    assert h100.launches == sum(op.launches for op in ops)
    faster = dataclasses.replace(GPUS["h100"], hbm_bandwidth=2 * GPUS["h100"].hbm_bandwidth, bf16_dense=2 * GPUS["h100"].bf16_dense)
    assert predict(ops, faster, 4, assumptions=dataclasses.replace(a, launch_s=0)).step_s < h100.step_s
    assert predict(ops, "a100", 4).step_s > h100.step_s > predict(ops, "b200", 4).step_s
    assert gpu_hours(h100, 1000, global_batch=40) == pytest.approx(1000 * 40 / h100.clips_per_s / 3600)


def test_roofline_script_labels_every_number_a_prediction(tmp_path):
    out = tmp_path / "roofline.json"
    args = ["--model", "vit_small", "--teacher", "vit_small", "--batch-size", "2", "--frames", "4", "--resolution", "32",
            "--stages", "salt", "--gpus", "h100", "--out", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "roofline.py"), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PREDICTED by the step model" in done.stdout and "not measured" in done.stdout
    record = json.loads(out.read_text())
    assert record["label"].startswith("PREDICTED") and record["predictions"]
    assert all(p["gpu"] == "H100" for p in record["predictions"])
