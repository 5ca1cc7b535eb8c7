"""Checkpoints: atomic save, keep-last-K, corruption fallback, RNG resume, encoder export."""

import os
import random
import warnings

import numpy as np
import pytest
import torch

from salt_fast import checkpoint as ck
from salt_fast.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    export_encoder,
    list_checkpoints,
    load_checkpoint,
    load_encoder_weights,
    load_latest,
    read_export_metadata,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state(step):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    base = torch.randn(6, 5)
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "nested": {
            "list": [1, "two", (3.0, None)],
            "view": base[1:4, ::2],
            "base": base,
        },
        "half": torch.randn(3, 3).half(),
        "bits": torch.tensor([float("nan"), -0.0, float("inf")]),
        "rng": rng_state(),
    }


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(
            a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
        )
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b


def _files(d):
    return sorted(p.name for p in d.iterdir())


def test_round_trip_bitwise(tmp_path):
    state = _state(7)
    path = save_checkpoint(tmp_path, 7, state)
    assert path == tmp_path / "step_00000007.pt"
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    nested = loaded["nested"]  # views keep sharing storage with their base
    assert (
        nested["view"].untyped_storage().data_ptr()
        == nested["base"].untyped_storage().data_ptr()
    )
    got = load_latest(tmp_path)
    assert got is not None and got[0] == path
    _assert_same(state, got[1])
    assert _files(tmp_path) == ["step_00000007.pt"]  # no temp files left behind


def test_keep_last_k_and_listing(tmp_path):
    for step in [5, 30, 10, 20, 40]:
        save_checkpoint(tmp_path, step, {"step": step}, keep=3)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".tmp-step_00000050.pt.abc.partial").write_bytes(b"junk")
    (tmp_path / "step_x.pt").write_bytes(b"junk")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_00000040.pt",
        "step_00000030.pt",
        "step_00000020.pt",
    ]
    assert load_latest(tmp_path)[1] == {"step": 40}
    save_checkpoint(tmp_path, 50, {"step": 50}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000050.pt"]
    assert (tmp_path / "notes.txt").exists()  # foreign files untouched
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, 60, {}, keep=0)


def test_just_written_is_never_pruned(tmp_path):
    save_checkpoint(tmp_path, 300, {"step": 300})
    save_checkpoint(tmp_path, 250, {"step": 250}, keep=1)  # resumed from an older one
    assert {p.name for p in list_checkpoints(tmp_path)} == {
        "step_00000300.pt",
        "step_00000250.pt",
    }


def test_empty_or_missing_directory(tmp_path):
    assert list_checkpoints(tmp_path / "nope") == []
    assert load_latest(tmp_path / "nope") is None
    assert load_latest(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="step_00000001.pt"):
        load_checkpoint(tmp_path / "step_00000001.pt")


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"w": torch.arange(10)})
    before = (tmp_path / "step_00000001.pt").read_bytes()

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, 2, {"w": torch.arange(20)}, keep=1)
    monkeypatch.undo()
    # No final-named partial, no temp file, nothing pruned.
    assert _files(tmp_path) == ["step_00000001.pt"]
    assert (tmp_path / "step_00000001.pt").read_bytes() == before
    path, state = load_latest(tmp_path)
    assert path.name == "step_00000001.pt" and torch.equal(state["w"], torch.arange(10))


def test_crash_inside_torch_save_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"a": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(tmp_path, 1, {"a": 2, "bad": Unpicklable()})  # same final name
    assert _files(tmp_path) == ["step_00000001.pt"]
    assert load_checkpoint(tmp_path / "step_00000001.pt") == {"a": 1}


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":
        # A flipped byte inside the tensor data: only the checksum can catch it.
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_newest_falls_back(tmp_path, how):
    save_checkpoint(tmp_path, 1, {"w": torch.full((4096,), 1.0)})
    newest = save_checkpoint(tmp_path, 2, {"w": torch.full((4096,), 2.0)})
    _corrupt(newest, how)
    with pytest.raises(CheckpointError, match="step_00000002.pt"):
        load_checkpoint(newest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path, state = load_latest(tmp_path)
    assert path.name == "step_00000001.pt"
    assert torch.equal(state["w"], torch.full((4096,), 1.0))
    ours = [w for w in caught if issubclass(w.category, CheckpointWarning)]
    assert len(ours) == 1 and "step_00000002.pt" in str(ours[0].message)


def test_all_corrupt_raises_naming_them(tmp_path):
    for step in (1, 2):
        _corrupt(save_checkpoint(tmp_path, step, {"w": torch.ones(100)}), "truncate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(CheckpointError) as err:
            load_latest(tmp_path)
    assert "step_00000001.pt" in str(err.value) and "step_00000002.pt" in str(err.value)


def test_renamed_checkpoint_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path, 3, {"a": 1})
    os.rename(path, tmp_path / "step_00000009.pt")
    with pytest.raises(CheckpointError, match="step 9"):
        load_checkpoint(tmp_path / "step_00000009.pt")


def _draw():
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (4,)).tolist(),
    )


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draw()
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    expected = _draw()
    # Scramble everything, then resume.
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draw() != expected
    set_rng_state(load_latest(tmp_path)[1]["rng"])
    assert _draw() == expected


class _Enc(torch.nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.register_buffer("pos", torch.randn(3, dim).t())  # non-contiguous buffer


def test_export_round_trip_and_metadata(tmp_path):
    src, dst = _Enc(), _Enc()
    path = export_encoder(
        src,
        tmp_path / "enc.safetensors",
        metadata={"preset": "vit_s", "config": {"dim": 8}},
    )
    assert _files(tmp_path) == ["enc.safetensors"]
    load_encoder_weights(dst, path)
    _assert_same(src.state_dict(), dst.state_dict())
    meta = read_export_metadata(path)
    assert meta["preset"] == "vit_s" and meta["config"] == '{"dim": 8}'


def test_export_load_errors(tmp_path):
    path = export_encoder(_Enc(8), tmp_path / "enc.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_encoder_weights(_Enc(8), tmp_path / "nope.safetensors")

    wrong_shape = _Enc(4)
    before = {k: v.clone() for k, v in wrong_shape.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(wrong_shape, path)
    msg = str(err.value)
    assert "proj.weight: file (8, 8) vs module (4, 4)" in msg and "norm.bias" in msg
    _assert_same(before, wrong_shape.state_dict())  # untouched

    renamed = _Enc(8)
    renamed.extra = torch.nn.Linear(2, 2)
    del renamed.norm
    before = {k: v.clone() for k, v in renamed.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(renamed, path)
    msg = str(err.value)
    assert "missing keys: ['extra.bias', 'extra.weight']" in msg
    assert "unexpected keys: ['norm.bias', 'norm.weight']" in msg
    _assert_same(before, renamed.state_dict())

    # Non-strict: loads the overlap.
    result = load_encoder_weights(renamed, path, strict=False)
    assert sorted(result.missing_keys) == ["extra.bias", "extra.weight"]

    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_encoder_weights(_Enc(8), tmp_path / "bad.safetensors")


def test_export_crash_keeps_previous(tmp_path, monkeypatch):
    path = export_encoder(_Enc(), tmp_path / "enc.safetensors", metadata={"v": "1"})
    monkeypatch.setattr(
        ck.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("crash"))
    )
    with pytest.raises(OSError):
        export_encoder(_Enc(), path, metadata={"v": "2"})
    monkeypatch.undo()
    assert _files(tmp_path) == ["enc.safetensors"]
    assert read_export_metadata(path)["v"] == "1"
