"""CPU decoding (PyAV path), bad-file errors, and clip sampling."""

import itertools
import math
import threading
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from salt_fast.data.decode import VideoDecodeError, VideoInfo, clear_index_cache, decode_frames, probe, read_index
from salt_fast.data.sampling import (
    clip_indices,
    clip_span,
    eval_clip_starts,
    frame_step_for_fps,
)

H, W = 64, 128
BITS = 7  # frame index written as 7 black/white 8x8 squares: up to 127 frames


def _frames(n: int) -> np.ndarray:
    """[n, H, W, 3] uint8: a scrolling textured background with the frame index in binary."""
    rng = np.random.default_rng(0)
    # Smooth texture (8x8-pixel cells, blurred) so lossy codecs keep it close to the source.
    cells = rng.integers(0, 256, (H // 8, W // 8, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(cells, 8, 0), 8, 1)
    for axis in (0, 1):
        texture = (texture + np.roll(texture, 4, axis) + np.roll(texture, -4, axis)) / 3
    texture = texture.astype(np.uint8)
    out = np.empty((n, H, W, 3), dtype=np.uint8)
    for t in range(n):
        f = np.roll(texture, 2 * t, axis=1)
        f[:16, : 16 * BITS] = 128
        for b in range(BITS):
            f[4:12, 16 * b + 4 : 16 * b + 12] = 255 if (t >> b) & 1 else 0
        out[t] = f
    return out


def _read_index(frame) -> int:
    """Frame index from the binary squares (robust to compression error)."""
    frame = np.asarray(frame)
    bits = [frame[5:11, 16 * b + 5 : 16 * b + 11].mean() > 128 for b in range(BITS)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def write_video(path, n, codec="libx264", fps=30, gop=None, pts=None, time_base=None):
    """Write ``n`` index-coded frames with PyAV (fixtures must not depend on synthetic.py);
    ``pts`` (in ``time_base``) sets each frame's presentation time: non-uniform = VFR."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = W, H
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if time_base is not None:
            s.time_base = s.codec_context.time_base = time_base
        if gop:
            s.codec_context.gop_size = gop
        if codec == "libvpx-vp9" and pts is not None:
            s.options = {"deadline": "realtime", "cpu-used": "8"}
        for t, frame in enumerate(_frames(n)):
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = int(pts[t]), time_base
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def write_audio(path, seconds=0.5, rate=16000):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=rate)
        samples = np.sin(
            np.linspace(0, 440 * 2 * math.pi * seconds, int(rate * seconds))
        )
        samples = samples.astype(np.float32)[None]
        frame_size = s.codec_context.frame_size or 1024
        for i in range(0, samples.shape[1], frame_size):
            fr = av.AudioFrame.from_ndarray(
                samples[:, i : i + frame_size].copy(), format="fltp", layout="mono"
            )
            fr.sample_rate = rate
            fr.pts = i
            fr.time_base = Fraction(1, rate)
            for pkt in s.encode(fr):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


N = 100  # frames per fixture video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264": write_video(
            d / "a.mp4", N, "libx264", gop=24
        ),  # B-frames, keyframe every 24
        "vp9": write_video(
            d / "a.webm", N, "libvpx-vp9", gop=24
        ),  # no frame count in header
        "mjpeg": write_video(d / "a.avi", N, "mjpeg"),
    }


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", ["h264", "vp9", "mjpeg"])
def test_probe(videos, kind):
    info = probe(videos[kind])
    assert info == VideoInfo(num_frames=N, fps=30.0, height=H, width=W)


@pytest.mark.parametrize("kind", ["h264", "vp9", "mjpeg"])
def test_decode_right_frames(videos, kind):
    idx = [3, 7, 7, 50, 99]
    out = decode_frames(videos[kind], idx, seek=False)
    assert out.shape == (5, H, W, 3) and out.dtype == torch.uint8
    assert [_read_index(f) for f in out] == idx
    # Content, not just the code: close to the source frames (lossy codecs).
    err = (out.float() - torch.from_numpy(_frames(N)[idx]).float()).abs().mean()
    assert err < 20


@pytest.mark.parametrize("kind", ["h264", "vp9", "mjpeg"])
def test_seek_path_matches_sequential(videos, kind):
    for start in (32, 40, 47, 48, 70):
        idx = clip_indices(N, 8, 4, start=start)
        fast = decode_frames(videos[kind], idx, seek=True)
        slow = decode_frames(videos[kind], idx, seek=False)
        assert [_read_index(f) for f in fast] == idx.tolist()
        assert torch.equal(fast, slow)


def test_unsorted_indices(videos):
    out = decode_frames(videos["h264"], [40, 2, 40, 9])
    assert [_read_index(f) for f in out] == [40, 2, 40, 9]


def test_threads_option(videos):
    out = decode_frames(videos["h264"], [1, 60], threads=2)
    assert [_read_index(f) for f in out] == [1, 60]


def test_image_as_clip(tmp_path):
    from PIL import Image

    img = _frames(1)[0]
    for ext in ("png", "bmp"):  # lossless: exact round trip
        p = tmp_path / f"x.{ext}"
        Image.fromarray(img).save(p)
        out = decode_frames(p, [0, 4, 8])
        assert out.shape == (3, H, W, 3)
        assert all(torch.equal(o, torch.from_numpy(img)) for o in out)
        assert probe(p) == VideoInfo(num_frames=1, fps=0.0, height=H, width=W)
    p = tmp_path / "x.JPG"
    Image.fromarray(img).save(p, format="JPEG")
    assert decode_frames(p, range(16)).shape == (16, H, W, 3)


# --------------------------------------------------------------------------- timestamps


NT = 90  # frames per timed fixture
_GAPS = np.random.default_rng(0).choice([1, 2, 3, 7], size=NT)  # frame durations, in 1/90 s
VFR = np.cumsum(_GAPS) - _GAPS[0]


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """Files whose frame numbers cannot come from timestamp * fps, each checked to be so."""
    d = tmp_path_factory.mktemp("timed")
    tb = Fraction(1, 90)
    return {
        "vfr.mp4": write_video(d / "vfr.mp4", NT, "libx264", gop=16, pts=VFR, time_base=tb),  # VFR + B-frames
        "vfr_start.mp4": write_video(d / "vfr_start.mp4", NT, "libx264", gop=16, pts=VFR + 5000, time_base=tb),  # at 55 s
        "vfr_start.mkv": write_video(d / "vfr_start.mkv", NT, "libx264", gop=16, pts=VFR + 300, time_base=tb),
        "vfr_start.webm": write_video(d / "vfr_start.webm", NT, "libvpx-vp9", gop=16, pts=VFR + 300, time_base=tb),
        # Starts at frame time 7: the muxer writes 7 empty chunks, which the header counts.
        "gap.avi": write_video(d / "gap.avi", NT, "mjpeg", pts=np.arange(NT) + 7, time_base=Fraction(1, 30)),
    }


def _packets(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s, [(p.pts, p.dts) for p in c.demux(s) if p.size]


def test_timed_fixtures_are_what_they_claim(timed):
    for name, path in timed.items():
        stream, packets = _packets(path)
        pts = sorted(p for p, _ in packets)
        assert len(pts) == NT, name
        if "vfr" in name:  # several frame durations (in the stream's time base)
            assert len(set(np.diff(pts).tolist())) >= 3, name
        if "start" in name:  # the first frame is not at time 0
            assert pts[0] > 0, name
        if name.endswith((".mp4", ".mkv")):  # B-frames: decode order is not presentation order
            assert [p for p, _ in packets] != pts, name
        # A plain sequential decode sees every frame, in order: the files are sound.
        with av.open(str(path)) as c:
            assert [_read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)] == list(range(NT)), name
    # The AVI header counts 97 frames (the 7 empty chunks before the first one); there are 90.
    with av.open(str(timed["gap.avi"])) as c:
        assert c.streams.video[0].frames == NT + 7


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr_start.mp4", "vfr_start.mkv", "vfr_start.webm", "gap.avi"])
def test_seek_and_sequential_number_frames_alike(timed, name):
    path = timed[name]
    clear_index_cache()
    assert probe(path).num_frames == NT
    with av.open(str(path)) as c:  # the reference: every frame, decoded in order
        reference = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    span = 7 * 4 + 1
    for start in range(0, NT - span + 1, 2):
        idx = list(range(start, start + span, 4))
        fast = decode_frames(path, idx, seek=True)
        slow = decode_frames(path, idx, seek=False)
        assert [_read_index(f) for f in fast] == idx, (name, start)
        assert torch.equal(fast, slow) and torch.equal(fast, reference[idx]), (name, start)
    # Frame threads and repeated / unsorted indices number frames the same way.
    idx = [80, 3, 41, 41, NT - 1]
    assert torch.equal(decode_frames(path, idx, threads=2), reference[idx])


def test_the_vfr_file_of_issue_16_decodes_at_every_start(timed):
    # 90 VFR frames, 8 frames x step 4: starts that took the keyframe-seek path failed
    # with "frame index 41 past the end of the video (only 49 frames could be decoded)".
    rng = np.random.default_rng(16)
    for _ in range(40):
        idx = clip_indices(NT, 8, 4, rng=rng)
        assert [_read_index(f) for f in decode_frames(timed["vfr.mp4"], idx)] == idx.tolist()


def test_the_index_is_read_once_per_file(videos, monkeypatch):
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    clear_index_cache()
    for start in range(0, 50, 10):
        probe(videos["h264"])
        decode_frames(videos["h264"], [start, start + 4])
    assert len(opened) == 1 + 5  # the index once, then one open per clip
    assert read_index(videos["h264"]).keyframes.tolist() == list(range(0, N, 24))


# --------------------------------------------------------------------------- bad files


def _raises(path, match, indices=(0,)):
    with pytest.raises(VideoDecodeError, match=match) as e:
        decode_frames(path, list(indices))
    assert e.value.path == str(path) and str(e.value).startswith(str(path) + ": ")
    return e.value


def test_missing_and_empty(tmp_path):
    _raises(tmp_path / "nope.mp4", "file not found")
    (tmp_path / "empty.mp4").write_bytes(b"")
    _raises(tmp_path / "empty.mp4", r"empty file \(0 bytes\)")
    with pytest.raises(VideoDecodeError, match="file not found"):
        probe(tmp_path / "nope.mp4")


def test_truncated(videos, tmp_path):
    for kind in ("h264", "vp9"):
        data = videos[kind].read_bytes()
        p = tmp_path / f"trunc{videos[kind].suffix}"
        p.write_bytes(data[: int(len(data) * 0.4)])
        # mp4 (index at the end) cannot be opened; webm decodes a prefix, then runs out.
        _raises(
            p,
            "cannot open container|past the end|decoding failed",
            indices=range(0, N, 9),
        )


def test_garbage_and_text(tmp_path):
    p = tmp_path / "garbage.mp4"
    p.write_bytes(
        np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    )
    _raises(p, "cannot open container|no video stream")
    t = tmp_path / "notes.mp4"
    t.write_text("this is not a video\n" * 50)
    _raises(t, "cannot open container|no video stream")


def test_audio_only(tmp_path):
    p = write_audio(tmp_path / "audio.mp4")
    _raises(p, r"no video stream \(streams: audio\)")
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe(p)


def test_undecodable_codec(videos, tmp_path):
    # Rename the mp4 sample entry 'avc1' to an unknown fourcc: the container parses, but
    # FFmpeg has no decoder for the stream.
    data = videos["h264"].read_bytes()
    assert b"avc1" in data
    p = tmp_path / "unknown_codec.mp4"
    p.write_bytes(data.replace(b"avc1", b"zzz9"))
    _raises(p, "no decoder|undecodable|cannot open|no frame could be decoded")


def test_index_past_end(videos):
    for kind in ("h264", "vp9", "mjpeg"):
        for seek in (False, True):
            with pytest.raises(
                VideoDecodeError, match=f"frame index {N} past the end"
            ) as e:
                decode_frames(videos[kind], [40, N], seek=seek)
            assert "100 frames" in str(e.value)


def test_bad_image(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff" + b"junk" * 100)
    _raises(p, "cannot decode image")


def test_negative_index_is_caller_bug(videos):
    with pytest.raises(ValueError):
        decode_frames(videos["h264"], [-1, 3])


def test_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "boom")))
    assert (e.path, e.reason, str(e)) == ("/x.mp4", "boom", "/x.mp4: boom")


def test_bad_files_never_hang(videos, tmp_path):
    """All bad inputs together finish quickly (no FFmpeg retry loops)."""
    data = videos["vp9"].read_bytes()
    cases = []
    for frac in (0.05, 0.2, 0.6, 0.9):
        p = tmp_path / f"cut{frac}.webm"
        p.write_bytes(data[: int(len(data) * frac)])
        cases.append(p)
    p = tmp_path / "flipped.webm"
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)
    p.write_bytes(bytes(corrupt))
    cases.append(p)
    done = []

    def work():
        for c in cases:
            try:
                decode_frames(c, range(0, N, 3))
            except VideoDecodeError:
                pass
            done.append(c)

    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout=20)
    assert len(done) == len(cases)


# --------------------------------------------------------------------------- sampling


def test_clip_indices_training_uniform_starts():
    rng = np.random.default_rng(0)
    span = clip_span(16, 4)
    assert span == 61
    starts = [clip_indices(70, 16, 4, rng=rng)[0] for _ in range(3000)]
    assert set(starts) == set(range(70 - span + 1))  # every valid start, nothing else
    idx = clip_indices(300, 16, 4, rng=rng)
    assert idx.dtype == np.int64 and idx.shape == (16,)
    assert (np.diff(idx) == 4).all() and idx[-1] < 300


def test_clip_indices_exact_fit_and_explicit_start():
    assert clip_indices(61, 16, 4, rng=np.random.default_rng(0)).tolist() == list(
        range(0, 61, 4)
    )
    assert clip_indices(300, 16, 4, start=100).tolist() == list(range(100, 161, 4))
    # An explicit start near the end is clamped like a short video.
    assert clip_indices(100, 4, 10, start=80).tolist() == [80, 90, 99, 99]
    with pytest.raises(ValueError):
        clip_indices(100, 4, 10, start=100)


def test_short_video_repeats_last_frame():
    # 20 frames < span 61: keep the step, start at 0, clamp to the last frame.
    idx = clip_indices(20, 16, 4, rng=np.random.default_rng(0))
    assert idx.tolist() == [0, 4, 8, 12, 16] + [19] * 11
    assert clip_indices(1, 16, 4).tolist() == [0] * 16


def test_short_video_decodes(videos):
    idx = clip_indices(N, 16, 8, rng=np.random.default_rng(0))  # span 121 > 100 frames
    out = decode_frames(videos["h264"], idx)
    assert [_read_index(f) for f in out] == [min(8 * k, N - 1) for k in range(16)]


def test_zero_frames_rejected():
    with pytest.raises(ValueError):
        clip_indices(0)
    with pytest.raises(ValueError):
        eval_clip_starts(0, 16, 4, 2)


def test_frame_step_for_fps():
    assert frame_step_for_fps(30, 7.5) == 4
    assert frame_step_for_fps(29.97, 7.5) == 4
    assert frame_step_for_fps(60, 7.5) == 8
    assert frame_step_for_fps(5, 7.5) == 1
    with pytest.raises(ValueError):
        frame_step_for_fps(0.0, 7.5)


def test_eval_clip_starts():
    assert eval_clip_starts(300, 16, 4, 1) == [(300 - 61) // 2]
    starts = eval_clip_starts(300, 16, 4, 8)
    assert len(starts) == 8 and starts[0] == 0 and starts[-1] == 300 - 61
    assert all(b > a for a, b in itertools.pairwise(starts))
    assert eval_clip_starts(30, 16, 4, 2) == [0, 0]
    for s in starts:  # every clip fits
        assert clip_indices(300, 16, 4, start=s)[-1] < 300
