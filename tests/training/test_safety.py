"""Trustworthy runs: no code runs from a checkpoint, no good state is lost to a NaN or a kill,
no bad input gets past the door, one run per output folder."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from salt_fast import checkpoint as ckpt
from salt_fast.config import load_config
from salt_fast.models import build_encoder
from salt_fast.runtime import NonFiniteLoss, NonFiniteWatch, build_run, masks_to, setup_runtime, train_step
from salt_fast.masking import MaskSampler
from salt_fast.train import main, train
from support import TINY_SHAPE, tiny

# ----------------------------------------------------------------------------- checkpoints run no code


class Boom:
    """Unpickling this creates ``marker``: proof that loading ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A finished vjepa run whose newest checkpoint (valid checksum, written by save_checkpoint)
    carries a code-executing object; and the marker file that object would create."""
    root = tmp_path_factory.mktemp("hostile")
    out = root / "run"
    train(load_config(None, tiny(out, root / "synthetic", "vjepa", **{"optim.steps": 2, "checkpoint.every": 2})))
    state = ckpt.load_checkpoint(out / "checkpoints" / "step_00000002.pt")
    marker = root / "code_ran"
    for step in (1, 3):  # the oldest (loss vs accuracy reads it first) and the newest (resume reads it first)
        ckpt.save_checkpoint(out / "checkpoints", step, {**state, "step": step, "extra": Boom(marker)}, keep=5)
    with open(out / "metrics.csv") as f:  # a logged step 3, as a real run would have
        rows = list(csv.DictReader(f))
    with open(out / "metrics.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[-1])).writerow({**rows[-1], "step": 3})
    return out, out / "checkpoints" / "step_00000003.pt", marker


def _refused(text: str, path: Path) -> None:
    hostile = (path, path.with_name("step_00000001.pt"))
    assert "refused to load" in text and any(str(p) in text for p in hostile) and "weights_only" in text, text


@pytest.mark.parametrize("how", ["resume_auto", "resume_path", "load_encoder_file", "load_encoder_dir", "run_models"])
def test_code_executing_checkpoint_is_refused_on_every_python_path(hostile_run, how):
    from salt_fast.eval.encoders import load_encoder, load_run_models

    out, bad, marker = hostile_run
    calls = {
        "resume_auto": lambda: train(load_config(None, tiny(out, out.parent / "synthetic", "vjepa", **{"optim.steps": 4}))),
        "resume_path": lambda: train(load_config(None, tiny(out, out.parent / "synthetic", "vjepa",
                                                            **{"optim.steps": 4, "checkpoint.resume": str(bad)}))),
        "load_encoder_file": lambda: load_encoder(bad),
        "load_encoder_dir": lambda: load_encoder(out),
        "run_models": lambda: load_run_models(out),
    }  # fmt: skip
    with pytest.raises(ckpt.UnsafeCheckpointError) as info:
        calls[how]()
    _refused(str(info.value), bad)
    assert not marker.exists()


@pytest.mark.parametrize(
    "tool",
    [
        ["salt_fast.eval.probe", "--train-list", "x.txt", "--val-list", "x.txt", "--checkpoint"],
        ["salt_fast.eval.rankme", "--list", "x.txt", "--checkpoint"],
        ["salt_fast.eval.surprise", "--pairs", "x.txt", "--checkpoint"],
        ["salt_fast.eval.loss_vs_accuracy", "--train-list", "x.txt", "--val-list", "x.txt", "--run"],
    ],
    ids=lambda t: t[0].rsplit(".", 1)[1],
)
def test_eval_clis_refuse_a_code_executing_checkpoint_in_one_line(hostile_run, tool, tmp_path):
    out, bad, marker = hostile_run
    target = out if tool[0].endswith("loss_vs_accuracy") else bad
    (tmp_path / "x.txt").write_text("nothing.mp4 0\n")
    done = subprocess.run([sys.executable, "-m", *tool, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    _refused(lines[0], bad)
    assert not marker.exists()


# ----------------------------------------------------------------------------- non-finite steps


def test_a_non_finite_gradient_is_never_applied(tmp_path):
    cfg = load_config(None, tiny(tmp_path, tmp_path, "vjepa"))
    run = build_run(cfg, setup_runtime(cfg.runtime))
    clips = torch.randn(2, 3, 4, 32, 32)
    masks = MaskSampler(run.grid, seed=0).sample(2, 0)
    train_step(run, clips, masks, 0)  # a normal step first: the optimizer has state
    before = {k: v.clone() for k, v in run.learner.state_dict().items()}
    teacher = {k: v.clone() for k, v in run.teacher.state_dict().items()}
    moments = [{k: v.clone() for k, v in s.items()} for s in run.optimizer.state.values()]
    weight = run.learner.encoder.blocks[0].mlp.fc1.weight
    hook = weight.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    result = train_step(run, clips, masks, 1)
    hook.remove()
    assert not result.applied and torch.isfinite(result.loss)
    for k, v in run.learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in run.teacher.state_dict().items():  # no EMA update either
        assert torch.equal(v, teacher[k]), k
    for now, then in zip(run.optimizer.state.values(), moments):  # moments and step count untouched
        assert all(torch.equal(now[k], then[k]) for k in then)
    watch = NonFiniteWatch(torch.device("cpu"))
    watch.update(result, 1)
    with pytest.raises(NonFiniteLoss, match=r"step 2 \(as metrics.csv counts\) has loss [0-9.]+ and gradient norm inf"):
        watch.check(tmp_path)
    assert train_step(run, clips, masks, 2).applied  # the next finite step trains again


def test_a_run_driven_to_nan_keeps_a_good_checkpoint_even_with_keep_1(tmp_path):
    good = {"optim.steps": 8, "checkpoint.every": 2, "checkpoint.keep": 1}
    train(load_config(None, tiny(tmp_path, tmp_path / "synthetic", **{**good, "optim.steps": 4})))
    # Resumed at an absurd lr: step 5 blows the weights up to ~1e30, step 6's loss is NaN.
    bad = {**good, "optim.lr_start": 1e30, "optim.lr_peak": 1e30, "optim.lr_end": 1e30, "optim.grad_clip": 1e30}
    with pytest.raises(NonFiniteLoss, match=r"step 6 \(as metrics.csv counts\) has loss nan.*step_00000004.pt, the last good"):
        train(load_config(None, tiny(tmp_path, tmp_path / "synthetic", **bad)))
    (only,) = ckpt.list_checkpoints(tmp_path / "checkpoints")
    state = ckpt.load_checkpoint(only)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in state["model"].values())
    # The same run, resumed at a sane lr, trains to its end.
    summary = train(load_config(None, tiny(tmp_path, tmp_path / "synthetic", **good)))
    assert summary["steps_run"] == 4 and torch.isfinite(torch.tensor(summary["last_loss"]))


def test_a_non_finite_state_is_never_written(tmp_path):
    cfg = load_config(None, tiny(tmp_path, tmp_path, "vjepa", **{"checkpoint.keep": 1}))
    run = build_run(cfg, setup_runtime(cfg.runtime))
    ckpt.save_training_state(run, 1)
    for module in (run.learner.head, run.teacher):  # the trained weights, then the EMA teacher
        param = next(module.parameters())
        saved = param.detach().clone()
        with torch.no_grad():
            param[0] = float("inf")
        with pytest.raises(ckpt.NonFiniteState, match=r"after step 2 is not finite.*step_00000001.pt, the last good"):
            ckpt.save_training_state(run, 2)
        with torch.no_grad():
            param.copy_(saved)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000001.pt"]


class SyncCounter(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: reading a value (``.item()``,
    ``bool(tensor)``) and copies from a device to the host."""

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs.append(str(func))
        elif func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if isinstance(out, torch.Tensor) and out.device.type == "cpu" and source.device.type != "cpu":
                self.syncs.append(f"{func} from {source.device}")
        return out


@pytest.mark.parametrize("stage", ["pixel", "vjepa"])
def test_a_training_step_never_waits_for_the_host(stage, tmp_path):
    cfg = load_config(None, tiny(tmp_path, tmp_path, stage))
    run = build_run(cfg, setup_runtime(cfg.runtime))
    clips = torch.randn(2, 3, 4, 32, 32)
    masks = masks_to(MaskSampler(run.grid, seed=0).sample(2, 0), torch.device("cpu"))
    train_step(run, clips, masks, 0)
    with SyncCounter() as counter:
        result = train_step(run, clips, masks, 1)
        NonFiniteWatch(torch.device("cpu")).update(result, 1)  # the loop's per-step bookkeeping too
    assert counter.syncs == []  # finite checks, the skipped update and the EMA are decided on the device


# ----------------------------------------------------------------------------- kills, debris, duplicates

KILL_DURING_WRITE = """
import os, signal, sys
from salt_fast import checkpoint
from salt_fast.train import main
real = checkpoint.save_checkpoint
def dying(directory, step, state, keep=3):
    if step == 6:  # die with the write half done: the temp file exists, its rename never happens
        write = checkpoint._HashingWriter.write
        def first_chunk_then_die(self, b):
            write(self, b)
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint._HashingWriter.write = first_chunk_then_die
    return real(directory, step, state, keep)
checkpoint.save_checkpoint = dying
main(sys.argv[1:])
"""


def test_a_kill_during_a_checkpoint_write_leaves_no_debris_and_no_duplicate_rows(tmp_path):
    extra = {"optim.steps": 8, "log.tensorboard": True}
    whole = tmp_path / "whole"
    train(load_config(None, tiny(whole, tmp_path / "synthetic", **extra)))

    cut = tmp_path / "cut"
    args = tiny(cut, tmp_path / "synthetic", **extra)
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, *args], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list((cut / "checkpoints").glob(".tmp-step_00000006.pt.*.partial")), "the kill was not mid-write"
    with open(cut / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 7))  # 5 and 6 ran after the last save

    # TensorBoard names event files by the second they were opened (then by pid): a resume in the
    # same second as the killed run's start could be read before it. Real resumes take longer.
    time.sleep(1.1)
    train(load_config(None, args))  # resume=auto from step 4
    assert not list(cut.rglob("*.partial"))
    with open(cut / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    with open(whole / "metrics.csv") as f:
        expected = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # every step once
    assert [r["loss"] for r in rows] == [r["loss"] for r in expected]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(cut / "tb")).Reload().Scalars("loss")
    assert sorted(e.step for e in events) == list(range(1, 9))


# ----------------------------------------------------------------------------- bad input at the door


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "encoder.safetensors"
    ckpt.export_encoder(build_encoder("vit_tiny", **TINY_SHAPE), path)
    return path


def _bad_inputs(tmp: Path, teacher: Path) -> dict:
    (tmp / "bad_line.txt").write_text("clip0.mp4 0\nclip1.mp4 not-a-label\n")
    (tmp / "good.yaml").write_text("stage: pixel\n")
    wrong = tmp / "wrong_teacher.safetensors"
    ckpt.export_encoder(build_encoder("vit_tiny", **{**TINY_SHAPE, "embed_dim": 96}), wrong)
    salt = {"stage": "salt"}
    return {
        "bad key": ({"optim.stepz": 3}, "optim.stepz: unknown key; did you mean 'steps'"),
        "bad value": ({"optim.lr_peak": -1}, "optim.lr_peak: must be > 0"),
        "missing config": ({"--config": tmp / "nope.yaml"}, "nope.yaml: no such config file"),
        "missing list": ({"data.train_lists": f"[{tmp / 'gone.txt'}]"}, r"data.train_lists\[0\]: dataset list not found"),
        "bad list line": ({"data.train_lists": f"[{tmp / 'bad_line.txt'}]"}, r"bad_line.txt:2: label 'not-a-label'"),
        "no teacher": (salt, "model.teacher_checkpoint: stage 'salt' needs"),
        "missing teacher": ({**salt, "model.teacher_checkpoint": tmp / "gone.safetensors"},
                            "model.teacher_checkpoint: encoder export not found"),
        "mismatched teacher": ({**salt, "model.teacher_checkpoint": wrong}, "model.teacher_checkpoint: .* does not match"),
    }  # fmt: skip


def test_command_line_errors_are_one_line_exit_2_and_write_nothing(teacher_file, tmp_path, capsys):
    for name, (extra, expected) in _bad_inputs(tmp_path, teacher_file).items():
        out = tmp_path / name.replace(" ", "_")
        config = [f"--config={extra.pop('--config')}"] if "--config" in extra else []
        args = [*config, *tiny(out, tmp_path / "synthetic", **extra)]
        with pytest.raises(SystemExit) as info:
            main(args)
        err = capsys.readouterr().err
        assert info.value.code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert re.search(expected, lines[0]), (name, lines[0])
        assert not out.exists(), name  # nothing written, nothing built


# ----------------------------------------------------------------------------- one run per output folder


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_run_on_the_same_output_dir_stops_at_once(tmp_path, capsys):
    args = tiny(tmp_path / "run", tmp_path / "synthetic", **{"optim.steps": 400, "checkpoint.every": 1})
    first = subprocess.Popen([sys.executable, "-m", "salt_fast.train", *args], stdout=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "run" / "checkpoints" / "step_00000001.pt", first)
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: output_dir {tmp_path / 'run'} is in use by another run (pid {first.pid} holds "
                       f"{tmp_path / 'run' / '.lock'}); wait for it or stop it, or choose another output_dir")  # fmt: skip
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The OS released the killed run's lock: the next run takes the folder over and resumes.
    summary = train(load_config(None, [*args, "optim.steps=3"]))
    assert summary["steps_run"] <= 3


def test_ranks_stop_when_torchrun_is_killed(tmp_path):
    args = tiny(tmp_path / "run", tmp_path / "synthetic", **{"optim.steps": 400, "checkpoint.every": 1})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m", "salt_fast.train"]
    launcher = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "run" / "checkpoints" / "step_00000001.pt", launcher)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in ranks) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in ranks), "ranks kept training after the launcher died"


# ----------------------------------------------------------------------------- the kernels switch


def test_runtime_kernels_triton_works_on_a_cpu_machine(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SALT_FAST_KERNELS")}
    args = tiny(tmp_path / "run", tmp_path / "synthetic", **{"optim.steps": 1, "optim.warmup_steps": 0, "runtime.kernels": "triton"})
    done = subprocess.run([sys.executable, "-m", "salt_fast.train", *args], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step_00000001.pt").exists()
