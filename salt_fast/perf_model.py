"""A step model: what one training step should cost on a GPU, predicted from an exact trace.

This is a *model*, not a measurement. It traces one real :func:`salt_fast.runtime.train_step`
on the meta device (no memory, no compute: shapes only), records every dispatched op with its
exact FLOPs (``torch.utils.flop_counter``'s formulas) and the bytes it reads and writes, and
turns each op into time on a GPU from the datasheet ceilings in :data:`salt_fast.flops.GPUS`
and the efficiency assumptions in :class:`Assumptions`:

    time(op) = max(FLOPs / (peak x efficiency of its class), bytes / (HBM bandwidth x memory efficiency))
               + one launch overhead per kernel it launches

summed over the step's ops (one stream, no overlap between kernels). Op classes: ``matmul``
(mm / addmm / bmm / the patch-embedding convolution), ``attention`` (flash forward and
backward; efficiency scaled down below head dim 64), ``memory`` (everything else: elementwise,
reductions, copies, the reference kernels' gathers and norms), ``fused`` (salt_fast's custom
kernel ops, which declare their own FLOPs and bytes) and ``optimizer`` (the fused AdamW,
modelled from the parameter count: it runs once per step over every parameter).

What the trace sees is the step of the GPU run, with three stated departures:
- Activations and weights are bf16 throughout. Real runs use bf16 autocast, which keeps fp32
  master weights (their per-step casts are added analytically: 4 + 2 bytes per parameter, one
  launch per weight) and runs LayerNorm / softmax in fp32 (not modelled: their bytes are
  undercounted by up to 2x).
- Attention is traced as PyTorch's flash kernels (``_scaled_dot_product_flash_attention``),
  which SDPA picks on an H100 for bf16 without a mask; padded batches use a mask and the
  memory-efficient kernel instead (same FLOPs, modelled with the same efficiency).
- The trace is of one process: data-parallel communication and data loading are not in it
  (the paper's GPU-hours exclude both too).
- A fused kernel op counts as one launch; the losses launch two or three kernels (a partial
  sum, the mean, with ``valid`` a count), the gather backward and mask-token gradient two.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from salt_fast.config import TrainConfig
from salt_fast.flops import GPUS, GPUSpec
from salt_fast.masking import MASK_SETS, MaskSampler
from salt_fast.models import vit
from salt_fast.optim import build_optimizer
from salt_fast.runtime import Run, Runtime, masks_to, train_step
from salt_fast.stages import PAPER_BATCH, STAGES

__all__ = ["Assumptions", "OpRecord", "StepPrediction", "gpu_hours", "predict", "trace_step"]

_META = torch.device("meta")

# Ops that only change a tensor's metadata: no kernel, no traffic.
_VIEWS = {
    "view", "_unsafe_view", "reshape", "alias", "as_strided", "expand", "transpose", "t", "permute", "unsqueeze",
    "squeeze", "select", "slice", "split", "split_with_sizes", "unbind", "detach", "unflatten", "flatten", "_reshape_alias",
    "lift_fresh", "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "set_",
}  # fmt: skip
_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward"}
_ATTENTION = {
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
}  # fmt: skip


@dataclass(frozen=True)
class Assumptions:
    """How close each op class gets to the datasheet ceilings: the model's assumptions, stated.

    ``matmul``: share of the dense bf16 peak reached by the step's GEMMs (ViT widths 384-1664,
    thousands of rows); cuBLAS reaches ~80% on large square bf16 GEMMs, less on these shapes.
    ``attention_fwd`` / ``attention_bwd``: PyTorch's flash kernels at head dim >= 64 (FlashAttention-2,
    which does not use Hopper's wgmma: well below the GEMM share, the backward lower still),
    scaled by ``head_dim / 64`` below that. ``memory``: share of HBM bandwidth reached by
    bandwidth-bound kernels. ``launch_s``: host-side cost per kernel launch in eager mode (CUDA
    graphs, ``runtime.compile_mode=reduce-overhead``, would remove most of it).
    ``foreach_tensors``: tensors per launch of a multi-tensor (foreach / fused optimizer) kernel.
    """

    matmul: float = 0.65
    attention_fwd: float = 0.45
    attention_bwd: float = 0.35
    memory: float = 0.80
    launch_s: float = 5e-6
    foreach_tensors: int = 110


@dataclass
class OpRecord:
    """One dispatched op of the traced step."""

    name: str  # e.g. "aten.mm.default" or "salt_fast.latent_l1_loss.default"
    kind: str  # matmul | attention | memory | fused | optimizer
    flops: int
    bytes: int  # read + written
    launches: int
    backward: bool = False  # an attention backward (its own efficiency)
    head_dim: int = 0  # attention only


@dataclass
class StepPrediction:
    """The model's prediction for one step on one GPU (``assumptions`` included, for the record)."""

    gpu: str
    kernels: str
    batch_size: int
    step_s: float
    clips_per_s: float
    flops: int  # exact FLOPs of the traced step (all ops with a formula)
    mfu: float  # flops / step_s / the dense bf16 peak
    launches: int
    by_kind: dict[str, dict[str, float]]  # kind -> {"s", "flops", "bytes", "launches"}
    top_ops: list[dict]  # the ten costliest ops (summed over their calls)
    assumptions: dict = field(default_factory=dict)


def _nbytes(tree) -> int:
    """Bytes of the distinct tensors in a (nested) argument list."""
    seen: dict[int, torch.Tensor] = {}
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            seen[id(item)] = item
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return sum(t.numel() * t.element_size() for t in seen.values())


class _Recorder(TorchDispatchMode):
    """Records every op with a kernel: its class, exact FLOPs, bytes read + written, launches."""

    def __init__(self, assumptions: Assumptions, op_costs: dict) -> None:
        super().__init__()
        self.ops: list[OpRecord] = []
        self.assumptions = assumptions
        self.op_costs = op_costs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        namespace, base = func.namespace, func._overloadpacket.__name__
        if base in _VIEWS:
            return out
        flops = 0
        if func._overloadpacket in flop_registry:
            flops = int(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
        nbytes = _nbytes((args, kwargs)) + _nbytes(out)
        launches = 1
        if namespace == "salt_fast" and str(func._overloadpacket) in self.op_costs:
            flops, nbytes = self.op_costs[str(func._overloadpacket)](*args, **kwargs)
            kind = "fused"
        elif base in _MATMULS:
            kind = "matmul"
        elif base in _ATTENTION:
            kind = "attention"
        else:
            kind = "memory"
            if base.startswith("_foreach"):
                launches = math.ceil(len(args[0]) / self.assumptions.foreach_tensors)
        head_dim = args[0].shape[-1] if kind == "attention" else 0
        self.ops.append(OpRecord(str(func), kind, flops, nbytes, launches, base.endswith("backward"), head_dim))
        return out


@contextmanager
def _gpu_attention() -> Iterator[None]:
    """Attention as the GPU runs it (PyTorch's flash / memory-efficient kernels), not the math
    fallback the meta device would otherwise take: the same FLOPs, the traffic of a fused kernel."""
    original = vit.attention

    def fused(qkv: torch.Tensor, valid: torch.Tensor | None = None, backend: str = "sdpa") -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        if valid is None:
            out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
        else:
            bias = torch.zeros(valid.shape[0], 1, 1, valid.shape[1], dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~valid[:, None, None, :], float("-inf"))
            out = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[0]
        return out.transpose(1, 2)

    vit.attention = fused
    try:
        yield
    finally:
        vit.attention = original


@contextmanager
def _kernels(choice: str) -> Iterator[None]:
    previous = os.environ.get("SALT_FAST_KERNELS")
    os.environ["SALT_FAST_KERNELS"] = choice
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SALT_FAST_KERNELS", None)
        else:
            os.environ["SALT_FAST_KERNELS"] = previous


def _optimizer_record(params: list[torch.nn.Parameter], assumptions: Assumptions) -> list[OpRecord]:
    """The fused AdamW (reads param, grad, two moments; writes param and moments: 28 bytes per fp32
    parameter) and autocast's per-step weight casts (fp32 read, bf16 written: 6 bytes per parameter)."""
    n = sum(p.numel() for p in params)
    multi = math.ceil(len(params) / assumptions.foreach_tensors)
    return [
        OpRecord("fused AdamW (modelled)", "optimizer", 0, 28 * n, multi),
        OpRecord("autocast weight casts (modelled)", "memory", 0, 6 * n, len(params)),
    ]


def trace_step(cfg: TrainConfig, kernels: str = "reference", assumptions: Assumptions = Assumptions()) -> list[OpRecord]:
    """Every op of one real ``train_step`` of ``cfg`` (its stage, models, batch, clip size and
    masks) traced on the meta device in bf16. ``kernels``: ``"reference"`` (PyTorch ops) or
    ``"triton"`` (salt_fast's fused kernels, which must be registered custom ops with declared
    costs to be traced: ``salt_fast.kernels.OP_COSTS``)."""
    stage = STAGES[cfg.stage]
    op_costs = {}
    if kernels == "triton":
        from salt_fast import kernels as k

        op_costs = getattr(k, "OP_COSTS", None)
        if not op_costs:
            raise NotImplementedError("the fused path needs salt_fast.kernels.OP_COSTS (kernels registered as custom ops)")
    with torch.device(_META):
        learner, teacher = stage.build(cfg.model, len(MASK_SETS[cfg.masking.configs]), load_teacher=False)
    learner.to(torch.bfloat16)
    if teacher is not None:
        teacher.to(torch.bfloat16)
    optimizer = build_optimizer([learner], fused=False)
    clip = (cfg.data.batch_size, learner.encoder.cfg.in_chans, cfg.data.frames, cfg.data.resolution, cfg.data.resolution)
    grid = learner.encoder.token_grid(clip)
    rt = Runtime(0, 1, _META, bf16=False)  # the weights are bf16 already (see the module docstring)
    run = Run(cfg, rt, stage, learner, learner, teacher, optimizer, grid)
    masks = masks_to(MaskSampler(grid, MASK_SETS[cfg.masking.configs], seed=0, truncation=cfg.masking.truncation)
                     .sample(cfg.data.batch_size, 0), _META)  # fmt: skip
    clips = torch.empty(clip, device=_META, dtype=torch.bfloat16)
    optimizer.step = lambda: None  # modelled below: the fused kernel has no meta implementation
    recorder = _Recorder(assumptions, op_costs)
    with _kernels(kernels), _gpu_attention(), recorder:
        train_step(run, clips, masks, 0)
    return recorder.ops + _optimizer_record(list(learner.parameters()), assumptions)


def _op_time(op: OpRecord, gpu: GPUSpec, a: Assumptions) -> float:
    """Roofline time of one op: compute-bound at its class's share of the peak (matmul and
    attention), else bandwidth-bound; plus its launches."""
    if op.kind == "matmul":
        compute = op.flops / (gpu.bf16_dense * a.matmul)
    elif op.kind == "attention":
        share = (a.attention_bwd if op.backward else a.attention_fwd) * min(1.0, op.head_dim / 64)
        compute = op.flops / (gpu.bf16_dense * share)
    else:  # elementwise, reductions, copies, the fused kernels, the optimizer: bandwidth-bound
        compute = 0.0
    return max(compute, op.bytes / (gpu.hbm_bandwidth * a.memory)) + op.launches * a.launch_s


def predict(ops: list[OpRecord], gpu: str | GPUSpec, batch_size: int, kernels: str = "reference",
            assumptions: Assumptions = Assumptions()) -> StepPrediction:  # fmt: skip
    """The step time the model predicts for ``ops`` on ``gpu`` (a key of ``GPUS`` or a spec)."""
    spec = GPUS[gpu] if isinstance(gpu, str) else gpu
    by_kind: dict[str, dict[str, float]] = defaultdict(lambda: {"s": 0.0, "flops": 0, "bytes": 0, "launches": 0})
    per_op: dict[str, dict[str, float]] = defaultdict(lambda: {"s": 0.0, "calls": 0, "flops": 0, "bytes": 0})
    for op in ops:
        t = _op_time(op, spec, assumptions)
        for entry, extra in ((by_kind[op.kind], {"launches": op.launches}), (per_op[op.name], {"calls": 1})):
            entry["s"] += t
            entry["flops"] += op.flops
            entry["bytes"] += op.bytes
            for key, value in extra.items():
                entry[key] += value
    step_s = sum(v["s"] for v in by_kind.values())
    flops = sum(op.flops for op in ops)
    top = sorted(({"op": name, **v} for name, v in per_op.items()), key=lambda r: -r["s"])[:10]
    return StepPrediction(
        gpu=spec.name, kernels=kernels, batch_size=batch_size, step_s=step_s, clips_per_s=batch_size / step_s,
        flops=flops, mfu=flops / step_s / spec.bf16_dense, launches=int(sum(op.launches for op in ops)),
        by_kind={k: dict(v) for k, v in by_kind.items()}, top_ops=top, assumptions=asdict(assumptions),
    )  # fmt: skip


def gpu_hours(prediction: StepPrediction, steps: int, global_batch: int = PAPER_BATCH) -> float:
    """GPU-hours of ``steps`` steps at ``global_batch`` clips from a per-GPU prediction: perfect
    data-parallel scaling, no data loading (as the paper's own extrapolation from timed steps)."""
    return steps * global_batch / prediction.clips_per_s / 3600
