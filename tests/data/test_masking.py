"""Mask sampling: C++ vs reference equality, statistics, truncation policies, determinism."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from salt_fast import masking as M

HAS_CPP = M.cpp_available()
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="salt_fast._C not built: pip install --no-build-isolation -e .")
# Statistics need thousands of samples: use the fast backend when there is one.
FAST = "cpp" if HAS_CPP else "python"
GRID = (8, 14, 14)
N = 8 * 14 * 14

CONFIGS = [
    M.SHORT_RANGE,
    M.LONG_RANGE,
    M.MultiBlock(3, 0.3, 0.5, aspect_ratio=(0.5, 2.0)),
    M.RandomTube(0.9),
    M.RandomTube(0.5),
]
ODD_GRIDS = [(8, 14, 14), (3, 5, 7), (1, 4, 4), (8, 16, 16)]


def _equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and torch.equal(a, b)


def _batch_equal(x, y) -> bool:
    return len(x) == len(y) == 4 and all(_equal(a, b) for a, b in zip(x, y))


def _masks(config, batches: int, batch: int = 24, config_index: int = 0, seed: int = 0) -> torch.Tensor:
    """[batches*batch, N] target masks from the fast backend."""
    fn = M._ext.sample_target_mask if HAS_CPP else M.sample_target_mask_py
    return torch.cat([fn(config, GRID, batch, seed, step, config_index, 100) for step in range(batches)])


# ----------------------------------------------------------------------------- RNG
def test_splitmix64_reference_values():
    # SplitMix64 seeded with 0 (Vigna's reference generator) starts with these outputs.
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert M.splitmix64_draws_py(0, 0, 3).tolist() == expected
    assert M.splitmix64_draws_py(0, 1, 2).tolist() == expected[1:]
    # The scalar finalizer used for keys agrees with the vectorised one.
    zs = [0, 1, 2**63, 2**64 - 1, 0x1234567890ABCDEF]
    assert [M.splitmix64_mix(z) for z in zs] == M._mix_np(np.array(zs, dtype=np.uint64)).tolist()


@needs_cpp
def test_splitmix64_cpp_matches_python():
    for key in [0, 1, 2**64 - 1, M.batch_key(7, 3, 1)]:
        cpp = M._ext.splitmix64_draws(key, 5, 17).numpy().view(np.uint64)
        np.testing.assert_array_equal(cpp, M.splitmix64_draws_py(key, 5, 17))


# ----------------------------------------------------------------------------- backend equality
@needs_cpp
@pytest.mark.parametrize("grid", ODD_GRIDS, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_backends_identical(grid, config):
    for seed, step, config_index in [(0, 0, 0), (12345, 17, 1), (-3, 2**40, 5)]:
        args = (config, grid, 6, seed, step, config_index, 100)
        mask = M.sample_target_mask_py(*args)
        assert mask.dtype == torch.bool and mask.shape == (6, grid[0] * grid[1] * grid[2])
        assert torch.equal(mask, M._ext.sample_target_mask(*args))
        for truncation in M.TRUNCATION_POLICIES:
            ref = M.collate_ids_py(mask, truncation, seed, step, config_index)
            assert _batch_equal(ref, M._ext.collate_ids(mask, truncation, seed, step, config_index))
            assert _batch_equal(ref, M.sample_mask_batch_py(*args, truncation))
            assert _batch_equal(ref, M._ext.sample_mask_batch(*args, truncation))


@needs_cpp
@pytest.mark.parametrize("truncation", M.TRUNCATION_POLICIES)
def test_sampler_backends_identical(truncation):
    configs = M.MULTI_BLOCK + M.RANDOM_TUBE + M.MULTI_RANDOM_TUBE
    cpp = M.MaskSampler(GRID, configs, seed=99, truncation=truncation, backend="cpp")
    py = M.MaskSampler(GRID, configs, seed=99, truncation=truncation, backend="python")
    for step in (0, 1, 1000):
        a, b = cpp.sample(24, step), py.sample(24, step)
        assert len(a) == len(b) == len(configs)
        for x, y in zip(a, b):
            assert isinstance(x, M.MaskBatch) and isinstance(y, M.MaskBatch)
            assert _batch_equal(x, y)


@needs_cpp
def test_collate_foreign_masks_identical():
    # Masks not produced by a sampler: an all-visible row and an all-masked row.
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(rng.random((5, 37)) < 0.4)
    mask[1] = False
    mask[3] = True
    for truncation in M.TRUNCATION_POLICIES:
        ref = M.collate_ids_py(mask, truncation, 1, 2, 3)
        assert _batch_equal(ref, M._ext.collate_ids(mask, truncation, 1, 2, 3))
    ref = M.collate_ids_py(mask, "pad", 1, 2, 3)
    # An empty row pads with the smallest ids of the other set: here all of them, in order.
    assert not ref.target_valid[1].any() and torch.equal(ref.target[1], torch.arange(37))
    assert ref.context.shape[1] == 37 and ref.target.shape[1] == 37


@needs_cpp
def test_seed_taken_modulo_2_64_in_both_backends():
    a = M._ext.sample_target_mask(M.SHORT_RANGE, GRID, 4, -1, 3, 0, 100)
    b = M.sample_target_mask_py(M.SHORT_RANGE, GRID, 4, 2**64 - 1, 3, 0, 100)
    c = M._ext.sample_target_mask(M.SHORT_RANGE, GRID, 4, 2**64 - 1 + 2**70, 3, 0, 100)
    assert torch.equal(a, b) and torch.equal(a, c)


@needs_cpp
def test_impossible_config_raises_in_both_backends():
    full = M.MultiBlock(1, 1.0, 1.0, aspect_ratio=(1.0, 1.0))  # one block = the whole 14x14 plane
    for fn in (M._ext.sample_target_mask, M.sample_target_mask_py):
        with pytest.raises(M.MaskingError, match=r"non-empty context.*\(8, 14, 14\).*5 attempts"):
            fn(full, GRID, 2, 0, 0, 0, 5)
    for fn in (M._ext.sample_mask_batch, M.sample_mask_batch_py):
        with pytest.raises(M.MaskingError, match="MultiBlock"):
            fn(full, GRID, 2, 0, 0, 0, 5, "min")


# ----------------------------------------------------------------------------- statistics
MEASURED = {0: 0.627, 1: 0.812}  # MULTI_RANDOM_TUBE's source; see the comment in masking.py


@pytest.mark.parametrize("config_index", [0, 1])
def test_masked_fraction_and_row_invariants(config_index):
    config = M.MULTI_BLOCK[config_index]
    masks = _masks(config, batches=40, config_index=config_index)  # 960 samples
    frac = masks.float().mean(1)
    assert abs(frac.mean().item() - MEASURED[config_index]) < 0.02
    assert (frac < 1).all(), "context must never be empty"
    # Multi-block with temporal_scale 1.0: every tubelet carries the same spatial mask.
    planes = masks.view(-1, 8, 196)
    assert (planes == planes[:, :1]).all()


@pytest.mark.parametrize("config_index", [0, 1])
def test_truncation_policies_on_real_batches(config_index):
    config = M.MULTI_BLOCK[config_index]
    for step in range(5):
        mask_fn = M._ext.sample_target_mask if HAS_CPP else M.sample_target_mask_py
        mask = mask_fn(config, GRID, 24, 0, step, config_index, 100)
        n_tgt = mask.sum(1)
        n_ctx = N - n_tgt
        out = {
            tr: M.MaskSampler(GRID, M.MULTI_BLOCK, truncation=tr, backend=FAST).sample(24, step)[config_index]
            for tr in M.TRUNCATION_POLICIES
        }

        pad = out["pad"]
        assert pad.context.dtype == torch.int64 and pad.target.dtype == torch.int64
        assert pad.context.shape == (24, n_ctx.max()) and pad.target.shape == (24, n_tgt.max())
        assert torch.equal(pad.context_valid.sum(1), n_ctx) and torch.equal(pad.target_valid.sum(1), n_tgt)
        for b in range(24):
            ctx = pad.context[b][pad.context_valid[b]]
            tgt = pad.target[b][pad.target_valid[b]]
            assert (ctx.diff() > 0).all() and (tgt.diff() > 0).all()  # unique and sorted
            # Padding slots take the smallest ids of the other set: rows stay unique.
            assert torch.equal(pad.context[b][~pad.context_valid[b]], tgt[: int((~pad.context_valid[b]).sum())])
            assert torch.equal(pad.target[b][~pad.target_valid[b]], ctx[: int((~pad.target_valid[b]).sum())])
            assert pad.context[b].unique().numel() == pad.context.shape[1]
            assert pad.target[b].unique().numel() == pad.target.shape[1]
            both = torch.cat([ctx, tgt])
            assert both.numel() == N and torch.equal(both.sort().values, torch.arange(N))  # disjoint, union = all
            assert not mask[b, ctx].any() and mask[b, tgt].all()

        for tr in ("min", "random"):
            mb = out[tr]
            assert mb.context_valid is None and mb.target_valid is None
            assert mb.context.shape == (24, n_ctx.min()) and mb.target.shape == (24, n_tgt.min())
            for b in range(24):
                for ids, real in ((mb.context[b], ~mask[b]), (mb.target[b], mask[b])):
                    assert (ids.diff() > 0).all()
                    assert real[ids].all(), f"{tr}: kept an id that is not in the row"
        # "min" keeps exactly the prefix of each sorted row.
        for b in range(24):
            assert torch.equal(out["min"].context[b], pad.context[b, : out["min"].context.shape[1]])
            assert torch.equal(out["min"].target[b], pad.target[b, : out["min"].target.shape[1]])


def test_min_truncation_drops_late_ids():
    """Documents the bias of V-JEPA 2's policy: truncated rows lose their last tubelets."""
    per_tubelet = {tr: torch.zeros(8) for tr in ("min", "random")}
    max_kept = []
    for tr in per_tubelet:
        sampler = M.MaskSampler(GRID, (M.SHORT_RANGE,), truncation=tr, backend=FAST)
        for step in range(20):
            tgt = sampler.sample(24, step)[0].target
            per_tubelet[tr] += torch.bincount((tgt // 196).flatten(), minlength=8).float()
            if tr == "min":
                max_kept.append(tgt.max(1).values.float())
    lo, hi = per_tubelet["min"][0], per_tubelet["min"][7]
    assert hi < 0.2 * lo, f"min policy keeps {hi} targets in the last tubelet vs {lo} in the first"
    r = per_tubelet["random"]
    assert (r / r.mean() - 1).abs().max() < 0.05, "random policy should be uniform over tubelets"
    # Most rows never reach the last tubelet (ids >= 7*196) under "min".
    assert (torch.cat(max_kept) < 7 * 196).float().mean() > 0.5


def test_random_tube_exact_count_and_tube_shape():
    for ratio, grid in [(0.9, GRID), (0.627, GRID), (0.5, (3, 5, 7))]:
        T, H, W = grid
        fn = M._ext.sample_target_mask if HAS_CPP else M.sample_target_mask_py
        mask = fn(M.RandomTube(ratio), grid, 16, 0, 3, 0, 100).view(16, T, H * W)
        k = int(ratio * H * W)
        assert (mask.sum(2) == k).all()
        assert (mask == mask[:, :1]).all()
        assert not torch.equal(mask[0], mask[1])


def test_random_tube_reference_counts():
    mask = M.sample_target_mask_py(M.RandomTube(0.9), GRID, 4, 0, 0, 0).view(4, 8, 196)
    assert (mask.sum(2) == 176).all() and (mask == mask[:, :1]).all()


def test_multi_random_tube_ratios_match_multi_block():
    # Fewer samples than the 20,016 behind the constants, hence the loose tolerance.
    for i, (block, tube) in enumerate(zip(M.MULTI_BLOCK, M.MULTI_RANDOM_TUBE)):
        measured = _masks(block, batches=100, config_index=i, seed=1).float().mean().item()
        assert abs(measured - tube.ratio) < 0.01, (block, measured, tube.ratio)


# ----------------------------------------------------------------------------- determinism / state
@pytest.mark.parametrize("backend", ["python", pytest.param("cpp", marks=needs_cpp)])
def test_determinism_and_state_dict(backend):
    s = M.MaskSampler(seed=5, backend=backend, truncation="pad")
    a, b = s.sample(8, 3), s.sample(np.int64(8), np.int64(3))  # NumPy ints are accepted too
    assert all(_batch_equal(x, y) for x, y in zip(a, b))
    c = s.sample(8, 4)
    assert not all(_batch_equal(x, y) for x, y in zip(a, c))
    d = M.MaskSampler(seed=6, backend=backend, truncation="pad").sample(8, 3)
    assert not all(_batch_equal(x, y) for x, y in zip(a, d))

    s(8), s(8)
    state = s.state_dict()
    assert state == {"step": 2}
    nxt = s(8)
    fresh = M.MaskSampler(seed=5, backend=backend, truncation="pad")
    fresh.load_state_dict(state)
    assert all(_batch_equal(x, y) for x, y in zip(nxt, fresh(8)))
    assert all(_batch_equal(x, y) for x, y in zip(nxt, s.sample(8, 2)))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: M.MultiBlock(0, 0.15, 1.0), "num_blocks"),
        (lambda: M.MultiBlock(2.5, 0.15, 1.0), "num_blocks"),
        (lambda: M.MultiBlock(8, 0.0, 1.0), "spatial_scale"),
        (lambda: M.MultiBlock(8, 1.5, 1.0), "spatial_scale"),
        (lambda: M.MultiBlock(8, 0.15, 0.0), "temporal_scale"),
        (lambda: M.MultiBlock(8, 0.15, float("nan")), "temporal_scale"),
        (lambda: M.MultiBlock(8, 0.15, 1.0, aspect_ratio=(1.5, 0.75)), "aspect_ratio"),
        (lambda: M.MultiBlock(8, 0.15, 1.0, aspect_ratio=(0.0, 1.0)), "aspect_ratio"),
        (lambda: M.MultiBlock(8, 0.15, 1.0, aspect_ratio=(1.0,)), "aspect_ratio"),
        (lambda: M.RandomTube(1.0), "ratio"),
        (lambda: M.RandomTube(0.0), "ratio"),
        (lambda: M.MaskSampler((8, 14)), "grid"),
        (lambda: M.MaskSampler((8, 0, 14)), "grid"),
        (lambda: M.MaskSampler(configs=()), "configs"),
        (lambda: M.MaskSampler(configs=("short",)), "configs"),
        (lambda: M.MaskSampler(truncation="max"), "truncation"),
        (lambda: M.MaskSampler(backend="cuda"), "backend"),
        (lambda: M.MaskSampler(max_attempts=0), "max_attempts"),
        (lambda: M.MaskSampler(backend="python").sample(0, 0), "batch_size"),
    ],
)
def test_validation_errors_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_configs_are_normalised_and_hashable():
    c = M.MultiBlock(8, 0.15, 1, aspect_ratio=[0.75, 1.5])
    assert c == M.SHORT_RANGE and hash(c) == hash(M.SHORT_RANGE)
    assert isinstance(c.temporal_scale, float) and c.aspect_ratio == (0.75, 1.5)
    assert M.MaskSampler(configs=M.SHORT_RANGE, backend="python").configs == (M.SHORT_RANGE,)


def test_tube_masking_nothing_raises():
    with pytest.raises(M.MaskingError, match="RandomTube"):
        M.sample_target_mask_py(M.RandomTube(0.01), (2, 4, 4), 2, 0, 0, 0)
    if HAS_CPP:
        with pytest.raises(M.MaskingError, match="RandomTube"):
            M._ext.sample_target_mask(M.RandomTube(0.01), (2, 4, 4), 2, 0, 0, 0, 100)


def test_backend_selection(monkeypatch):
    assert M.MaskSampler(backend="python").backend == "python"
    assert M.MaskSampler(backend="auto").backend == ("cpp" if HAS_CPP else "python")
    monkeypatch.setattr(M, "_ext", None)
    assert M.MaskSampler(backend="auto").backend == "python"
    with pytest.raises(ImportError, match="salt_fast._C"):
        M.MaskSampler(backend="cpp")
    assert issubclass(M.MaskingError, RuntimeError)


# ----------------------------------------------------------------------------- future frames


@pytest.mark.parametrize("grid, fraction, predicted", [((4, 4, 4), 0.5, 2), ((8, 14, 14), 0.5, 4), ((3, 2, 5), 0.5, 1),
                                                       ((8, 2, 2), 0.3, 2), ((2, 3, 3), 0.01, 1)])  # fmt: skip
def test_future_frames_predicts_the_last_tubelets_of_every_sample(grid, fraction, predicted):
    T, H, W = grid
    sampler = M.MaskSampler(grid, (M.FutureFrames(fraction),), seed=3)
    context, target, context_valid, target_valid = sampler.sample(5, 7)[0]
    first_target = (T - predicted) * H * W
    assert torch.equal(target, torch.arange(first_target, T * H * W).expand(5, -1))
    assert torch.equal(context, torch.arange(first_target).expand(5, -1))
    assert context_valid is None and target_valid is None
    # Deterministic: no seed, step or truncation policy changes it.
    for other in (M.MaskSampler(grid, (M.FutureFrames(fraction),), seed=9, truncation="random", backend="python"),):
        assert _batch_equal(other.sample(5, 123)[0], (context, target, None, None))


@pytest.mark.parametrize("backend", ["python", pytest.param("cpp", marks=needs_cpp)])
def test_mixed_sets_route_future_frames_to_the_reference(backend):
    # MULTI_BLOCK runs on the requested backend, FutureFrames on the NumPy reference: the batch
    # equals the reference sampler's, configuration by configuration.
    sampler = M.MaskSampler(GRID, M.MASK_SETS["multi_block_future"], seed=5, backend=backend)
    reference = M.MaskSampler(GRID, M.MASK_SETS["multi_block_future"], seed=5, backend="python")
    for step in (0, 11):
        got = sampler.sample(6, step)
        assert len(got) == 3 and all(_batch_equal(a, b) for a, b in zip(got, reference.sample(6, step)))
    assert got[2].target.min() == 4 * 14 * 14  # the second half of the clip


def test_future_frames_validation_and_named_sets():
    for bad in (0.0, 1.0, -0.5, float("nan"), True):
        with pytest.raises(ValueError, match="predict_fraction"):
            M.FutureFrames(bad)
    with pytest.raises(M.MaskingError, match="no tubelet is left for the context"):
        M.MaskSampler((1, 4, 4), (M.FutureFrames(0.5),)).sample(2, 0)
    assert M.MASK_SETS["future"] == (M.FutureFrames(0.5),)
    assert M.MASK_SETS["multi_block_future"] == M.MULTI_BLOCK + (M.FutureFrames(0.5),)
    assert [c.temporal_scale for c in M.MASK_SETS["multi_block_temporal"]] == [0.5, 0.5]
    with pytest.raises(ValueError, match="FutureFrames"):
        M.MaskSampler(configs=(M.SHORT_RANGE, "future"))
