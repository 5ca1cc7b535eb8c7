"""Synthetic clips: encoding round trips, label correctness, dataset files and errors."""

import json
from collections import Counter

import av
import numpy as np
import pytest
import torch

from salt_fast.data.lists import VideoList
from salt_fast.data.synthetic import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SyntheticClips,
    clip_labels,
    make_synthetic_dataset,
    pixel_speed,
    render_clip,
    write_video,
)


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack(
            [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        )


def _shape_mask(clip: np.ndarray, colour=None) -> np.ndarray:
    """Bool [T, H, W]: pixels of the shape (of ``colour`` if given, else any bright one).

    Backgrounds stay in [40, 160] and every palette colour has a channel >= 210, so a
    bright channel marks a shape (edge pixels blended half-way may be missed; fine).
    """
    if colour is None:
        return clip.max(axis=-1) >= 200
    return (np.abs(clip.astype(np.int16) - np.asarray(colour)) <= 30).all(axis=-1)


def _centroids(clip: np.ndarray, colour=None) -> np.ndarray:
    """Per-frame (y, x) centroid of the shape pixels, [T, 2]."""
    mask = _shape_mask(clip, colour)
    assert mask.reshape(len(clip), -1).any(axis=1).all(), "shape missing in a frame"
    yy, xx = np.mgrid[0 : clip.shape[1], 0 : clip.shape[2]]
    return np.array([[yy[m].mean(), xx[m].mean()] for m in mask])


def _direction_of(clip: np.ndarray, colour=None) -> str:
    c = _centroids(clip, colour)
    dy, dx = c[-1] - c[0]
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@pytest.mark.parametrize(
    "codec, name",
    [("vp9", "a.webm"), ("h264", "a.mp4"), ("mjpeg", "a.avi"), ("mjpeg", "a.mkv")],
)
def test_write_video_round_trip(tmp_path, codec, name):
    clip = render_clip(np.random.default_rng(0), 16, 64, 96, "circle", "red", "right")
    out = write_video(tmp_path / name, torch.from_numpy(clip), fps=25, codec=codec)
    assert out == tmp_path / name and out.stat().st_size > 0
    decoded = _decode(out)
    assert decoded.shape == clip.shape == (16, 64, 96, 3)
    mae = np.abs(decoded.astype(np.float64) - clip).mean()
    print(f"{codec} {name}: mean abs error {mae:.2f} / 255")
    assert mae < 8
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 25


def test_write_video_default_suffix_and_fps(tmp_path):
    clip = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    out = write_video(tmp_path / "sub" / "clip", clip, fps=30000 / 1001)
    assert out.name == "clip.webm" and out.exists()
    with av.open(str(out)) as container:
        assert abs(float(container.streams.video[0].average_rate) - 29.97) < 0.01


def test_write_video_errors(tmp_path):
    ok = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        write_video(tmp_path / "a.webm", ok.astype(np.float32))
    with pytest.raises(TypeError, match="uint8"):
        write_video(tmp_path / "a.webm", torch.zeros(2, 16, 16, 3))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "a.webm", ok[..., :2])
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "a.webm", np.zeros((2, 15, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="codec"):
        write_video(tmp_path / "a.webm", ok, codec="av1")
    with pytest.raises(ValueError, match=".mp4"):
        write_video(tmp_path / "a.webm", ok, codec="h264")
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.webm", ok, fps=0)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_render_clip_moves_in_direction(direction, shape):
    clip = render_clip(
        np.random.default_rng(1),
        16,
        64,
        64,
        shape,
        "yellow",
        direction,
        distractor=True,
    )
    assert clip.shape == (16, 64, 64, 3) and clip.dtype == np.uint8
    yellow = COLOURS["yellow"]
    assert _direction_of(clip, yellow) == direction
    c = _centroids(clip, yellow)
    step = np.diff(c, axis=0)
    axis = 1 if direction in ("left", "right") else 0
    assert np.abs(step[:, axis]).sum() >= 8  # a noticeable distance over the clip
    assert np.abs(step[:, 1 - axis]).max() < 0.5  # straight line
    # Fully visible: never touches the border, and the same size in every frame.
    mask = _shape_mask(clip, yellow)
    assert not (
        mask[:, 0].any()
        or mask[:, -1].any()
        or mask[:, :, 0].any()
        or mask[:, :, -1].any()
    )
    area = mask.reshape(16, -1).sum(axis=1)
    assert area.max() - area.min() <= 0.15 * area.mean()


def test_render_clip_background_textured_and_deterministic():
    def render(bg):
        return render_clip(np.random.default_rng(5), 8, 64, 64, "square", (0, 0, 255), "up", background=bg)

    for bg in ("noise", "stripes", "checker"):
        clip = render(bg)
        assert clip[0].reshape(-1, 3).std(axis=0).max() > 5, f"{bg} background is flat"
        again = render(bg)
        np.testing.assert_array_equal(clip, again)
    a = render_clip(np.random.default_rng(6), 8, 64, 64, "square", "blue", "up")
    assert not np.array_equal(a, clip)


def test_single_frame_does_not_tell_direction():
    # Pooled over all frames, the shape's position along the motion axis has the same
    # distribution for both opposite directions (start positions are spread so that
    # start + travel * u is symmetric), so one frame at an unknown time carries no cue.
    pos = {d: [] for d in ("left", "right")}
    for seed in range(60):
        for d, found in pos.items():
            clip = render_clip(
                np.random.default_rng(seed), 8, 64, 64, "circle", "red", d
            )
            found.append(_centroids(clip, COLOURS["red"])[:, 1])
    left, right = np.concatenate(pos["left"]), np.concatenate(pos["right"])
    assert abs(left.mean() - right.mean()) < 2.0
    assert abs(left.std() - right.std()) < 2.0
    assert (
        np.abs(
            np.quantile(left, [0.1, 0.5, 0.9]) - np.quantile(right, [0.1, 0.5, 0.9])
        ).max()
        < 4
    )
    # The first frames alone overlap too (a partial cue only at a known t = 0).
    first_l = [p[0] for p in pos["left"]]
    first_r = [p[0] for p in pos["right"]]
    assert min(max(first_l), max(first_r)) - max(min(first_l), min(first_r)) > 5


def test_render_clip_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="direction"):
        render_clip(rng, 8, 64, 64, "circle", "red", "diagonal")
    with pytest.raises(ValueError, match="shape"):
        render_clip(rng, 8, 64, 64, "star", "red", "up")
    with pytest.raises(ValueError, match="colour"):
        render_clip(rng, 8, 64, 64, "circle", "purple-ish", "up")
    with pytest.raises(ValueError, match="colour"):
        render_clip(rng, 8, 64, 64, "circle", (0, 300, 0), "up")
    with pytest.raises(ValueError, match="frames"):
        render_clip(rng, 1, 64, 64, "circle", "red", "up")
    with pytest.raises(ValueError, match="too small"):
        render_clip(rng, 8, 12, 12, "circle", "red", "up")
    with pytest.raises(ValueError, match="background"):
        render_clip(rng, 8, 64, 64, "circle", "red", "up", background="sky")


def test_synthetic_clips_labels():
    motion = SyntheticClips(16, frames=8, height=48, width=48, task="motion", seed=3)
    shape = SyntheticClips(16, frames=8, height=48, width=48, task="shape", seed=3)
    assert len(motion) == 16
    for i in range(16):
        clip, label = motion[i]
        assert clip.dtype == torch.uint8 and clip.shape == (8, 48, 48, 3)
        assert DIRECTIONS[label] == _direction_of(clip.numpy())
        clip2, shape_label = shape[i]
        assert torch.equal(clip, clip2)  # same clips, different label
        assert (label, shape_label) == clip_labels(i)
    assert Counter(motion[i][1] for i in range(16)) == Counter({0: 4, 1: 4, 2: 4, 3: 4})
    assert Counter(shape[i][1] for i in range(16)) == Counter({0: 4, 1: 4, 2: 4, 3: 4})
    assert torch.equal(motion[5][0], SyntheticClips(16, 8, 48, 48, seed=3)[5][0])
    assert not torch.equal(motion[5][0], SyntheticClips(16, 8, 48, 48, seed=4)[5][0])
    assert torch.equal(motion[-1][0], motion[15][0])
    with pytest.raises(IndexError):
        motion[16]
    with pytest.raises(ValueError, match="task"):
        SyntheticClips(4, task="size")
    batch = next(iter(torch.utils.data.DataLoader(motion, batch_size=4)))
    assert batch[0].shape == (4, 8, 48, 48, 3) and batch[1].shape == (4,)


def test_make_synthetic_dataset(tmp_path):
    def make(root):
        return make_synthetic_dataset(root, num_videos=8, frames=16, height=64, width=64, seed=1, val_fraction=0.5)

    out = make(tmp_path / "ds")
    assert set(out) >= {
        "motion_train",
        "motion_val",
        "shape_train",
        "shape_val",
        "labels",
    }
    meta = json.loads(out["labels"].read_text())
    assert meta["motion"] == list(DIRECTIONS) and meta["shape"] == list(SHAPES)
    lists = {
        k: VideoList.from_file(out[k])
        for k in ("motion_train", "motion_val", "shape_train", "shape_val")
    }
    for k, vl in lists.items():
        assert len(vl) == 4
        assert sorted(vl.labels) == [0, 1, 2, 3], f"{k} not balanced"
        assert all(p.is_file() and p.suffix == ".webm" for p in vl.paths)
    # Lines hold relative paths; tasks share the split; train and val are disjoint.
    assert not out["motion_train"].read_text().startswith("/")
    assert set(lists["motion_train"].paths) == set(lists["shape_train"].paths)
    assert not set(lists["motion_train"].paths) & set(lists["motion_val"].paths)
    # Each file decodes to the right size and its labels match its rendering.
    shape_of = dict(zip(lists["shape_val"].paths, lists["shape_val"].labels))
    for path, motion_label in lists["motion_val"]:
        video = _decode(path)
        assert video.shape == (16, 64, 64, 3)
        index = int(path.stem.split("_")[1])
        assert clip_labels(index) == (motion_label, shape_of[path])
        source, label = SyntheticClips(8, 16, 64, 64, task="motion", seed=1)[index]
        assert label == motion_label
        assert np.abs(video.astype(np.float64) - source.numpy()).mean() < 8
    # Deterministic given the seed.
    again = make(tmp_path / "ds2")
    assert again["motion_train"].read_text() == out["motion_train"].read_text()


def test_make_synthetic_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        make_synthetic_dataset(tmp_path, num_videos=8, val_fraction=1.0)
    with pytest.raises(ValueError, match="empty split"):
        make_synthetic_dataset(tmp_path, num_videos=2, val_fraction=0.1)
    with pytest.raises(ValueError, match="codec"):
        make_synthetic_dataset(tmp_path, num_videos=8, codec="theora")


def test_colour_task_lists_and_plain_backgrounds(tmp_path):
    out = make_synthetic_dataset(tmp_path / "ds", num_videos=8, frames=8, height=64, width=64, seed=2, background="plain")
    colour = VideoList.from_file(out["colour_val"])
    meta = json.loads(out["labels"].read_text())
    assert meta["background"] == "plain" and len(meta["colour"]) == len(COLOURS)
    ds = SyntheticClips(8, 8, 64, 64, task="colour", seed=2)
    for path, label in colour:
        index = int(path.stem.split("_")[1])
        assert ds[index][1] == label
        frame = _decode(path)[0].reshape(-1, 3).astype(np.float64)
        # Plain: the background is one colour, so most pixels equal the median pixel.
        assert (np.abs(frame - np.median(frame, axis=0)).max(axis=1) < 6).mean() > 0.7
    assert ds.classes == tuple(COLOURS)


def test_pixel_speed_is_the_rendered_clips_speed():
    lo, hi = pixel_speed(64, 32, 4)
    assert pixel_speed(64, 32, 1) == pytest.approx((lo / 4, hi / 4))
    speeds = []
    for seed in range(12):
        clip = render_clip(np.random.default_rng(seed), 32, 64, 64, "circle", "red", DIRECTIONS[seed % 4], "plain")
        centre = np.array([np.argwhere(m).mean(0) for m in _shape_mask(clip, COLOURS["red"])])
        speeds.append(np.abs(centre[-1] - centre[0]).max() / 31 * 4)  # pixels per 4th frame
    assert lo - 0.1 <= min(speeds) and max(speeds) <= hi + 0.1 and max(speeds) - min(speeds) > 0.5
    with pytest.raises(ValueError, match="video_frames"):
        pixel_speed(64, 1)
