"""Optimizer, schedules and EMA (the paper's Table 5 and Appendix C).

Schedules are pure functions of the step, so a resumed run needs no scheduler state:
``set_schedules(optimizer, step, ...)`` before every optimizer step writes the lr into
every group and the weight decay into the groups with ``apply_wd``.

- lr: linear warmup ``lr_start -> lr_peak`` over ``warmup_steps``, then cosine
  ``lr_peak -> lr_end`` over the remaining steps (V-JEPA 2's WarmupCosineSchedule).
- weight decay: cosine ``start -> end`` over all steps (V-JEPA 2's CosineWDSchedule).
- EMA (V-JEPA baseline only): a constant momentum, as V-JEPA 2.

Both hold their final value past ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = [
    "build_optimizer",
    "ema_update",
    "lr_at",
    "param_groups",
    "set_schedules",
    "weight_decay_at",
]

# The paper's Table 5.
LR_START, LR_PEAK, LR_END = 2e-4, 6.25e-4, 1e-6
WD_START, WD_END = 0.04, 0.4
BETAS = (0.9, 0.95)

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    _NORMS = (*_NORMS, nn.RMSNorm)


def _check_steps(step: int, steps: int) -> None:
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def _cosine(start: float, end: float, progress: float) -> float:
    """``end + (start - end) * 0.5 * (1 + cos(pi * progress))`` with progress clamped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(
    step: int,
    *,
    steps: int,
    warmup_steps: int,
    lr_start: float = LR_START,
    lr_peak: float = LR_PEAK,
    lr_end: float = LR_END,
) -> float:
    """Learning rate at ``step`` (0-based): ``lr_start`` at 0, ``lr_peak`` at ``warmup_steps``,
    ``lr_end`` at ``steps`` and after."""
    _check_steps(step, steps)
    if not 0 <= warmup_steps <= steps:
        raise ValueError(f"warmup_steps must be in [0, steps={steps}], got {warmup_steps}")
    if step < warmup_steps:
        return lr_start + (lr_peak - lr_start) * step / warmup_steps
    return _cosine(lr_peak, lr_end, (step - warmup_steps) / max(1, steps - warmup_steps))


def weight_decay_at(step: int, *, steps: int, start: float = WD_START, end: float = WD_END) -> float:
    """Weight decay at ``step``: ``end + (start - end) * 0.5 * (1 + cos(pi * step / steps))``."""
    _check_steps(step, steps)
    return _cosine(start, end, step / steps)


def _as_modules(modules: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    if isinstance(modules, nn.Module):
        return [modules]
    return [m for m in modules if m is not None]


def param_groups(*modules: nn.Module) -> list[dict]:
    """Two AdamW groups over the trainable parameters of ``modules``.

    Not decayed: biases, every parameter of a norm layer, any parameter with fewer than two
    dimensions, and mask tokens (any parameter whose qualified name contains ``mask_token``).
    Decayed: everything else, i.e. the weights of Linear / Conv layers (and any other
    parameter of two or more dimensions, such as a learned embedding table).

    Each group carries ``"apply_wd"`` (True for the decayed group) and a ``"name"``
    (``"decay"`` / ``"no_decay"``); empty groups are dropped. Parameters with
    ``requires_grad=False`` are skipped, and a parameter shared between modules appears once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for root in modules:
        for module_name, module in root.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                qualified = f"{module_name}.{name}" if module_name else name
                excluded = (
                    isinstance(module, _NORMS)
                    or name.endswith("bias")
                    or p.ndim < 2
                    or "mask_token" in qualified
                )
                (no_decay if excluded else decay).append(p)
    groups = [
        {"params": decay, "name": "decay", "apply_wd": True},
        {"params": no_decay, "name": "no_decay", "apply_wd": False, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    modules: nn.Module | Iterable[nn.Module],
    *,
    lr: float = LR_START,
    weight_decay: float = WD_START,
    betas: tuple[float, float] = BETAS,
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(*modules)``.

    ``fused=None`` picks the fused kernel when every parameter is a floating tensor on CUDA or
    the CPU (torch has both): one kernel per step and no host sync, and it skips the update on
    the device when the optimizer's ``found_inf`` is set (see ``runtime.train_step``).
    Otherwise torch's default (the foreach implementation where supported).
    """
    groups = param_groups(*_as_modules(modules))
    if not groups:
        raise ValueError("no trainable parameters")
    for g in groups:
        if g["apply_wd"]:
            g["weight_decay"] = weight_decay
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kwargs)


def set_schedules(
    optimizer: torch.optim.Optimizer,
    step: int,
    *,
    steps: int,
    warmup_steps: int,
    lr_start: float = LR_START,
    lr_peak: float = LR_PEAK,
    lr_end: float = LR_END,
    wd_start: float = WD_START,
    wd_end: float = WD_END,
) -> dict[str, float]:
    """Write ``lr_at(step)`` into every group and ``weight_decay_at(step)`` into the groups
    with ``apply_wd`` (groups without the key count as decayed). Returns ``{"lr", "wd"}``."""
    lr = lr_at(step, steps=steps, warmup_steps=warmup_steps, lr_start=lr_start, lr_peak=lr_peak, lr_end=lr_end)
    wd = weight_decay_at(step, steps=steps, start=wd_start, end=wd_end)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_wd", True):
            group["weight_decay"] = wd
    return {"lr": lr, "wd": wd}


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float, apply: torch.Tensor | None = None) -> None:
    """``target = momentum * target + (1 - momentum) * source`` for every parameter, in place
    (V-JEPA's ``_foreach_mul_`` / ``_foreach_add_``); buffers are copied from ``source``.

    ``apply``: an optional 0-dim bool tensor; where it is False nothing changes. Decided on the
    device, so a training step that was not applied skips its EMA update without a host sync.
    The two modules must have the same parameter and buffer names and shapes.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_named = list(target.named_parameters())
    s_named = list(source.named_parameters())
    if [n for n, _ in t_named] != [n for n, _ in s_named]:
        raise ValueError("target and source have different parameters")
    t_params, s_params = [p for _, p in t_named], [p for _, p in s_named]
    for (name, t), s in zip(t_named, s_params):
        if t.shape != s.shape:
            raise ValueError(f"parameter {name}: target shape {tuple(t.shape)} != source shape {tuple(s.shape)}")
    t_bufs, s_bufs = dict(target.named_buffers()), dict(source.named_buffers())
    if t_bufs.keys() != s_bufs.keys():
        raise ValueError("target and source have different buffers")
    keep = momentum if apply is None else torch.where(apply, momentum, 1.0).to(torch.float32)  # 1: skipped
    if t_params:
        torch._foreach_mul_(t_params, keep)
        torch._foreach_add_(t_params, torch._foreach_mul(s_params, 1.0 - keep))
    for name, buf in t_bufs.items():
        buf.copy_(s_bufs[name] if apply is None else torch.where(apply, s_bufs[name], buf))
