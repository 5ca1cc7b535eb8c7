"""Intuitive-physics surprise: scoring pairs and quadruplets, intervals, controls, the CLI and the benchmark."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salt_fast.config import load_config
from salt_fast.data import make_physics_dataset
from salt_fast.eval import surprise as S
from salt_fast.eval.encoders import load_run_models
from salt_fast.kernels.pixel_loss import pixel_mse_loss_reference
from salt_fast.models import build_encoder, build_pixel_decoder
from salt_fast.train import train
from support import ROOT

TINY = {"depth": 1, "embed_dim": 48, "num_heads": 2, "mlp_hidden": 96, "patch_size": 8}
WINDOW = ["--context-frames", "2", "--predict-frames", "2", "--resolution", "32"]


# ----------------------------------------------------------------------------- scoring, with a model whose surprise is known


class PatchColour(nn.Module):
    """Encoder and target: each token is its tubelet's mean colour (3 channels)."""

    cfg = SimpleNamespace(tubelet_size=2, patch_size=8)

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # surprise reads the device from the parameters

    def token_grid(self, shape):
        return shape[2] // 2, shape[3] // 8, shape[4] // 8

    def forward(self, clips, ids=None):
        tokens = F.avg_pool3d(clips, (2, 8, 8)).flatten(2).transpose(1, 2)
        return tokens if ids is None else tokens.gather(1, ids[..., None].expand(-1, -1, 3))


class CopyLast(nn.Module):
    """Predictor: "nothing changes": every target token is the (LayerNorm'd) context token at the
    same place in the last context tubelet, so a video's surprise is how much it changes."""

    mask_tokens = [None]

    def forward(self, context, context_ids, target_ids, grid, mask_index=0):
        per_step = grid[1] * grid[2]
        last = context[:, -per_step:]
        return F.layer_norm(last.gather(1, (target_ids % per_step)[..., None].expand(-1, -1, 3)), (3,))


def colour_video(first, second, frames=12, size=16):
    video = torch.empty(3, frames, size, size)
    video[:, : frames // 2] = torch.tensor(first, dtype=torch.float)[:, None, None, None]
    video[:, frames // 2 :] = torch.tensor(second, dtype=torch.float)[:, None, None, None]
    return video


def test_impossible_videos_are_more_surprising_by_construction_pairs_and_quads():
    model = S.SurpriseModel(PatchColour(), CopyLast(), PatchColour())
    red, blue = (1.0, -1.0, -1.0), (-1.0, -0.5, 1.0)
    videos = {Path("red"): colour_video(red, red), Path("blue"): colour_video(blue, blue),
              Path("red_blue"): colour_video(red, blue), Path("blue_red"): colour_video(blue, red)}  # fmt: skip
    scores = dict(zip(videos, S.surprise_scores(model, list(videos.values()), 2, 2)))
    assert scores[Path("red")] == scores[Path("blue")] == 0.0 < scores[Path("red_blue")]
    quad = [Path(p) for p in ("red", "blue", "red_blue", "blue_red")]
    wrong_pair = [Path("red_blue"), Path("red")]  # listed the wrong way round
    result = S.score_items(model, [quad, quad[::2], wrong_pair], videos, 2, 2)
    assert result["accuracy"] == pytest.approx(200 / 3) and (result["correct"], result["n"]) == (2, 3)
    rows = result["per_item"]
    assert [r["correct"] for r in rows] == [True, True, False]
    assert rows[0]["videos"] == ["red", "blue", "red_blue", "blue_red"] and len(rows[0]["surprise"]) == 4
    assert rows[0]["surprise"] == [scores[p] for p in quad]
    # Batching windows across videos changes nothing; max reduces the same windows.
    one_by_one = [S.video_surprise(S.window_surprise(PatchColour(), CopyLast(), PatchColour(), v, 2, 2)) for v in videos.values()]
    assert S.surprise_scores(model, list(videos.values()), 2, 2, batch_size=1) == pytest.approx(one_by_one)
    assert S.surprise_scores(model, [videos[Path("red_blue")]], 2, 2, reduce="max")[0] > scores[Path("red_blue")]
    # Several models at once, sharing a target module and pixel targets, score as they do alone.
    shared = {"a": model, "b": S.SurpriseModel(PatchColour(), CopyLast(), model.target)}
    together = S.score_models(shared, list(videos.values()), 2, 2, batch_size=3)
    assert together["a"] == together["b"] == [scores[p] for p in videos]


def test_item_verdicts():
    assert S.item_correct([1.0, 2.0]) and not S.item_correct([2.0, 1.0]) and not S.item_correct([1.0, 1.0])
    assert S.item_correct([1.0, 3.0, 2.5, 1.6]) and not S.item_correct([1.0, 3.0, 2.5, 1.5])  # totals, not pairs
    with pytest.raises(ValueError, match="2 or 4"):
        S.item_correct([1.0, 2.0, 3.0])


def test_wilson_interval_known_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 -> 0.2553-0.3662; 0/10 and 10/10.
    assert S.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert S.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert S.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    summary = S.accuracy_summary([True] * 30 + [False] * 10)
    assert summary["accuracy"] == 75.0 and (summary["correct"], summary["n"]) == (30, 40)
    assert summary["ci95"] == pytest.approx([59.81, 85.81], abs=0.01)
    with pytest.raises(ValueError):
        S.wilson_interval(3, 2)


def test_pixel_surprise_is_the_stage_one_loss_per_clip():
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny", **TINY).eval()
    decoder = build_pixel_decoder(48, 2, 8, 3, 1, embed_dim=48, depth=1, num_heads=2, mlp_hidden=96).eval()
    clips = torch.randn(3, 3, 4, 16, 16)
    got = S.clip_surprise(S.SurpriseModel(encoder, decoder, None), clips, 2)
    ids = torch.arange(8)  # a (2, 2, 2) grid: the first tubelet's 4 tokens are the context
    for b in range(3):
        with torch.no_grad():
            pred = decoder(encoder(clips[b : b + 1], ids[None, :4]), ids[None, :4], ids[None, 4:], (2, 2, 2))
            want = pixel_mse_loss_reference(pred, clips[b : b + 1], ids[None, 4:], 2, 8)
        assert got[b] == pytest.approx(float(want), rel=1e-5)


def test_item_lists(tmp_path):
    items = tmp_path / "items.txt"
    items.write_text("# comment\na.webm b.webm\n/abs/c.webm d.webm e.webm f.webm\n")
    assert S.read_items(items) == [(tmp_path / "a.webm", tmp_path / "b.webm"),
                                   (Path("/abs/c.webm"), *(tmp_path / f"{x}.webm" for x in "def"))]  # fmt: skip
    with pytest.raises(S.UsageError, match="items.txt:3"):
        S.read_pairs(items)
    items.write_text("a b c\n")
    with pytest.raises(S.UsageError, match="items.txt:1: expected"):
        S.read_items(items)
    items.write_text("# nothing\n")
    with pytest.raises(S.UsageError, match="no items"):
        S.read_items(items)


# ----------------------------------------------------------------------------- runs, controls, the command line


def tiny_run(out: Path, stage: str, masks: str) -> Path:
    overrides = {
        "stage": stage, "output_dir": out / stage, "model.encoder": "vit_tiny", "model.encoder_overrides": TINY,
        "model.predictor_overrides": {"embed_dim": 48, "depth": 1, "num_heads": 2, "mlp_hidden": 96},
        "masking.configs": masks, "data.frames": 4, "data.resolution": 32, "data.batch_size": 2, "data.num_workers": 0,
        "data.synthetic_videos": 8, "data.synthetic_dir": out / "synthetic", "optim.steps": 2, "optim.warmup_steps": 1,
        "checkpoint.every": 2, "log.every": 1, "log.tensorboard": False, "log.progress": False,
    }  # fmt: skip
    train(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    return out / stage


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("surprise")
    runs = {"vjepa": tiny_run(root, "vjepa", "future"), "pixel": tiny_run(root, "pixel", "multi_block_future")}
    lists = make_physics_dataset(root / "physics", num_items=2, frames=8, size=32, kinds=("teleport",))
    return SimpleNamespace(root=root, runs=runs, quads=lists["teleport_quads"], pairs=lists["teleport_pairs"])


def test_future_masks_train_and_pick_the_surprise_mask_token(setup):
    header = (setup.runs["pixel"] / "metrics.csv").read_text().splitlines()[0]
    assert {"loss_mask0", "loss_mask1", "loss_mask2"} <= set(header.split(","))  # multi_block + future frames
    assert "loss_mask1" not in (setup.runs["vjepa"] / "metrics.csv").read_text().splitlines()[0]
    model, described = S.load_surprise_model(setup.runs["pixel"])
    assert model.mask_index == 2 and model.target is None and described["target"] == "pixel"
    assert S.load_surprise_model(setup.runs["vjepa"])[0].mask_index == 0


def test_controls_replace_the_right_models(setup):
    run = load_run_models(setup.runs["vjepa"])
    trained, _ = S.load_surprise_model(setup.runs["vjepa"])
    student, described = S.load_surprise_model(setup.runs["vjepa"], "random-student", seed=3)
    everything, _ = S.load_surprise_model(setup.runs["vjepa"], "random", seed=3)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert same(trained.target, run.teacher) and same(student.target, run.teacher)  # the trained EMA target kept
    assert not same(student.encoder, run.encoder) and not same(student.predictor, run.predictor)
    assert same(everything.encoder, student.encoder) and same(everything.predictor, student.predictor)  # one seed, one init
    assert same(everything.target, everything.encoder)  # V-JEPA's target starts as a copy of the student
    assert described["control"] == "random-student" and described["seed"] == 3
    again, _ = S.load_surprise_model(setup.runs["vjepa"], "random-student", seed=3)
    assert same(again.encoder, student.encoder)


def test_cli_keeps_every_item_and_its_arguments(setup, tmp_path, capsys):
    out = tmp_path / "quads.json"
    result = S.main(["--checkpoint", str(setup.runs["vjepa"]), "--items", str(setup.quads), *WINDOW, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["quadruplets"] == 2 and saved["pairs"] == 0 and saved["n"] == 2
    assert len(saved["per_item"]) == 2 and all(len(row["surprise"]) == 4 for row in saved["per_item"])
    assert saved["args"]["items"] == str(setup.quads)  # the arguments no longer overwrite the scores
    assert saved["model"]["control"] == "none" and saved["model"]["stage"] == "vjepa"
    assert saved["interval"].startswith("Wilson") and len(saved["ci95"]) == 2
    assert "over 2 items (0 pairs, 2 quadruplets)" in capsys.readouterr().out

    pairs = S.main(["--checkpoint", str(setup.runs["vjepa"]), "--pairs", str(setup.pairs), *WINDOW])  # the old flag
    assert pairs["pairs"] == 2 and all(len(row["surprise"]) == 2 for row in pairs["per_item"])


def test_cli_accepts_random_controls(setup):
    for control in ("random", "random-student"):
        got = S.main(["--checkpoint", str(setup.runs["vjepa"]), "--control", control, "--items", str(setup.quads), *WINDOW])
        assert got["model"]["control"] == control and got["model"]["step"] == (0 if control == "random" else 2)
    got = S.main(["--checkpoint", "random:vit_tiny", "--items", str(setup.pairs), *WINDOW])
    assert got["model"]["checkpoint"] == "random:vit_tiny" and got["n"] == 2
    pixel = S.main(["--checkpoint", str(setup.runs["pixel"]), "--control", "random", "--items", str(setup.pairs), *WINDOW])
    assert pixel["model"]["target"] == "pixel"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "random:vit_tiny", "--control", "random", "--items", "PAIRS", *WINDOW], "already random"),
        (["--checkpoint", "random:vit_nope", "--items", "PAIRS", *WINDOW], "unknown preset"),
        (["--checkpoint", "PIXEL", "--control", "random-student", "--items", "PAIRS", *WINDOW], "no target encoder"),
        (["--checkpoint", "VJEPA", "--items", "PAIRS", "--context-frames", "8", "--predict-frames", "8"], "a window needs 16"),
        (["--checkpoint", "VJEPA", "--items", "PAIRS", "--context-frames", "3", "--predict-frames", "2"], "multiples of the tubelet"),
        (["--checkpoint", "VJEPA", "--items", "PAIRS", "--mask-index", "1", *WINDOW], "out of range"),
        (["--checkpoint", "VJEPA", "--items", "BAD", *WINDOW], "bad.txt:1: expected"),
        (["--checkpoint", "NOWHERE", "--items", "PAIRS", *WINDOW], "no training checkpoint"),
    ],
)
def test_cli_errors_are_one_line(setup, argv, message, capsys):
    bad = setup.root / "bad.txt"
    bad.write_text("one.webm two.webm three.webm\n")
    named = {"PIXEL": setup.runs["pixel"], "VJEPA": setup.runs["vjepa"], "BAD": bad, "PAIRS": setup.pairs,
             "NOWHERE": setup.root / "nowhere"}  # fmt: skip
    argv = [str(named.get(a, a)) for a in argv]
    if "--resolution" not in argv:
        argv += ["--resolution", "32"]
    with pytest.raises(SystemExit) as done:
        S.main(argv)
    err = capsys.readouterr().err  # after the decode progress bar, where the videos were read
    last = err.strip().splitlines()[-1]
    assert done.value.code == 2 and last.startswith("error: ") and message in last and "Traceback" not in err


def test_mcnemar_exact_p_values():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from physics_small import mcnemar

    assert mcnemar(0, 0) == 1.0 and mcnemar(3, 3) == 1.0
    assert mcnemar(10, 0) == pytest.approx(2 / 1024) and mcnemar(0, 10) == mcnemar(10, 0)
    assert mcnemar(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def test_physics_benchmark_runs_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "results" / "physics_small_toy.json"
    args = [
        "--steps", "3", "--depth", "1", "--videos", "8", "--frames", "4", "--resolution", "32", "--batch-size", "2",
        "--num-workers", "0", "--seeds", "0,1", "--items", "2", "--physics-frames", "10", "--masking", "multi_block_future",
        "--probe-epochs", "1", "--workdir", str(tmp_path / "w"), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "physics_small.py"), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    models = result["models"]
    assert list(models) == ["random", "random_pixel", "random_student_salt", "random_student_vjepa", "pixel", "salt", "vjepa"]
    assert [models[k]["steps"] for k in ("random", "pixel", "salt", "vjepa")] == [0, 1, 3, 3]
    salt = models["salt"]
    assert set(salt["quads"]) == {"permanence", "teleport", "colour", "shape", "reverse"}
    assert set(salt["pairs"]) == {"vanish", "appear", "teleport", "colour", "shape", "reverse"}
    cell = salt["quads"]["reverse"]
    assert cell["pooled"]["n"] == 4 and len(cell["seeds"]) == 2 and len(cell["pooled"]["ci95"]) == 2
    assert cell["pooled"]["correct"] == sum(s["correct"] for s in cell["seeds"])
    assert isinstance(cell["above_every_control"], bool)
    per_item = result["seeds"][1]["surprise"]["salt"]["reverse"]  # per item, the 4 videos' surprises
    assert len(per_item) == 2 and all(len(q) == 4 for q in per_item)
    verdicts = result["seeds"][1]["results"]["salt"]["quads"]["reverse"]["verdicts"]
    assert verdicts == [int(q[2] + q[3] > q[0] + q[1]) for q in per_item]
    paired = result["paired"]["salt_vs_vjepa"]["pairs"]["vanish"]
    assert paired["n"] == 4 and 0 <= paired["p_mcnemar"] <= 1
    assert set(models["vjepa"]["probe_top1"]["motion"]) == {"seeds", "mean"} and "probe_top1" not in models["random_pixel"]
    assert result["setup"]["masking"] == "multi_block_future"
    assert "| SALT student |" in done.stdout
    report = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--results", str(out.parent),
                             "--out", str(tmp_path / "REPORT.md")], capture_output=True, text=True)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    row = next(line for line in report.stdout.splitlines() if "| SALT student, 3 steps |" in line)
    cell = salt["quads"]["permanence"]["pooled"]
    assert row.startswith("| multi_block_future | 2 |") and row.endswith("| physics_small_toy.json |")
    assert f"{cell['accuracy']:.1f} [{cell['ci95'][0]:.0f}-{cell['ci95'][1]:.0f}]" in row
