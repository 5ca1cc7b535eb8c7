"""Intuitive-physics videos: shared halves, what each kind breaks, speeds, files and determinism."""

import json

import numpy as np
import pytest

from salt_fast.data import make_physics_dataset, probe, render_quad
from salt_fast.data.physics import KINDS, PAIR_KINDS, QUAD_NAMES
from salt_fast.data.synthetic import COLOURS, pixel_speed

FRAMES, SIZE = 16, 64
HALF = FRAMES // 2


def quad(kind: str, item: int = 0, **kwargs):
    return render_quad(kind, np.random.default_rng([7, item]), FRAMES, SIZE, **kwargs)


def shape_pixels(clip: np.ndarray) -> np.ndarray:
    """Bool [T, H, W]: where the frame differs from its plain background (the corner pixel)."""
    return np.abs(clip.astype(np.int16) - clip[:, :1, :1].astype(np.int16)).sum(-1) > 40


def centres(clip: np.ndarray) -> np.ndarray:
    """[T, 2] (y, x) centroid of the shape per frame (NaN where there is none)."""
    masks = shape_pixels(clip)
    return np.array([np.argwhere(m).mean(0) if m.any() else (np.nan, np.nan) for m in masks])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("item", [0, 1, 2])
def test_each_half_appears_once_among_possible_and_once_among_impossible_clips(kind, item):
    p1, p2, i1, i2 = quad(kind, item).clips
    assert all(c.shape == (FRAMES, SIZE, SIZE, 3) and c.dtype == np.uint8 for c in (p1, p2, i1, i2))
    a1, a2, b1, b2 = p1[:HALF], p2[:HALF], p1[HALF:], p2[HALF:]
    assert np.array_equal(i1, np.concatenate([a1, b2])) and np.array_equal(i2, np.concatenate([a2, b1]))
    # So the possible and the impossible sets hold the same frames, and the halves do differ.
    assert not np.array_equal(a1, a2) and not np.array_equal(b1, b2)


def test_permanence_vanish_and_appear():
    p1, p2, i1, i2 = (shape_pixels(c).any(axis=(1, 2)) for c in quad("permanence").clips)
    assert p1.all() and not p2.any()
    assert i1[:HALF].all() and not i1[HALF:].any()  # vanishes
    assert not i2[:HALF].any() and i2[HALF:].all()  # appears


def test_teleport_jumps_across_only_in_impossible_clips():
    q = quad("teleport")
    steps = [np.abs(np.diff(centres(c), axis=0)).max(axis=1) for c in q.clips]
    gap = abs(np.subtract(*q.info["across"]))
    assert gap >= 2 * q.info["radius"] + 4
    for s in steps[:2]:
        assert s.max() < q.info["speed"] + 1.5  # continuous: at most one frame's motion
    for s in steps[2:]:
        assert s[HALF - 1] > gap - 1.5 and np.delete(s, HALF - 1).max() < q.info["speed"] + 1.5


def test_reverse_turns_back_only_in_impossible_clips():
    q = quad("reverse")
    axis = 1 if q.info["direction"] in ("left", "right") else 0
    for index, clip in enumerate(q.clips):
        velocity = np.diff(centres(clip)[:, axis])
        before, after = np.sign(velocity[: HALF - 1]), np.sign(velocity[HALF:])
        assert len(set(before)) == 1 and len(set(after)) == 1  # constant direction within each half
        assert (before[0] == after[0]) == (index < 2)  # possible: the same direction; impossible: reversed


def test_colour_and_shape_change_only_in_impossible_clips():
    q = quad("colour")
    first, second = (np.asarray(COLOURS[c]) for c in q.info["colours"])
    for clip, (a, b) in zip(q.clips, [(first, first), (second, second), (first, second), (second, first)]):
        inner = shape_pixels(clip)
        for t, want in ((HALF - 1, a), (HALF, b)):
            assert np.abs(np.median(clip[t][inner[t]], axis=0) - want).max() <= 2

    q = quad("shape")
    areas = [shape_pixels(c).sum(axis=(1, 2)) for c in q.clips]
    for index, area in enumerate(areas):
        jump = abs(int(area[HALF]) - int(area[HALF - 1]))
        assert (jump > 10) == (index >= 2), (index, area)  # the four shapes' areas differ by > 10 px


@pytest.mark.parametrize("kind", KINDS)
def test_speed_is_the_training_clips_and_the_shape_stays_inside(kind):
    lo, hi = pixel_speed(SIZE, 32, 4)
    for item in range(6):
        q = quad(kind, item)
        assert lo <= q.info["speed"] <= hi
        for clip in q.clips:
            masks = shape_pixels(clip)
            assert not (masks[:, 0].any() or masks[:, -1].any() or masks[:, :, 0].any() or masks[:, :, -1].any())
        moved = np.abs(np.diff(centres(q.clips[0]), axis=0)).max(axis=1)  # the first clip always shows the shape
        assert np.allclose(moved, q.info["speed"], atol=1.0)


def test_render_quad_is_deterministic_and_checks_its_arguments():
    for kind in KINDS:
        a, b = quad(kind, 3), quad(kind, 3)
        assert a.info == b.info and all(np.array_equal(x, y) for x, y in zip(a.clips, b.clips))
    with pytest.raises(ValueError, match="kind"):
        quad("gravity")
    with pytest.raises(ValueError, match="even"):
        render_quad("reverse", np.random.default_rng(0), 15, SIZE)
    with pytest.raises(ValueError, match="fewer frames or a lower speed"):
        render_quad("reverse", np.random.default_rng(0), 64, SIZE)


def test_make_physics_dataset_writes_lists_of_pairs_and_quads(tmp_path):
    out = make_physics_dataset(tmp_path / "a", num_items=3, frames=8, size=32, seed=1, kinds=("permanence", "reverse"))
    assert set(out) == {"permanence_quads", "reverse_quads", "vanish_pairs", "appear_pairs", "reverse_pairs", "labels"}
    quads = [line.split() for line in out["permanence_quads"].read_text().splitlines()]
    assert len(quads) == 3 and all(len(q) == 4 for q in quads)
    assert [q[0].rsplit("_", 1)[1] for q in quads] == ["a1b1.webm"] * 3
    assert [name.rsplit("_", 1)[1].split(".")[0] for name in quads[0]] == list(QUAD_NAMES)
    vanish = [line.split() for line in out["vanish_pairs"].read_text().splitlines()]
    appear = [line.split() for line in out["appear_pairs"].read_text().splitlines()]
    assert vanish == [[q[0], q[2]] for q in quads] and appear == [[q[1], q[3]] for q in quads]
    reverse = [line.split() for line in out["reverse_pairs"].read_text().splitlines()]
    reverse_quads = [line.split() for line in out["reverse_quads"].read_text().splitlines()]
    assert reverse == [[q[0], q[2]] if i % 2 == 0 else [q[1], q[3]] for i, q in enumerate(reverse_quads)]
    assert probe(tmp_path / "a" / quads[0][0]).num_frames == 8
    meta = json.loads(out["labels"].read_text())
    assert meta["kinds"] == ["permanence", "reverse"] and len(meta["items"]["reverse"]) == 3
    assert meta["speed_px_per_frame"] == list(pixel_speed(32, 32, 4))
    # The same seed draws the same items; another seed, others.
    again = make_physics_dataset(tmp_path / "b", num_items=3, frames=8, size=32, seed=1, kinds=("permanence", "reverse"))
    assert json.loads(again["labels"].read_text())["items"] == meta["items"]
    other = make_physics_dataset(tmp_path / "c", num_items=3, frames=8, size=32, seed=2, kinds=("reverse",))
    assert json.loads(other["labels"].read_text())["items"]["reverse"] != meta["items"]["reverse"]
    assert set(PAIR_KINDS) >= {"vanish", "appear", "reverse"}
    with pytest.raises(ValueError, match="kinds"):
        make_physics_dataset(tmp_path / "d", kinds=("bounce",))
