"""The training loop: every stage learns, teachers stay frozen, runs resume exactly and fail safely."""

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from salt_fast import checkpoint as ckpt
from salt_fast.config import ConfigError, load_config
from salt_fast.masking import MaskSampler
from salt_fast.models import build_encoder
from salt_fast.stages import STAGES
from salt_fast.train import train
from support import TINY_SHAPE, tiny

def losses(out):
    """step -> loss from metrics.csv; a resumed run's rows replace the killed run's."""
    with open(Path(out) / "metrics.csv") as f:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "encoder.safetensors"
    ckpt.export_encoder(build_encoder("vit_tiny", **TINY_SHAPE), path)
    return path


@pytest.mark.parametrize("stage", ["pixel", "salt", "vjepa"])
def test_every_stage_learns_a_fixed_batch(stage, teacher_file, tmp_path):
    cfg = load_config(None, tiny(tmp_path, tmp_path, stage, **{"model.teacher_checkpoint": str(teacher_file)}))
    learner, teacher = STAGES[stage].build(cfg.model, num_masks=2)
    clips = torch.randn(2, 3, 4, 32, 32)
    grid = learner.encoder.token_grid(clips.shape)
    masks = MaskSampler(grid, seed=0).sample(2, 0)
    teacher_out = None if teacher is None else teacher(clips).detach()
    optimizer = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        loss, _ = learner(clips, masks, grid, teacher_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.85 * history[0], history


def test_salt_teacher_is_frozen_and_vjepa_teacher_is_an_ema(teacher_file, synthetic, tmp_path):
    cfg = load_config(None, tiny(tmp_path / "s", synthetic, "salt", **{"model.teacher_checkpoint": str(teacher_file)}))
    _, teacher = STAGES["salt"].build(cfg.model, num_masks=2)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    train(load_config(None, tiny(tmp_path / "s", synthetic, "salt", **{"model.teacher_checkpoint": str(teacher_file)})))
    reference = build_encoder("vit_tiny", **TINY_SHAPE)
    ckpt.load_encoder_weights(reference, teacher_file)
    with open(tmp_path / "s" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["tflops_per_gpu"]) > 0 and float(r["mfu"]) == 0.0 for r in rows)  # no known peak on a CPU
    state = ckpt.load_latest(tmp_path / "s" / "checkpoints")[1]
    assert not any(k.startswith("teacher") for k in state["model"])  # the teacher is not trained or saved

    # vjepa: after the run the teacher equals the EMA recursion over the saved students.
    out = tmp_path / "v"
    train(load_config(None, tiny(out, synthetic, "vjepa", **{"optim.steps": 2, "checkpoint.every": 1, "optim.ema_momentum": 0.5})))
    first, second = (ckpt.load_checkpoint(out / "checkpoints" / f"step_{s:08d}.pt") for s in (1, 2))
    for name, value in second["teacher"].items():
        expected = 0.5 * first["teacher"][name] + 0.5 * second["model"][f"encoder.{name}"]
        torch.testing.assert_close(value, expected)


def test_missing_teacher_is_an_error_before_anything_is_written(synthetic, tmp_path):
    with pytest.raises(ConfigError, match="model.teacher_checkpoint: .*nope.safetensors"):
        train(load_config(None, tiny(tmp_path / "run", synthetic, "salt", **{"model.teacher_checkpoint": str(tmp_path / "nope.safetensors")})))
    assert not (tmp_path / "run").exists()


def run_cli(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "salt_fast.train", *args], env={**os.environ, **(env or {})}, **kwargs)


def test_kill_and_resume_continues_the_same_loss_curve(synthetic, tmp_path):
    extra = {"optim.steps": 10}
    whole = tmp_path / "whole"
    assert run_cli(tiny(whole, synthetic, **extra)).wait() == 0

    cut = tmp_path / "cut"
    proc = run_cli(tiny(cut, synthetic, **extra), stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "checkpoints" / "step_00000004.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its 4th step was saved"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_cli(tiny(cut, synthetic, **extra)).wait() == 0  # resume=auto
    assert losses(cut) == losses(whole)  # bit for bit on the CPU


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(synthetic, tmp_path):
    train(load_config(None, tiny(tmp_path, synthetic, **{"optim.steps": 4})))
    newest = tmp_path / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(ckpt.CheckpointWarning, match="step_00000004.pt"):
        summary = train(load_config(None, tiny(tmp_path, synthetic, **{"optim.steps": 6})))
    assert summary["steps"] == 6 and (tmp_path / "checkpoints" / "step_00000006.pt").exists()


@pytest.mark.parametrize(("distributed", "port"), [("ddp", 29517), ("fsdp", 29518)])
def test_two_gloo_processes_reproduce_one_process(synthetic, tmp_path, distributed, port):
    one = tmp_path / "one"
    assert run_cli(tiny(one, synthetic, **{"data.batch_size": 4, "optim.steps": 3})).wait() == 0
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", "salt_fast.train"]
    extra = {"data.batch_size": 2, "optim.steps": 3, "runtime.distributed": distributed}
    done = subprocess.run([*cmd, *tiny(two, synthetic, **extra)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys()
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    assert (two / "encoder.safetensors").exists()


def test_resuming_another_runs_checkpoint_is_a_clear_error(synthetic, tmp_path):
    train(load_config(None, tiny(tmp_path, synthetic, **{"optim.steps": 2})))
    other = tiny(tmp_path, synthetic, **{"optim.steps": 4, "model.encoder_overrides": {**TINY_SHAPE, "depth": 2}})
    with pytest.raises(ValueError, match="another stage or model"):
        train(load_config(None, other))


def test_dali_decoder_trains_on_the_cpu(synthetic, tmp_path):
    pytest.importorskip("nvidia.dali")
    summary = train(load_config(None, tiny(tmp_path, synthetic, **{"data.decoder": "dali", "optim.steps": 3})))
    assert math.isfinite(summary["last_loss"])


def test_compile_mode_reaches_torch_compile(monkeypatch, tmp_path):
    from salt_fast import runtime

    seen = {}
    monkeypatch.setattr(runtime.torch, "compile", lambda model, mode: seen.setdefault("mode", mode) and model)
    cfg = load_config(None, tiny(tmp_path, tmp_path, **{"runtime.compile": True, "runtime.compile_mode": "reduce-overhead"}))
    runtime.build_run(cfg, runtime.setup_runtime(cfg.runtime))
    assert seen == {"mode": "reduce-overhead"}
    with pytest.raises(ConfigError, match="runtime.compile_mode: expected one of default, reduce-overhead"):
        load_config(None, ["runtime.compile_mode=fast"])
