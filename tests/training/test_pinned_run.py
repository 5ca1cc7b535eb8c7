"""A short run of every stage, pinned: the loss and grad-norm curve of 6 steps, and the same
curve after a resume from step 2. Recorded before the stages / runtime refactor (commit 6f698a8)
and reproduced bit for bit after it; since then the fused AdamW (now used on the CPU too, for a
step without host syncs) moves them by at most 3e-7 relative, the kernels' rounding. A change
that alters what training computes (init order, RNG use, the step, the masks, resume) moves
them by far more than the tolerance."""

import csv
from pathlib import Path

import pytest
import torch

from salt_fast import checkpoint as ckpt
from salt_fast.config import load_config
from salt_fast.models import build_encoder
from salt_fast.train import train
from support import TINY_SHAPE, tiny

# (loss, grad_norm) at steps 1..6 of `tiny(stage)` with the teacher below, on 2-core x86 CPUs.
PINNED = {
    "pixel": [
        (1.0176141262054443, 4.884839057922363),
        (1.016737937927246, 3.0154895782470703),
        (1.0153839588165283, 0.7939822673797607),
        (1.0166492462158203, 0.7483263611793518),
        (1.0204468965530396, 0.47327369451522827),
        (1.0112051963806152, 1.0156748294830322),
    ],
    "salt": [
        (0.811477780342102, 13.436625480651855),
        (0.7884695529937744, 12.464553833007812),
        (0.7723935842514038, 6.771389961242676),
        (0.78248131275177, 1.555688738822937),
        (0.7731757164001465, 1.4638628959655762),
        (0.7746557593345642, 1.4270894527435303),
    ],
    "vjepa": [
        (0.8101082444190979, 15.375279426574707),
        (0.7692340612411499, 22.563278198242188),
        (0.7649720907211304, 5.29865026473999),
        (0.7553544044494629, 1.5337402820587158),
        (0.7861675024032593, 1.6266077756881714),
        (0.7645073533058167, 1.3679513931274414),
    ],
}


def curve(out: Path) -> dict[int, tuple[float, float]]:
    """step -> (loss, grad_norm) from metrics.csv; a resumed run's rows replace the earlier ones."""
    with open(out / "metrics.csv") as f:
        return {int(r["step"]): (float(r["loss"]), float(r["grad_norm"])) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def pinned_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("pinned") / "teacher.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        ckpt.export_encoder(build_encoder("vit_tiny", **TINY_SHAPE), path)
    return path


@pytest.mark.parametrize("stage", sorted(PINNED))
def test_short_run_and_its_resume_reproduce_the_pinned_curve(stage, pinned_teacher, tmp_path):
    overrides = tiny(tmp_path / "run", tmp_path / "synthetic", stage, **{"model.teacher_checkpoint": str(pinned_teacher)})
    train(load_config(None, overrides))
    whole = curve(tmp_path / "run")
    assert sorted(whole) == list(range(1, 7))
    for step, (loss, grad_norm) in whole.items():
        # Bit-identical on the machine that recorded them; a tolerance for other CPUs' kernels.
        assert (loss, grad_norm) == pytest.approx(PINNED[stage][step - 1], rel=1e-5), step

    for step in (4, 6):  # resume=auto from step 2 must retrace the same curve exactly
        (tmp_path / "run" / "checkpoints" / f"step_{step:08d}.pt").unlink()
    train(load_config(None, overrides))
    assert curve(tmp_path / "run") == whole
