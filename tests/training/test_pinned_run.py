"""A short run of every stage, pinned: the loss and grad-norm curve of 6 steps, and the same
curve after a resume from step 2. First recorded at 6f698a8 and reproduced bit for bit by the
stages / runtime refactor (7d83065); then moved on purpose twice: by the fused CPU AdamW (<= 3e-7
relative) and by issue 16's uint8 resize (clip pixels move by at most one level), after which
they were re-recorded. A change that alters what training computes (init order, RNG use, the
step, the masks, resume) moves them by far more than the tolerance."""

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
        (1.0175549983978271, 4.637496471405029),
        (1.0166853666305542, 3.071422815322876),
        (1.0154025554656982, 0.7823137044906616),
        (1.0165386199951172, 0.7427006363868713),
        (1.0203661918640137, 0.4557877480983734),
        (1.0114226341247559, 0.9741442799568176),
    ],
    "salt": [
        (0.8121492862701416, 13.422470092773438),
        (0.7887836694717407, 12.439620018005371),
        (0.7738562822341919, 6.8050856590271),
        (0.7819690704345703, 1.5157091617584229),
        (0.773551344871521, 1.5073504447937012),
        (0.7757605314254761, 1.4606410264968872),
    ],
    "vjepa": [
        (0.8103616237640381, 15.673274993896484),
        (0.7647033929824829, 19.299116134643555),
        (0.763793408870697, 5.450906276702881),
        (0.7532576322555542, 1.5477582216262817),
        (0.7852780818939209, 1.603639006614685),
        (0.765884518623352, 1.3680919408798218),
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
