"""Evaluation tools: attentive probe, RankMe, surprise, loss vs accuracy, encoder loading."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salt_fast import checkpoint as ckpt
from salt_fast.config import load_config
from salt_fast.data import SyntheticClips, VideoList, write_video
from salt_fast.eval import loss_vs_accuracy as lva
from salt_fast.eval import probe as probe_mod
from salt_fast.eval import rankme as rankme_mod
from salt_fast.eval import surprise as surprise_mod
from salt_fast.eval.encoders import load_encoder, load_run_models
from salt_fast.eval.probe import Features, ProbeConfig, build_heads, evaluate_heads, run_probe, train_heads
from salt_fast.models import build_encoder, build_predictor
from salt_fast.models.probe import AttentiveProbe
from salt_fast.train import train
from support import ROOT

TINY = {"depth": 1, "embed_dim": 48, "num_heads": 2, "mlp_hidden": 96}
SMALL_PROBE = dict(frames=4, frame_step=2, resolution=32, batch_size=8, num_heads=4, num_workers=0, encode_batch_size=4)


def colour_videos(root, per_class=4, frames=10, size=32):
    """Two trivially separable classes: dark-red vs light-blue clips with a little noise."""
    rng = np.random.default_rng(0)
    lines = []
    for label, rgb in enumerate([(150, 20, 20), (60, 120, 230)]):
        for i in range(per_class):
            clip = np.clip(np.array(rgb) + rng.normal(0, 12, (frames, size, size, 3)), 0, 255).astype(np.uint8)
            path = write_video(root / f"c{label}_{i}.webm", clip)
            lines.append(f"{path.name} {label}\n")
    rng.shuffle(lines)
    return lines


@pytest.fixture(scope="module")
def colour_lists(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    lines = colour_videos(root, per_class=6)
    (root / "train.txt").write_text("".join(lines[:8]))
    (root / "val.txt").write_text("".join(lines[8:]))
    return root / "train.txt", root / "val.txt"


# ----------------------------------------------------------------------------- probe


def test_probe_shapes_and_gradients_reach_only_the_head():
    probe = AttentiveProbe(48, 5, depth=3, num_heads=4)
    tokens = torch.randn(3, 17, 48, requires_grad=True)
    logits = probe(tokens)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in probe.parameters())
    with pytest.raises(ValueError, match="must divide"):
        AttentiveProbe(50, 3, num_heads=16)
    with pytest.raises(ValueError, match="at least 2 classes"):
        AttentiveProbe(48, 1)


def test_heads_learn_a_separable_feature_set():
    torch.manual_seed(0)
    n, V, N, D, classes = 60, 1, 4, 16, 3
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, D) * 2
    tokens = centres[labels][:, None, None, :] + 0.5 * torch.randn(n, V, N, D)
    feats = Features(tokens.half(), labels)
    cfg = ProbeConfig(epochs=10, batch_size=12, lrs=(3e-3, 1e-4), wds=(0.01,), depth=1, num_heads=4, warmup_epochs=1)
    heads = build_heads(D, classes, cfg)
    batches, steps = probe_mod._cached_batches(feats, cfg)
    train_heads(heads, batches, steps, cfg, show_progress=False)
    val_tokens = centres[labels][:, None, None, :] + 0.5 * torch.randn(n, V, N, D)
    top1 = evaluate_heads(heads, Features(val_tokens.half(), labels))
    assert len(top1) == 2 and max(top1) > 90  # chance is 33%


def test_evaluation_averages_views_per_video():
    torch.manual_seed(0)
    heads = build_heads(8, 2, ProbeConfig(num_heads=2, depth=0))
    tokens = torch.randn(5, 3, 4, 8)
    top1 = evaluate_heads(heads, Features(tokens, torch.zeros(5, dtype=torch.int64)))
    with torch.no_grad():
        probs = heads[0](tokens.flatten(0, 1)).softmax(-1).view(5, 3, 2).mean(1)
    assert top1[0] == pytest.approx(100 * (probs.argmax(-1) == 0).float().mean().item())


def test_probe_cli_beats_chance_on_a_trivially_separable_set(colour_lists, tmp_path):
    train_list, val_list = colour_lists
    out = tmp_path / "probe.json"
    result = probe_mod.main([
        "--checkpoint", "random:vit_tiny", "--train-list", str(train_list), "--val-list", str(val_list),
        "--frames", "4", "--frame-step", "2", "--resolution", "32", "--epochs", "10", "--batch-size", "4",
        "--num-workers", "0", "--out", str(out),
    ])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["top1"] == result["top1"] >= 75  # chance is 50%
    assert saved["val_videos"] == 4 and saved["train_videos"] == 8 and saved["skipped_videos"] == 0
    assert saved["config"]["lrs"] == [1e-3] and saved["protocol"] == "fast"


def test_full_protocol_sweeps_twenty_heads_on_one_encoding(colour_lists, monkeypatch):
    train_list, val_list = colour_lists
    calls = []
    real = probe_mod.encode
    monkeypatch.setattr(probe_mod, "encode", lambda enc, clips: calls.append(clips.shape) or real(enc, clips))
    cfg = ProbeConfig.protocol("full", num_clips=2, epochs=1, depth=1, **SMALL_PROBE)
    encoder = build_encoder("vit_tiny", **TINY)
    result = run_probe(encoder, train_list, val_list, cfg, show_progress=False)
    assert len(result["heads"]) == 20
    assert {(h["lr"], h["wd"]) for h in result["heads"]} == {(lr, wd) for lr in cfg.lrs for wd in cfg.wds}
    assert result["best"]["top1"] == max(h["top1"] for h in result["heads"])
    # every video encoded once, as 2 clips x 3 views
    assert sum(s[0] for s in calls) == 12 and all(s[1] == 6 for s in calls)


def test_augmented_probe_runs_without_a_cache(colour_lists):
    train_list, val_list = colour_lists
    cfg = ProbeConfig(epochs=2, augment=True, **SMALL_PROBE)
    result = run_probe(build_encoder("vit_tiny", **TINY), train_list, val_list, cfg, show_progress=False)
    assert math.isfinite(result["heads"][0]["train_loss"])


def test_a_corrupt_video_is_skipped_and_counted(colour_lists, tmp_path):
    train_list, val_list = colour_lists
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"not a video at all")
    lines = val_list.read_text() + f"{bad} 0\n"
    broken = tmp_path / "val.txt"
    broken.write_text("\n".join(
        line if line.split()[0].startswith("/") else f"{val_list.parent / line.split()[0]} {line.split()[1]}"
        for line in lines.splitlines()
    ))  # fmt: skip
    cfg = ProbeConfig(**SMALL_PROBE)
    feats = probe_mod.encode_dataset(build_encoder("vit_tiny", **TINY), VideoList.from_file(broken), cfg)
    assert feats.skipped == 1 and feats.tokens.shape[0] == 4


def test_bad_probe_config_values_are_named():
    with pytest.raises(ValueError, match="num_views"):
        ProbeConfig(num_views=2)
    with pytest.raises(ValueError, match="unknown probe protocol"):
        ProbeConfig.protocol("slow")
    with pytest.raises(ValueError, match="lrs"):
        ProbeConfig(lrs=())


# ----------------------------------------------------------------------------- RankMe


def test_rankme_matches_the_svd_formula():
    x = torch.randn(50, 12, dtype=torch.float64) @ torch.diag(torch.linspace(0.1, 3, 12, dtype=torch.float64))
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme_mod.rankme(x) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)


def test_rankme_extremes():
    assert rankme_mod.rankme(torch.eye(16)) == pytest.approx(16, rel=1e-4)
    collapsed = torch.randn(40, 1) @ torch.randn(1, 16)
    assert rankme_mod.rankme(collapsed) == pytest.approx(1, abs=0.01)
    with pytest.raises(ValueError, match="non-empty"):
        rankme_mod.rankme(torch.randn(3))


def test_encoder_rankme_runs_on_videos(colour_lists):
    train_list, _ = colour_lists
    out = rankme_mod.encoder_rankme(build_encoder("vit_tiny", **TINY), VideoList.from_file(train_list), ProbeConfig(**SMALL_PROBE))
    assert out["videos"] == 8 and out["embed_dim"] == 48 and 1 <= out["rankme"] <= 8


# ----------------------------------------------------------------------------- surprise


def clip_tensor(clip: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, H, W] scaled like training input."""
    return (clip.permute(3, 0, 1, 2).float() / 255 - 0.45) / 0.225


def test_surprise_is_higher_when_the_last_frames_are_altered():
    torch.manual_seed(0)
    shape = dict(TINY, patch_size=8)
    student, teacher = build_encoder("vit_tiny", **shape).eval(), build_encoder("vit_tiny", **shape).eval()
    predictor = build_predictor(48, 48, 1, embed_dim=48, depth=2, num_heads=2, mlp_hidden=96)
    clips = SyntheticClips(16, frames=8, height=32, width=32, seed=1)
    data = torch.stack([clip_tensor(clips[i][0]) for i in range(len(clips))])
    # Train only the predictor, on 4 context frames -> 4 predicted frames of natural clips.
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=2e-3)
    grid = student.token_grid(data.shape)
    n_ctx = 2 * grid[1] * grid[2]
    ids = torch.arange(grid[0] * grid[1] * grid[2])
    with torch.no_grad():
        targets = F.layer_norm(teacher(data), (48,))[:, n_ctx:]
        context = student(data, ids[:n_ctx].expand(len(data), -1))
    for _ in range(40):
        pred = predictor(context, ids[:n_ctx].expand(len(data), -1), ids[n_ctx:].expand(len(data), -1), grid)
        loss = (pred - targets).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predictor.eval()

    video = clip_tensor(SyntheticClips(30, frames=12, height=32, width=32, seed=7)[29][0])
    altered = video.clone()
    altered[:, 8:] = torch.randn_like(altered[:, 8:])  # the last 4 frames become noise
    normal = surprise_mod.window_surprise(student, predictor, teacher, video, 4, 4, stride=2)
    broken = surprise_mod.window_surprise(student, predictor, teacher, altered, 4, 4, stride=2)
    assert normal.shape == broken.shape == (3,)  # windows start at frames 0, 2, 4
    # The first window predicts frames 4-7 (untouched); the last one exactly the altered frames.
    assert torch.allclose(broken[0], normal[0])
    assert broken[-1] > 1.2 * normal[-1]
    assert surprise_mod.video_surprise(broken, "max") > surprise_mod.video_surprise(normal, "max")
    assert surprise_mod.video_surprise(broken) > surprise_mod.video_surprise(normal)
    with pytest.raises(ValueError, match="multiples of the tubelet"):
        surprise_mod.window_surprise(student, predictor, teacher, video, 3, 4)
    with pytest.raises(ValueError, match="T >= 16"):
        surprise_mod.window_surprise(student, predictor, teacher, video, 8, 8)


def test_pair_accuracy_and_pair_lists(tmp_path):
    assert surprise_mod.pair_accuracy([1.0, 2.0, 3.0, 1.0], [2.0, 1.0, 4.0, 1.0]) == 50.0
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# possible impossible\na.mp4 b.mp4\n/abs/c.mp4 d.mp4\n")
    read = surprise_mod.read_pairs(pairs)
    assert read == [(tmp_path / "a.mp4", tmp_path / "b.mp4"), (Path("/abs/c.mp4"), tmp_path / "d.mp4")]
    pairs.write_text("only_one.mp4\n")
    with pytest.raises(ValueError, match="pairs.txt:1"):
        surprise_mod.read_pairs(pairs)
    with pytest.raises(FileNotFoundError, match="item list not found"):
        surprise_mod.read_pairs(tmp_path / "nope.txt")


# ----------------------------------------------------------------------------- runs: loading, loss vs accuracy


@pytest.fixture(scope="module")
def vjepa_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vjepa_run")
    overrides = {
        "stage": "vjepa", "output_dir": out / "run", "model.encoder": "vit_tiny", "model.encoder_overrides": TINY,
        "model.predictor_overrides": {"embed_dim": 48, "depth": 1, "num_heads": 2, "mlp_hidden": 96},
        "data.frames": 4, "data.resolution": 32, "data.batch_size": 2, "data.num_workers": 0,
        "data.synthetic_videos": 8, "data.synthetic_dir": out / "synthetic", "optim.steps": 4, "optim.warmup_steps": 1,
        "checkpoint.every": 2, "log.every": 1, "log.tensorboard": False, "log.progress": False,
    }  # fmt: skip
    train(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    return out / "run"


def test_load_encoder_from_every_source(vjepa_run):
    export = load_encoder(vjepa_run / "encoder.safetensors")
    run = load_run_models(vjepa_run)
    assert run.stage.name == "vjepa" and run.step == 4 and run.teacher is not None
    student = load_encoder(vjepa_run, which="encoder")
    ema = load_encoder(vjepa_run)  # auto: V-JEPA evaluates its EMA target encoder
    for a, b in zip(export.state_dict().values(), student.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), ema.state_dict().values()))
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.training
    assert load_encoder("random:vit_tiny").embed_dim == 192


def test_missing_or_wrong_checkpoints_are_clear_errors(vjepa_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder checkpoint not found"):
        load_encoder(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        load_encoder(tmp_path)
    with pytest.raises(ValueError, match="which must be"):
        load_encoder(vjepa_run, which="student")
    plain = tmp_path / "plain.safetensors"
    ckpt.export_encoder(build_encoder("vit_tiny", **TINY), plain)
    with pytest.raises(ckpt.CheckpointError, match="no 'preset' metadata"):
        load_encoder(plain)


def test_linear_fit_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=12)
    y = 3 - 2 * x + rng.normal(scale=0.5, size=12)
    fit = lva.linear_fit(x.tolist(), y.tolist())
    slope, intercept = np.polyfit(x, y, 1)
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    assert fit["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    assert lva.linear_fit([0, 1, 2], [1, 3, 5])["r2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="all x values are equal"):
        lva.linear_fit([1, 1], [2, 3])


def test_checkpoint_losses_average_since_the_previous_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss,lr\n1,4.0,0\n2,2.0,0\n3,1.0,0\n4,3.0,0\n")
    assert lva.checkpoint_losses(metrics, [4, 2]) == {2: 3.0, 4: 2.0}
    with pytest.raises(ValueError, match="no logged loss"):
        lva.checkpoint_losses(metrics, [2, 2])


def test_loss_vs_accuracy_probes_every_checkpoint(vjepa_run, colour_lists, tmp_path):
    train_list, val_list = colour_lists
    cfg = ProbeConfig(epochs=1, **SMALL_PROBE)
    result = lva.loss_vs_accuracy(vjepa_run, train_list, val_list, cfg, plot=tmp_path / "fit.png", show_progress=False)
    assert [p["step"] for p in result["points"]] == [2, 4]
    assert 0 <= result["fit"]["r2"] <= 1 and (tmp_path / "fit.png").stat().st_size > 0


def test_two_gloo_processes_reproduce_one_process_probe(colour_lists, tmp_path):
    train_list, val_list = colour_lists
    args = [
        "--checkpoint", "random:vit_tiny", "--train-list", str(train_list), "--val-list", str(val_list),
        "--frames", "4", "--frame-step", "2", "--resolution", "32", "--epochs", "3", "--batch-size", "4",
        "--num-workers", "0",
    ]  # fmt: skip
    one = probe_mod.main([*args, "--out", str(tmp_path / "one.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m", "salt_fast.eval.probe"]
    done = subprocess.run([*cmd, *args, "--out", str(tmp_path / "two.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["top1"] == one["top1"]
    assert two["heads"][0]["train_loss"] == pytest.approx(one["heads"][0]["train_loss"], rel=1e-4)


def test_vjepa2_checkpoints_load_their_target_encoder(tmp_path):
    from salt_fast.vjepa2 import save_vjepa2_checkpoint

    student = build_encoder("vit_tiny", **TINY, rope_mode="vjepa2")
    target = build_encoder("vit_tiny", **TINY, rope_mode="vjepa2")
    path = tmp_path / "vjepa2.pt"
    save_vjepa2_checkpoint(path, encoder=student, target_encoder=target)
    for which, expected in (("auto", target), ("teacher", target), ("encoder", student)):
        loaded = load_encoder(path, which)
        assert loaded.cfg.rope_mode == "vjepa2"
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), expected.state_dict().values()))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ckpt.CheckpointError, match="neither a salt_fast training checkpoint"):
        load_encoder(junk)


def test_reproduce_small_runs_end_to_end_at_toy_size(tmp_path):
    script = ROOT / "benchmarks" / "reproduce_small.py"
    out = tmp_path / "repro.json"
    args = [
        "--steps", "6", "--depth", "1", "--videos", "16", "--frames", "4", "--resolution", "32", "--batch-size", "2",
        "--num-workers", "0", "--checkpoints", "2", "--probe-epochs", "1", "--workdir", str(tmp_path / "w"), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["encoders"]) == {"random", "pixel", "salt", "vjepa"}
    assert [r["steps"] for r in result["encoders"].values()] == [0, 2, 6, 6]
    assert len(result["loss_vs_accuracy"]["points"]) == 2
    assert "| (c) SALT student |" in done.stdout

    # The probe-length diagnostic re-probes the same workdir; its first epoch count is the
    # reproduction's own probe, so the random encoder's motion score must come out the same.
    lengths = tmp_path / "lengths.json"
    args = ["--workdir", str(tmp_path / "w"), "--epochs", "1,2", "--out", str(lengths)]
    done = subprocess.run([sys.executable, str(script.with_name("probe_length.py")), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    probed = json.loads(lengths.read_text())
    assert set(probed["encoders"]) == {"random", "pixel", "salt", "vjepa"}
    assert [row["epochs"] for row in probed["encoders"]["salt"]] == [1, 2]
    assert probed["encoders"]["random"][0]["top1"] == result["encoders"]["random"]["motion"]["top1"]
    missing = subprocess.run([sys.executable, str(script.with_name("probe_length.py")), "--workdir", str(tmp_path / "nowhere")],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "run benchmarks/reproduce_small.py" in missing.stderr
