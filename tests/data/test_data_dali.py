"""Tests of the DALI video pipeline (salt_fast.data.dali).

CPU tests use VP9 files written here with PyAV (DALI decodes VP8/VP9/MJPEG on the CPU);
the GPU tests (H.264 through NVDEC) run only where CUDA is available.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("nvidia.dali")

from salt_fast.data import dali as sd  # noqa: E402  (after the importorskips)

H, W = 96, 128
N_VIDEOS = 6
LABELS = [7, 3, 11, 0, 5, 9]  # deliberately not sorted / not the file index
T, STEP, SIZE = 4, 3, 32
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)"
)


def _write_video(path, n_frames, seed, codec="libvpx-vp9"):
    """Smooth textured background (phase depends on seed) moving with time, plus a
    coloured blob whose position and colour change every frame.  Returns the RGB source."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    ph = 0.9 * seed
    frames = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libvpx-vp9":
            stream.options = {
                "crf": "8",
                "b": "0",
                "deadline": "realtime",
                "cpu-used": "8",
            }
        for i in range(n_frames):
            r = 128 + 70 * np.sin(xx / 11 + 0.5 * i + ph) + 30 * np.cos(yy / 13)
            g = 128 + 70 * np.sin(yy / 12 - 0.4 * i) + 30 * np.sin((xx + yy) / 17 + ph)
            b = 128 + 70 * np.cos((xx - yy) / 14 + 0.45 * i + 0.5 * ph)
            img = np.stack([r, g, b], -1)
            cy, cx = 12 + (7 * i) % (H - 24), 12 + (11 * i) % (W - 24)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)[..., None]
            img = img * (1 - blob) + blob * np.array(
                [255.0 * (i % 2), 40 + 6 * i, 255 - 6 * i]
            )
            img = np.clip(img, 0, 255).astype(np.uint8)
            frames.append(img)
            for pkt in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)
    return np.stack(frames)


def _pyav_frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("dali_videos")
    files = []
    for i in range(N_VIDEOS):
        p = d / f"clip{i}.webm"
        _write_video(p, 24 + 4 * i, seed=i)
        files.append(p)
    h264 = d / "clip_h264.mp4"
    _write_video(h264, 24, seed=0, codec="libx264")
    return {
        "files": files,
        "h264": h264,
        "pyav": {str(p): _pyav_frames(p) for p in files},
    }


def _loader(videos, train, **kw):
    args = {
        "batch_size": 2,
        "device": "cpu",
        "clip_frames": T,
        "frame_step": STEP,
        "size": SIZE,
    }
    args["seed"] = 3
    args.update(kw)
    return sd.DaliVideoLoader(videos["files"], LABELS, train=train, **args)


@pytest.fixture(scope="module")
def train_loader(videos):
    return _loader(videos, train=True, scale=(1.0, 1.0), ratio=(W / H, W / H))


@pytest.fixture(scope="module")
def eval_loader(videos):
    # size = H: resize_shorter is the identity, the centre crop is columns 16..112.
    return _loader(videos, train=False, batch_size=4, size=H)


def _unnormalize(clips):
    mean = torch.tensor(sd.IMAGENET_MEAN).view(1, 3, 1, 1, 1) * 255
    std = torch.tensor(sd.IMAGENET_STD).view(1, 3, 1, 1, 1) * 255
    return clips * std + mean


def _resize_ref(frames, size):
    """[N, H, W, 3] uint8 -> [3, N, size, size] float, antialiased bilinear."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True
    )
    return x.permute(1, 0, 2, 3)


# ---------------------------------------------------------------- decoder agreement


@pytest.mark.parametrize("start", [0, 5])
def test_decoder_agrees_with_pyav(videos, start):
    path = videos["files"][3]  # 36 frames
    ref = videos["pyav"][str(path)].astype(np.float64)
    n_clip = 8
    got = sd.dali_decode_frames(path, start, n_clip, STEP)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (n_clip, H, W, 3)
    got = got.numpy().astype(np.float64)
    diff = np.abs(got - ref[start : start + (n_clip - 1) * STEP + 1 : STEP])
    print(
        f"\nDALI vs PyAV start={start}: max abs {diff.max():.0f}, mean abs {diff.mean():.2f}"
    )
    assert diff.mean() < 3.0
    assert np.percentile(diff, 99) < 16
    # The right frames: off by one (and by one step) differs several times more.
    for off in (1, STEP):
        s2 = start + off
        wrong = np.abs(
            got[: n_clip - 2] - ref[s2 : s2 + (n_clip - 3) * STEP + 1 : STEP]
        )
        print(f"  wrong offset +{off}: mean abs {wrong.mean():.2f}")
        assert wrong.mean() > 4 * diff.mean()


def test_h264_on_cpu_is_rejected_by_name(videos):
    with pytest.raises(ValueError, match=r"clip_h264\.mp4.*h264.*device='gpu'"):
        sd.dali_decode_frames(videos["h264"], 0, 4, 1, device="cpu")
    with pytest.raises(ValueError, match=r"clip_h264\.mp4.*h264"):
        sd.build_dali_pipeline(
            [videos["files"][0], videos["h264"]], [0, 1], batch_size=2, device="cpu"
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_gpu_without_cuda_is_clear(videos):
    with pytest.raises(RuntimeError, match=r"device='gpu'.*CUDA"):
        sd.DaliVideoLoader(videos["files"], LABELS, batch_size=2, device="gpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        sd.dali_decode_frames(videos["files"][0], 0, 4, 1, device="gpu")


def test_missing_dali_message(monkeypatch, videos):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match="pip install nvidia-dali"):
        sd.build_dali_pipeline(videos["files"], LABELS, batch_size=2, device="cpu")


def test_salt_fast_import_does_not_load_dali():
    code = (
        "import sys, salt_fast, salt_fast.data, salt_fast.data.dali; "
        "assert not any(m.startswith('nvidia.dali') for m in sys.modules), 'dali imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- pipeline outputs


def test_eval_shapes_normalization_labels(videos, eval_loader):
    assert len(eval_loader) == 2  # 6 files, batch 4, last batch kept (partial)
    seen = []
    for clips, labels in eval_loader:
        assert clips.dtype == torch.float32 and labels.dtype == torch.int64
        assert clips.device.type == "cpu"
        assert clips.shape[1:] == (3, T, H, H) and labels.shape == (clips.shape[0],)
        pix = _unnormalize(clips)
        for clip, lab in zip(pix, labels.tolist()):
            path = videos["files"][LABELS.index(lab)]  # labels align with files
            ref = sd.dali_decode_frames(path, 0, T, STEP)  # eval starts at frame 0
            ref = ref.permute(3, 0, 1, 2).float()[..., (W - H) // 2 : (W + H) // 2]
            assert (clip - ref).abs().max() < 1.0  # only float rounding
        seen += labels.tolist()
        # normalised statistics: per-channel mean near 0, std near 1 for this content
        m = clips.mean(dim=(0, 2, 3, 4))
        s = clips.std(dim=(0, 2, 3, 4))
        assert m.abs().max() < 0.6 and ((s > 0.5) & (s < 1.6)).all(), (m, s)
    assert seen == LABELS  # file order, every file once


def test_eval_is_deterministic(videos, eval_loader):
    a = [(c.clone(), y.clone()) for c, y in eval_loader]
    b = [(c.clone(), y.clone()) for c, y in eval_loader]  # second epoch
    assert len(a) == len(b) == 2
    for (ca, la), (cb, lb) in zip(a, b):
        assert torch.equal(la, lb) and torch.equal(ca, cb)


def test_train_clips_random_start_flip_and_labels(videos, train_loader):
    # scale 1 and aspect W/H: the crop is the whole frame, so each clip must match the
    # resized source at some valid start, mirrored or not -- and only for its own file.
    assert len(train_loader) == N_VIDEOS // 2
    span = (T - 1) * STEP + 1
    starts, flips, labels_seen = set(), set(), []
    for _epoch in range(2):
        for clips, labels in train_loader:
            assert clips.shape == (2, 3, T, SIZE, SIZE) and clips.dtype == torch.float32
            assert labels.dtype == torch.int64
            for clip, lab in zip(_unnormalize(clips), labels.tolist()):
                labels_seen.append(lab)
                frames = videos["pyav"][str(videos["files"][LABELS.index(lab)])]
                ref_all = _resize_ref(frames, SIZE)
                best = (1e9, None, None)
                for s in range(len(frames) - span + 1):
                    ref = ref_all[:, s : s + span : STEP]
                    for flip in (False, True):
                        r = ref.flip(-1) if flip else ref
                        err = (clip - r).abs().mean().item()
                        best = min(best, (err, s, flip))
                assert best[0] < 6.0, best
                starts.add(best[1])
                flips.add(best[2])
                # no window of the next file (mirrored or not) matches nearly as well
                other = videos["pyav"][
                    str(videos["files"][(LABELS.index(lab) + 1) % N_VIDEOS])
                ]
                o_all = _resize_ref(other, SIZE)
                o_best = min(
                    (clip - (o.flip(-1) if f else o)).abs().mean().item()
                    for s in range(len(other) - span + 1)
                    for o in [o_all[:, s : s + span : STEP]]
                    for f in (False, True)
                )
                assert o_best > 3 * best[0], (o_best, best)
    assert sorted(labels_seen) == sorted(LABELS * 2)  # each file once per epoch
    assert len(starts) > 2, starts  # random starts
    assert flips == {False, True}, flips


def test_random_crop_is_shared_by_all_frames(tmp_path):
    # A clip of identical frames stays identical after the crop iff the window is shared.
    path = tmp_path / "static.webm"
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack(
        [128 + 90 * np.sin(xx / 9), 128 + 90 * np.cos(yy / 8), 128 + 0 * xx], -1
    )
    img = img.astype(np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "4", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for _ in range(12):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    loader = sd.DaliVideoLoader(
        [path] * 4,
        [0, 1, 2, 3],
        batch_size=4,
        device="cpu",
        train=True,
        clip_frames=4,
        frame_step=2,
        size=SIZE,
        seed=5,
        scale=(0.3, 0.5),
    )
    clips, _ = next(iter(loader))
    per_frame_spread = (clips - clips[:, :, :1]).abs().amax().item()
    per_sample_spread = (clips - clips[:1]).abs().amax().item()
    assert per_frame_spread < 0.15, per_frame_spread  # codec noise only
    assert per_sample_spread > 0.5  # different samples get different crops


def test_sharding_splits_files_without_overlap(videos):
    got = []
    for shard in range(2):
        loader = _loader(
            videos, train=False, batch_size=2, shard_id=shard, num_shards=2, size=16
        )
        b, e = sd.shard_range(N_VIDEOS, shard, 2)
        labels = [lab for _, labs in loader for lab in labs.tolist()]
        assert labels == LABELS[b:e]
        got.append(set(labels))
    assert got[0].isdisjoint(got[1]) and got[0] | got[1] == set(LABELS)
    with pytest.raises(ValueError, match="shard_id"):
        sd.build_dali_pipeline(
            videos["files"],
            LABELS,
            batch_size=2,
            device="cpu",
            shard_id=2,
            num_shards=2,
        )


def test_bad_arguments(videos):
    with pytest.raises(ValueError, match="labels"):
        sd.build_dali_pipeline(videos["files"], LABELS[:2], batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="device"):
        sd.build_dali_pipeline(videos["files"], LABELS, batch_size=2, device="tpu")


# ---------------------------------------------------------------- bad files, shutdown


def _bad_files(folder, good):
    """Every kind of unusable file, by name: the reason DALI's loader must report for it."""
    (folder / "empty.webm").write_bytes(b"")
    (folder / "garbage.webm").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "text.webm").write_text("not a video at all\n")
    data = good.read_bytes()
    (folder / "header_only.webm").write_bytes(data[: len(data) // 20])  # cut before its first frame
    with av.open(str(folder / "audio.webm"), "w") as c:  # a stream, but no video
        s = c.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        for pkt in [*s.encode(frame), *s.encode()]:
            c.mux(pkt)
    return {
        "missing.webm": "file not found",
        "empty.webm": r"empty file \(0 bytes\)",
        "garbage.webm": "cannot open container|no video stream",
        "text.webm": "cannot open container|no video stream",
        "header_only.webm": "no frames|cannot read packets",
        "audio.webm": r"no video stream \(streams: audio\)",
    }


def test_bad_files_are_skipped_named_and_counted(videos, tmp_path, caplog):
    expected = _bad_files(tmp_path, videos["files"][0])
    bad = [tmp_path / name for name in expected]
    files = videos["files"][:4] + bad
    labels = LABELS[:4] + [99] * len(bad)
    with caplog.at_level("WARNING", logger="salt_fast.data"):
        loader = sd.DaliVideoLoader(
            files, labels, batch_size=2, device="cpu", train=False, clip_frames=T, frame_step=STEP, size=16,
            max_bad_fraction=0.7,
        )  # fmt: skip
    reasons = dict(loader.skipped)
    assert sorted(reasons) == sorted(str(p) for p in bad)
    for path in bad:
        assert __import__("re").search(expected[path.name], reasons[str(path)]), (path.name, reasons[str(path)])
        assert any(str(path) in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    assert [lab for _, labs in loader for lab in labs.tolist()] == LABELS[:4]  # the good files only
    # More bad files than max_bad_fraction allows: stop, with examples (as the CPU loader does).
    with pytest.raises(sd.TooManyBadFiles, match=r"6 of 10 files.*max_bad_fraction=0.5[\s\S]*empty file"):
        sd.DaliVideoLoader(files, labels, batch_size=2, device="cpu", max_bad_fraction=0.5)
    with pytest.raises(sd.TooManyBadFiles):  # nothing usable at all
        sd.build_dali_pipeline(bad, [0] * len(bad), batch_size=2, device="cpu", max_bad_fraction=1.0)


def test_decoding_a_bad_file_names_the_problem(videos, tmp_path):
    _bad_files(tmp_path, videos["files"][0])
    with pytest.raises(sd.VideoDecodeError, match=r"empty\.webm: empty file \(0 bytes\)"):
        sd.dali_decode_frames(tmp_path / "empty.webm", 0, 4, 1)
    with pytest.raises(sd.VideoDecodeError, match="audio.webm: no video stream"):
        sd.dali_decode_frames(tmp_path / "audio.webm", 0, 4, 1)


def test_leaving_an_epoch_early_and_exiting_are_clean(videos, tmp_path):
    loader = _loader(videos, train=False, batch_size=2, size=16)
    labels = lambda: [lab for _, labs in loader for lab in labs.tolist()]  # noqa: E731
    for _clips, _labels in loader:
        break  # mid-epoch: the next iteration still sees a whole epoch, in order
    assert labels() == LABELS
    loader.reset()
    assert labels() == LABELS
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        iter(loader).__next__()
    # A training run's pattern: an endless generator over the loader, abandoned at exit.
    script = (
        "import sys\nfrom salt_fast.data.dali import DaliVideoLoader\n"
        f"loader = DaliVideoLoader({[str(f) for f in videos['files']]!r}, {LABELS!r}, batch_size=2, device='cpu', "
        f"clip_frames={T}, frame_step={STEP}, size=16)\n"
        "def batches():\n    while True:\n        yield from loader\n"
        "it = batches()\nfor _ in range(4):\n    next(it)\nprint('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert "Exception ignored" not in done.stderr and "ShareOutputs" not in done.stderr, done.stderr[-2000:]
    assert "epoch is not finished" not in done.stderr, done.stderr[-2000:]


# ---------------------------------------------------------------- GPU (NVDEC)


@needs_cuda
def test_gpu_h264_decoder_agrees_with_pyav(videos):
    path = videos["h264"]
    ref = _pyav_frames(path).astype(np.float64)
    got = sd.dali_decode_frames(path, 2, 6, STEP, device="gpu")
    assert got.dtype == torch.uint8 and tuple(got.shape) == (6, H, W, 3)
    got = got.numpy().astype(np.float64)
    diff = np.abs(got - ref[2 : 2 + 5 * STEP + 1 : STEP])
    wrong = np.abs(got[:-1] - ref[3 : 3 + 4 * STEP + 1 : STEP])
    print(
        f"\nNVDEC vs PyAV: max {diff.max():.0f} mean {diff.mean():.2f}; wrong {wrong.mean():.2f}"
    )
    assert diff.mean() < 3.0
    assert wrong.mean() > 4 * diff.mean()


@needs_cuda
def test_gpu_loader_h264(videos):
    files = [videos["h264"]] * 4
    loader = sd.DaliVideoLoader(
        files,
        [1, 2, 3, 4],
        batch_size=2,
        device="gpu",
        clip_frames=T,
        frame_step=STEP,
        size=SIZE,
        train=True,
    )
    assert len(loader) == 2
    n = 0
    for clips, labels in loader:
        assert clips.is_cuda and labels.is_cuda
        assert clips.shape == (2, 3, T, SIZE, SIZE) and clips.dtype == torch.float32
        assert labels.dtype == torch.int64
        n += 1
    assert n == 2
