"""Schedules, AdamW parameter groups and the EMA update (salt_fast.optim)."""

import math

import pytest
import torch
from torch import nn

from salt_fast.models import build_encoder, build_predictor
from salt_fast.optim import (
    build_optimizer,
    ema_update,
    lr_at,
    param_groups,
    set_schedules,
    weight_decay_at,
)

STEPS, WARMUP = 1000, 100


def lr(step, **kw):
    return lr_at(step, steps=STEPS, warmup_steps=WARMUP, **kw)


def test_lr_values():
    assert lr(0) == pytest.approx(2e-4, rel=1e-12)
    # Warmup midpoint: halfway between 2e-4 and 6.25e-4.
    assert lr(50) == pytest.approx(4.125e-4, rel=1e-12)
    assert lr(WARMUP) == pytest.approx(6.25e-4, rel=1e-12)
    # Cosine midpoint (step 550 = 100 + 900/2): (peak + end) / 2.
    assert lr(550) == pytest.approx((6.25e-4 + 1e-6) / 2, rel=1e-12)
    # A quarter into the cosine: end + (peak - end) * 0.5 * (1 + cos(pi/4)).
    assert lr(325) == pytest.approx(1e-6 + 6.24e-4 * 0.5 * (1 + math.sqrt(0.5)), rel=1e-12)
    assert lr(STEPS) == pytest.approx(1e-6, rel=1e-12)
    assert lr(STEPS + 500) == pytest.approx(1e-6, rel=1e-12)  # held past the end
    assert lr_at(10, steps=20, warmup_steps=10, lr_start=0.0, lr_peak=1.0, lr_end=0.0) == 1.0


def test_lr_monotonic_pieces():
    warm = [lr(s) for s in range(WARMUP + 1)]
    cos = [lr(s) for s in range(WARMUP, STEPS + 1)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a > b for a, b in zip(cos, cos[1:]))
    assert max(warm + cos) == pytest.approx(6.25e-4)


def test_lr_no_warmup_and_errors():
    assert lr_at(0, steps=10, warmup_steps=0, lr_peak=1.0, lr_end=0.0) == 1.0
    with pytest.raises(ValueError):
        lr_at(0, steps=10, warmup_steps=11)
    with pytest.raises(ValueError):
        lr_at(-1, steps=10, warmup_steps=1)


def test_weight_decay_values():
    wd = lambda s: weight_decay_at(s, steps=STEPS)  # noqa: E731
    assert wd(0) == pytest.approx(0.04, rel=1e-12)
    assert wd(500) == pytest.approx(0.22, rel=1e-12)
    assert wd(250) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.sqrt(0.5)), rel=1e-12)
    assert wd(STEPS) == pytest.approx(0.4, rel=1e-12)
    assert wd(2 * STEPS) == pytest.approx(0.4, rel=1e-12)
    values = [wd(s) for s in range(STEPS + 1)]
    assert all(a < b for a, b in zip(values, values[1:]))


@pytest.fixture(scope="module")
def models():
    enc = build_encoder("vit_tiny", depth=1)
    pred = build_predictor(enc.embed_dim, enc.embed_dim, depth=1)
    return enc, pred


def test_param_groups_membership(models):
    enc, pred = models
    groups = param_groups(enc, pred)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert [g["apply_wd"] for g in groups] == [True, False]
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert not decay & no_decay

    all_params = list(enc.parameters()) + list(pred.parameters())
    assert len(decay) + len(no_decay) == len(all_params) == len({id(p) for p in all_params})

    expected_decay = set()
    for model in (enc, pred):
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv3d)):
                expected_decay.add(id(m.weight))
    assert decay == expected_decay
    # Everything else: biases, LayerNorm parameters, mask tokens.
    for model in (enc, pred):
        for name, p in model.named_parameters():
            if id(p) not in expected_decay:
                assert id(p) in no_decay, name
                assert name.endswith("bias") or "norm" in name or "mask_tokens" in name
    for m in list(enc.modules()) + list(pred.modules()):
        if isinstance(m, nn.LayerNorm):
            assert id(m.weight) in no_decay and id(m.bias) in no_decay
    for t in pred.mask_tokens:
        assert id(t) in no_decay
    n_linear_conv = sum(isinstance(m, (nn.Linear, nn.Conv3d)) for model in models for m in model.modules())
    assert len(decay) == n_linear_conv


def test_param_groups_skip_frozen_and_shared():
    lin = nn.Linear(4, 4)
    shared = nn.Sequential(lin, nn.LayerNorm(4), lin)
    frozen = nn.Linear(4, 2)
    frozen.requires_grad_(False)
    extra = nn.Module()
    extra.table = nn.Parameter(torch.zeros(3, 4))  # bare 2-D parameter: decayed
    extra.scale = nn.Parameter(torch.ones(4))  # 1-D: not decayed
    groups = param_groups(shared, frozen, shared, extra)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert decay == {id(lin.weight), id(extra.table)}
    assert no_decay == {id(lin.bias), id(shared[1].weight), id(shared[1].bias), id(extra.scale)}
    assert sum(len(g["params"]) for g in groups) == 6
    assert param_groups(frozen) == []


def test_build_optimizer_and_set_schedules(models):
    enc, pred = models
    opt = build_optimizer([enc, pred], lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.95)] * 2
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert [g["apply_wd"] for g in opt.param_groups] == [True, False]
    assert opt.param_groups[0]["fused"]  # CPU parameters too: one kernel, no host sync, found_inf honoured

    cfg = dict(steps=STEPS, warmup_steps=WARMUP, lr_start=2e-4, lr_peak=6.25e-4, lr_end=1e-6, wd_start=0.04, wd_end=0.4)
    out = set_schedules(opt, 550, **cfg)
    assert out["lr"] == pytest.approx((6.25e-4 + 1e-6) / 2)
    assert out["wd"] == pytest.approx(weight_decay_at(550, steps=STEPS))
    assert [g["lr"] for g in opt.param_groups] == [out["lr"]] * 2
    assert [g["weight_decay"] for g in opt.param_groups] == [out["wd"], 0.0]

    # A step with the scheduled values runs, and the state dict keeps the group flags.
    loss = sum(p.float().square().sum() for p in enc.parameters())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert [g["apply_wd"] for g in opt.state_dict()["param_groups"]] == [True, False]


def test_ema_update_exact():
    src = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    tgt = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        # Dyadic values: the update is exact in floating point.
        for i, (t, s) in enumerate(zip(tgt.parameters(), src.parameters())):
            t.copy_(torch.arange(t.numel(), dtype=torch.float32).view_as(t) + i)
            s.copy_(torch.full_like(s, 4.0) - i)
    src[1].running_mean.fill_(3.0)
    src[1].num_batches_tracked.fill_(7)
    before = [t.clone() for t in tgt.parameters()]
    ema_update(tgt, src, 0.75)
    for b, t, s in zip(before, tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s, rtol=0, atol=0)
        assert not t.requires_grad or t.grad is None
    assert torch.equal(tgt[1].running_mean, torch.full((2,), 3.0))
    assert int(tgt[1].num_batches_tracked) == 7


def test_ema_update_random_and_edges():
    src, tgt = nn.Linear(8, 8), nn.Linear(8, 8)
    before = [t.detach().clone() for t in tgt.parameters()]
    m = 0.99925
    ema_update(tgt, src, m)
    for b, t, s in zip(before, tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t.detach(), m * b + (1 - m) * s.detach(), rtol=1e-6, atol=1e-7)
    snapshot = [t.detach().clone() for t in tgt.parameters()]
    ema_update(tgt, src, 1.0)  # momentum 1: unchanged
    assert all(torch.equal(a, b) for a, b in zip(snapshot, tgt.parameters()))
    ema_update(tgt, src, 0.0)  # momentum 0: a copy
    assert all(torch.equal(a, b) for a, b in zip(tgt.parameters(), src.parameters()))
    with pytest.raises(ValueError):
        ema_update(nn.Linear(8, 4), src, 0.5)
    with pytest.raises(ValueError):
        ema_update(tgt, src, 1.5)
