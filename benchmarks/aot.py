"""Ahead-of-time compile report of the Triton kernels a training step launches, without a GPU.

Triton compiles for NVIDIA targets on a CPU-only machine (``triton.compile`` for a ``GPUTarget``
goes down to a cubin with the ``ptxas`` in the Triton wheel). This script compiles every kernel
specialization that a ViT-L training step launches, for sm_80, sm_90 and sm_100 by default,
and reports for each: registers, spilled bytes and stack (the ``ptxas -v`` log of that very
compile), shared memory, warps, global loads and stores by vector width (v4 / v2 / scalar:
16-byte, 8-byte and narrower instructions in the PTX, static counts per thread; every width in
bytes in the JSON), atomics, and any compile error.

    python benchmarks/aot.py [--arch 80 90 100] [--dtypes bf16 fp32] [--stages salt pixel vjepa]
                             [--truncation min pad] [--steps 1] [-v] [--refresh | --out PATH]

How the launches are found: the step is run, not described. ``runtime.build_run`` builds the
stage's models (ViT-L student and teacher, the default predictor) on the meta device, and
``runtime.train_step`` runs on meta clips ``[24, 3, 16, 224, 224]`` (grid 8x14x14) with both
multi-block masks of the step, sampled on the CPU by the run's ``MaskSampler`` and moved to
meta. ``use_triton`` answers True, as it does for CUDA tensors, the custom ops run their real
implementations on the meta tensors (``_dispatch.launch_on_meta``; not their fake ones), and
every ``@triton.jit`` kernel's ``run`` records its arguments and grid instead of launching. So
block sizes, warps and constexprs are the wrappers' own choices for those shapes, forward and
backward, with ``_dispatch.INTERPRETED`` False (the GPU's choices, not the interpreter's: run
this as a script, it unsets ``TRITON_INTERPRET``). RoPE's heads per program depend on the GPU's SM count
(``--sms``, 132: an H100 / H200). The step ends at the first thing meta tensors cannot do (today
AdamW's update; recorded in the JSON, printed with ``-v``), which must come after the backward:
every trainable parameter has its gradient, else the run fails. Grad clipping, AdamW and the EMA
launch no Triton kernels. Specialization is Triton's own binder on the recorded arguments, as the
JIT does it: tensors are stand-ins with a 16-byte aligned base address (CUDA allocations are) plus
their storage offset, so divisibility by 16 and stride-1 specialization come out as on the GPU.

Precision: bf16 autocast is the GPU default. Autocast has no meta backend, so :class:`CudaAutocast`
applies CUDA autocast's casting policy (ATen's ``autocast_mode.h`` lists; an op CUDA autocast
handles but the emulation does not know stops the run) to the step's torch calls. fp32 is the
step without autocast.

Writes ``aot_<triton version>.json`` into benchmarks/results/local/ (--refresh: the committed
benchmarks/results/): results depend on the Triton version that compiled them, recorded in the
file and on every row. The GPU machines run Triton 3.6; for its results, put a 3.6 install first
on the path: ``pip install --no-deps --target DIR triton==3.6.0; PYTHONPATH=DIR python benchmarks/aot.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import re
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

if __name__ == "__main__":
    # Before salt_fast.kernels is imported: compiled (not interpreted) kernels and the GPU's launch
    # choices; SALT_FAST_KERNELS=triton would turn the interpreter on. FP fusion as Triton <= 3.9
    # (and the GPU machines' 3.6) default to, without 3.9's warning about it.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["SALT_FAST_KERNELS"] = "auto"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._pytree import tree_flatten, tree_map  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast import runtime  # noqa: E402
from salt_fast.config import load_config  # noqa: E402
from salt_fast.kernels import _dispatch, rope3d  # noqa: E402
from salt_fast.masking import MASK_SETS, MaskSampler  # noqa: E402
from salt_fast.stages import STAGES  # noqa: E402

ARCHS = (80, 90, 100)
PRECISIONS = ("bf16", "fp32")
MODEL = {"encoder": "vit_l", "teacher": "vit_l", "frames": 16, "resolution": 224}  # 8 x 14 x 14 tokens
BASE_ADDRESS = 1 << 32  # of every tensor argument: 16-byte aligned, as CUDA allocations are


# --------------------------------------------------------------------------------------------
# CUDA autocast on the meta device
# --------------------------------------------------------------------------------------------

# CUDA autocast's op lists (ATen/autocast_mode.h, torch 2.13), by aten name. To lower precision:
LOWER_PRECISION = frozenset({
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv",
    "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention", "cudnn_convolution",
    "cudnn_convolution_transpose",
})  # fmt: skip
# To fp32 (with the ops that get an fp32 ``dtype=`` instead, and norm):
FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "rms_norm", "group_norm", "frobenius_norm",
    "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
    "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp", "upsample_nearest1d",
    "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d", "upsample_nearest3d",
    "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d", "_upsample_bilinear2d_aa",
    "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa", "prod", "softmax", "log_softmax",
    "cumprod", "cumsum", "linalg_vector_norm", "linalg_matrix_norm", "sum", "norm",
})  # fmt: skip
# To the widest floating type among the inputs:
PROMOTE = frozenset({"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
                     "tensordot", "scatter_add"})  # fmt: skip
BANNED = frozenset({"binary_cross_entropy"})  # CUDA autocast raises
_DUNDERS = {"__matmul__": "matmul", "__rmatmul__": "matmul", "__pow__": "pow", "__rpow__": "pow",
            "__rtruediv__": "reciprocal", "__rdiv__": "reciprocal"}  # fmt: skip


def autocast_cuda_ops() -> frozenset[str]:
    """Names of the aten ops that have a CUDA autocast kernel in the installed torch."""
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    names = torch._C._dispatch_get_all_op_names()
    return frozenset(n[6:].split(".")[0] for n in names if n.startswith("aten::") and has_kernel(n, "AutocastCUDA"))


def _aten_name(func) -> str:
    name = getattr(func, "__name__", "")
    return _DUNDERS.get(name, name)


def _castable(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class CudaAutocast(TorchFunctionMode):
    """``torch.autocast("cuda", dtype)`` for tensors on any device (here: meta).

    The same casts as CUDA autocast, recorded by autograd the same way (a ``.to`` before the op),
    for the ops on its lists. Autocast works per aten op; this works per torch call (``F.linear``,
    ``F.layer_norm``, ``Tensor.sum`` ...), named like the aten op they run. A call that CUDA
    autocast has a kernel for but that is on no list raises, so the two cannot silently differ;
    Python-level torch functions run whole and uncast (autocast would see the ops inside them):
    their names are collected in ``unseen``. ``calls`` counts the casts by op and dtype.
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16, calls: dict | None = None,
                 unseen: set | None = None) -> None:  # fmt: skip
        super().__init__()
        self.dtype = dtype
        self.calls = {} if calls is None else calls
        self.unseen = set() if unseen is None else unseen
        self.autocast_ops = autocast_cuda_ops()

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _aten_name(func)
        if name in LOWER_PRECISION:
            to = self.dtype
        elif name in FP32:
            to = torch.float32
        elif name in PROMOTE:
            floats = {t.dtype for t in tree_flatten((args, kwargs))[0] if _castable(t)}
            to = torch.float32 if torch.float32 in floats else self.dtype
        elif name in BANNED or name in self.autocast_ops:
            raise NotImplementedError(f"CudaAutocast: no policy for {name!r}, which CUDA autocast handles")
        else:
            if isinstance(func, types.FunctionType):
                self.unseen.add(f"{func.__module__}.{func.__qualname__}")
            return func(*args, **kwargs)
        explicit = kwargs.get("dtype") is not None or kwargs.get("out") is not None  # not autocast
        if explicit or not any(_castable(t) for t in tree_flatten((args, kwargs))[0]):
            return func(*args, **kwargs)
        key = f"{name}->{str(to).removeprefix('torch.')}"
        self.calls[key] = self.calls.get(key, 0) + 1

        def cast(t):
            return t.to(to) if _castable(t) else t

        return func(*tree_map(cast, args), **tree_map(cast, kwargs))


# --------------------------------------------------------------------------------------------
# Recording the launches of a step
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pointer:
    """A tensor argument as Triton's binder sees it: a dtype and an address (base + offset)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # elements

    @classmethod
    def of(cls, t: torch.Tensor) -> Pointer:
        return cls(t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset())

    def data_ptr(self) -> int:
        return BASE_ADDRESS + self.offset * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')}{list(self.shape)}"


@dataclass
class Launch:
    """One ``kernel[grid](*args, **kwargs)`` of a step, tensors as :class:`Pointer` s."""

    kernel: object  # a triton JITFunction
    args: tuple
    kwargs: dict
    grid: tuple
    where: str  # "<stage> <precision> <truncation> fwd|bwd"


@dataclass
class MetaRuntime(runtime.Runtime):
    """A :class:`~salt_fast.runtime.Runtime` whose bf16 autocast is :class:`CudaAutocast`."""

    autocast_calls: dict = field(default_factory=dict)
    autocast_unseen: set = field(default_factory=set)

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return CudaAutocast(torch.bfloat16, self.autocast_calls, self.autocast_unseen)


@contextmanager
def recording(launches: list[Launch], label: str, sms: int) -> Iterator[None]:
    """Within: kernel launches are appended to ``launches`` (labelled ``label``) instead of run,
    and the wrappers take their Triton path, with the GPU's launch choices, on any device."""
    if _dispatch.triton is None:
        raise RuntimeError("Triton is not installed")
    if _dispatch.INTERPRETED:
        raise RuntimeError("the kernels are interpreted (TRITON_INTERPRET=1 when salt_fast.kernels was imported): "
                           "run benchmarks/aot.py as a script")  # fmt: skip

    def recorder(kernel):
        def run(*args, grid, warmup, **kwargs):
            phase = "bwd" if torch._C._current_autograd_node() is not None else "fwd"
            pointers = tuple(Pointer.of(a) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: Pointer.of(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            launches.append(Launch(kernel, pointers, kwargs, tuple(grid), f"{label} {phase}"))

        return run

    use_triton, launch_config = _dispatch.use_triton, rope3d._launch_config

    def rope_config_on_gpu(batch, n_tokens, heads, block_p, device):  # (it keys its choice on CUDA tensors)
        return launch_config(batch, n_tokens, heads, block_p, torch.device("cuda", 0))

    with contextlib.ExitStack() as stack:
        for kernel in _dispatch._KERNELS:
            stack.enter_context(mock.patch.object(kernel, "run", recorder(kernel)))
        for module in [m for name, m in sys.modules.items() if name.startswith("salt_fast") and m is not None]:
            if getattr(module, "use_triton", None) is use_triton:  # the module-level references too
                stack.enter_context(mock.patch.object(module, "use_triton", lambda *tensors: True))
        stack.enter_context(_dispatch.launch_on_meta())  # the ops' real implementations, not their fake ones
        stack.enter_context(mock.patch.object(rope3d, "_sm_count", lambda device: sms))
        stack.enter_context(mock.patch.object(rope3d, "_launch_config", rope_config_on_gpu))
        yield


def trace(stage: str, precision: str, truncations: list[str], batch: int, sms: int,
          steps: int = 1) -> tuple[list[Launch], list[dict]]:  # fmt: skip
    """Run training steps ``0 .. steps-1`` of ``stage`` on the meta device for each mask
    truncation policy, recording their kernel launches. Returns the launches and, per
    truncation, what the steps did (masks, autocast casts, where they stopped)."""
    cfg = load_config(None, [
        f"stage={stage}", f"model.encoder={MODEL['encoder']}", f"model.teacher={MODEL['teacher']}",
        f"data.batch_size={batch}", f"data.frames={MODEL['frames']}", f"data.resolution={MODEL['resolution']}",
        f"runtime.precision={precision}", "runtime.kernels=auto",
    ])  # fmt: skip
    meta = torch.device("meta")
    rt = MetaRuntime(rank=0, world_size=1, device=meta, bf16=precision == "bf16")
    with torch.device(meta):
        run = runtime.build_run(cfg, rt, load_teacher=False)
    shape = (batch, run.learner.encoder.cfg.in_chans, MODEL["frames"], MODEL["resolution"], MODEL["resolution"])
    clips = torch.empty(shape, device=meta)
    launches: list[Launch] = []
    infos = []
    for truncation in truncations:
        sampler = MaskSampler(run.grid, MASK_SETS[cfg.masking.configs], seed=cfg.seed, truncation=truncation)
        rt.autocast_calls.clear()
        rt.autocast_unseen.clear()
        stopped, masks = [], []
        for step in range(steps):
            masks = sampler.sample(batch, step)
            run.optimizer.zero_grad(set_to_none=True)  # (a gradient below then comes from this step's backward)
            with recording(launches, f"{stage} {precision} {truncation}", sms):
                try:
                    runtime.train_step(run, clips, runtime.masks_to(masks, meta), step)
                except Exception as exc:  # noqa: BLE001 - expected once the backward is done
                    if any(p.grad is None for p in run.learner.parameters() if p.requires_grad):
                        raise  # before or during the backward: a real failure
                    frame = inspect.trace()[-1]
                    stopped.append(f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}: {exc}")
        infos.append({
            "stage": stage, "precision": precision, "truncation": truncation, "steps": steps, "grid": list(run.grid),
            "masks_of_last_step": [{"context": list(m.context.shape), "target": list(m.target.shape)} for m in masks],
            "autocast_casts": dict(sorted(rt.autocast_calls.items())),
            "autocast_unseen": sorted(rt.autocast_unseen),
            "stopped_after_backward": sorted(set(stopped)),
        })  # fmt: skip
    return launches, infos


# --------------------------------------------------------------------------------------------
# Specialization and compilation
# --------------------------------------------------------------------------------------------


@dataclass
class Specialization:
    """One variant of a kernel the JIT would compile for one target, and the launches that need it."""

    kernel: object  # a triton JITFunction
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: object  # the backend's options (CUDAOptions)
    where: list[str] = field(default_factory=list)
    grids: list[tuple] = field(default_factory=list)
    launches: int = 0


def _jit_kwargs(kernel, kwargs: dict) -> dict:
    """A launch's keyword arguments plus the options ``JITFunction.run`` adds."""
    from triton import knobs

    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # the second: Triton >= 3.7
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    return kwargs


def specialize(launches: list[Launch], archs: list[int]) -> list[Specialization]:
    """The distinct specializations of ``launches`` per target, by Triton's own binder."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    found: dict[tuple, Specialization] = {}
    for arch in archs:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        binders = {}
        for launch in launches:
            kernel = launch.kernel
            if kernel not in binders:
                binders[kernel] = create_function_from_signature(kernel.signature, kernel.params, backend)
            kwargs = _jit_kwargs(kernel, launch.kwargs)
            bound, spec, opts = binders[kernel](*launch.args, **kwargs)
            options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
            key = (kernel.__name__, arch, repr(spec), options.hash())
            s = found.setdefault(key, Specialization(kernel, arch, signature, constexprs, attrs, options))
            s.launches += 1
            if launch.where not in s.where:
                s.where.append(launch.where)
            if launch.grid not in s.grids:
                s.grids.append(launch.grid)
    return list(found.values())


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def ptxas_usage(log: str) -> dict:
    """Registers, spilled bytes and stack frame from a ``ptxas -v`` log of one kernel."""
    found = {name: pattern.search(log) for name, pattern in _PTXAS.items()}
    return {name: int(m.group(1)) if m else None for name, m in found.items()}


_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.:]*)\s+([^;]*);", re.M)
_GLOBAL_ARRAY = re.compile(r"^\s*\.global\s+(?:\.\w+\s+\d*\s*)*([A-Za-z_$][\w$]*)\s*[\[=;]", re.M)
_ELEMENT_BITS = re.compile(r"^[bsuf](8|16|32|64)$")
WIDTHS = (16, 8, 4, 2, 1)  # bytes per access


def ptx_memory_ops(ptx: str) -> dict:
    """Global memory instructions of Triton's PTX, static counts per thread.

    ``ld`` / ``st``: ``{bytes per access: count}`` (a ``v4.b32`` moves 16; ``cp.async`` counts as
    a load of its size); ``atomics``: ``atom`` and ``red``; ``table``: loads from the PTX's own
    global arrays (libdevice's sin/cos argument-reduction table, read only for huge arguments),
    which are not data streams and are left out of ``ld``."""
    arrays = set(_GLOBAL_ARRAY.findall(ptx))
    into_arrays: set[str] = set()  # registers holding an address inside one of them
    counts = {"ld": dict.fromkeys(WIDTHS, 0), "st": dict.fromkeys(WIDTHS, 0), "atomics": 0, "table": 0}
    for opcode, operands in _INSTRUCTION.findall(ptx):
        parts = opcode.split(".")
        registers = re.findall(r"%\w+", operands)
        if parts[0] in ("atom", "red"):
            counts["atomics"] += 1
        elif parts[0] in ("ld", "st") and "global" in parts:
            address = re.search(r"\[\s*(%\w+)", operands)
            if parts[0] == "ld" and address and address.group(1) in into_arrays:
                counts["table"] += 1
                continue
            lanes = next((int(p[1:]) for p in parts if p in ("v2", "v4", "v8")), 1)
            bits = next((int(m.group(1)) for p in parts if (m := _ELEMENT_BITS.match(p))), 32)
            width = lanes * bits // 8
            counts[parts[0]][width] = counts[parts[0]].get(width, 0) + 1
        elif parts[0] == "cp" and "async" in parts and "global" in opcode:
            size = re.search(r",\s*(0x[0-9a-fA-F]+|\d+)\s*(?:,|$)", operands)  # cp-size: 4, 8 or 16
            counts["ld"][int(size.group(1), 0) if size else 16] += 1
        elif registers and (any(a in operands for a in arrays) or into_arrays.intersection(registers[1:])):
            into_arrays.add(registers[0])  # the destination of address arithmetic on an array
    return counts


def vector_classes(widths: dict) -> dict:
    """``{v4, v2, scalar}``: 16-byte, 8-byte and narrower accesses."""
    return {"v4": widths.get(16, 0), "v2": widths.get(8, 0), "scalar": sum(n for w, n in widths.items() if w < 8)}


def compile_specialization(s: Specialization) -> dict:
    """Compile ``s`` with ``triton.compile`` (never from a cache) and measure the result."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    result: dict = {"ok": False, "error": None}
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="aot_cache_") as cache, knobs.nvidia.scope(), knobs.compilation.scope():
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints its ptxas -v log: registers, spills
        knobs.compilation.always_compile = True
        saved_cache, knobs.cache.dir = knobs.cache.dir, cache
        try:
            with contextlib.redirect_stdout(log):  # (on a ptxas failure Triton prints the whole PTX)
                source = ASTSource(s.kernel, s.signature, s.constexprs, s.attrs)
                compiled = triton.compile(source, target=GPUTarget("cuda", s.arch, 32), options=s.options.__dict__)
        except Exception as exc:  # noqa: BLE001 - a failure is a result
            lines = [line for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
            result["error"] = "\n".join(lines if len(lines) <= 16 else lines[:8] + ["..."] + lines[-6:])
        else:
            memory = ptx_memory_ops(compiled.asm["ptx"])
            result.update(
                ok=True, **ptxas_usage(log.getvalue()), shared=compiled.metadata.shared,
                warps=compiled.metadata.num_warps, stages=compiled.metadata.num_stages,
                loads={**vector_classes(memory["ld"]), "bytes": {w: n for w, n in memory["ld"].items() if n}},
                stores={**vector_classes(memory["st"]), "bytes": {w: n for w, n in memory["st"].items() if n}},
                atomics=memory["atomics"], table_loads=memory["table"], cubin_bytes=len(compiled.asm["cubin"]),
            )  # fmt: skip
        finally:
            knobs.cache.dir = saved_cache
    result["compile_s"] = round(time.perf_counter() - start, 2)
    return result


_PENDING: list[Specialization] = []  # what forked compile workers read (kernels do not pickle)


def _compile_pending(index: int) -> dict:
    return compile_specialization(_PENDING[index])


def compile_all(specs: list[Specialization], jobs: int = 1) -> list[dict]:
    """:func:`compile_specialization` of each, in ``jobs`` forked processes."""
    global _PENDING
    if jobs <= 1 or len(specs) < 2:
        return [compile_specialization(s) for s in specs]
    import concurrent.futures
    import multiprocessing

    _PENDING = specs
    try:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_compile_pending, range(len(specs))))
    finally:
        _PENDING = []


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _plain(value):
    """A constexpr as JSON: Triton dtypes by name (``fp32``), the rest as is."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else value


def describe(s: Specialization) -> dict:
    """What tells a specialization apart, readably: dtypes, constexprs, specialized arguments."""
    names, params = s.kernel.arg_names, s.kernel.params
    pointers = [t[1:] for t in s.signature.values() if isinstance(t, str) and t.startswith("*")]
    divisible = [names[p[0]] for p, attrs in sorted(s.attrs.items()) if attrs]  # tt.divisibility = 16
    sizes = [names[i] for i, t in enumerate(s.signature.values()) if t in ("i32", "i64") and "stride" not in names[i]]
    return {
        "kernel": s.kernel.__name__,
        "arch": s.arch,
        "dtypes": "/".join(dict.fromkeys(pointers)),
        "constexprs": {names[p[0]]: _plain(v) for p, v in sorted(s.constexprs.items()) if params[p[0]].is_constexpr},
        "divisible_by_16": " ".join(divisible),
        "sizes_divisible_by_16": " ".join(n for n in divisible if n in sizes),  # the ones that vary with the masks
        "equal_to_1_or_none": " ".join(names[p[0]] for p in sorted(s.constexprs) if not params[p[0]].is_constexpr),
        "launches": s.launches,
        "where": s.where,
        "grids": ", ".join("x".join(map(str, g)) for g in s.grids[:4]),
    }


def failures(record: dict) -> list[str]:
    """One line per specialization of ``record`` (the JSON) that did not compile."""
    return [f"sm_{r['arch']} {r['kernel']} {r['dtypes']} {r['constexprs']}: {r['error']}"
            for r in record["results"] if not r["ok"]]  # fmt: skip


def table(results: list[dict]) -> str:
    """The printed table: one row per specialization and target."""
    head = (f"{'arch':<6} {'kernel':<24} {'dtypes':<16} {'regs':>4} {'spill':>7} {'smem':>6} {'warps':>5} "
            f"{'ld v4/v2/s':>11} {'st v4/v2/s':>11} {'atom':>4}  constexprs  16|sizes divisible by 16"
            " | where")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        start = f"sm_{r['arch']:<3} {r['kernel']:<24} {r['dtypes']:<16}"
        consts = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in r["constexprs"].items())
        consts += f"  16|{r['sizes_divisible_by_16'].replace(' ', ',')}" if r["sizes_divisible_by_16"] else ""
        if not r["ok"]:
            lines.append(f"{start} FAILED  {consts} | {_where(r['where'])}\n    " + r["error"].replace("\n", "\n    "))
            continue
        ld, st = r["loads"], r["stores"]
        spill = f"{r['spill_stores']:>3}/{r['spill_loads']:<3}"
        lines.append(
            f"{start} {r['registers']:>4} {spill} {r['shared']:>6} {r['warps']:>5} "
            f"{ld['v4']:>3}/{ld['v2']}/{ld['scalar']:<5} {st['v4']:>3}/{st['v2']}/{st['scalar']:<5} {r['atomics']:>4}"
            f"  {consts} | {_where(r['where'])}"
        )
    return "\n".join(lines)


def _where(labels: list[str]) -> str:
    """``["salt bf16 min fwd", "pixel bf16 min bwd"]`` -> ``"salt,pixel bf16 min fwd+bwd"`` (each word's values)."""
    words = [label.split() for label in labels]
    columns = [list(dict.fromkeys(w[i] for w in words)) for i in range(len(words[0]))] if words else []
    return " ".join(("+" if i == len(columns) - 1 else ",").join(c) for i, c in enumerate(columns))


def _kernel_names(kernels) -> list[str]:
    """Those of ``kernels`` that are launched as ``name[grid]`` somewhere (not ``@jit`` helpers)."""
    found = []
    for kernel in kernels:
        source = inspect.getsource(sys.modules[kernel.fn.__module__])
        if re.search(rf"\b{re.escape(kernel.__name__)}\s*\[", source):
            found.append(kernel.__name__)
    return sorted(found)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities to compile for")
    parser.add_argument("--dtypes", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                        help="the step's precision: bf16 autocast (the GPU default), fp32")  # fmt: skip
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES), help="training stages")
    parser.add_argument("--truncation", nargs="+", default=["min", "pad"], choices=["min", "random", "pad"],
                        help="mask truncation (min: the default; pad: the kernels' valid-mask variants)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=1,
                        help="steps traced per setting (mask sizes vary by step, and with them which sizes "
                             "are divisible by 16)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=24, help="clips per GPU")
    parser.add_argument("--sms", type=int, default=132, help="SM count for RoPE's launch choice (H100 / H200: 132)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes compiling")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print every launch and what the trace did")
    add_output_args(parser, "aot_<triton version>.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    import triton

    args = build_parser().parse_args(argv)
    version = triton.__version__
    print(f"Triton {version} compiles everything below (the GPU machines run 3.6); torch {torch.__version__}")
    start = time.perf_counter()
    launches: list[Launch] = []
    steps: list[dict] = []
    for stage in args.stages:
        for precision in args.dtypes:
            t0 = time.perf_counter()
            found, infos = trace(stage, precision, args.truncation, args.batch, args.sms, args.steps)
            launches += found
            steps += infos
            targets = [[m["target"][1] for m in i["masks_of_last_step"]] for i in infos]
            print(f"  traced {stage} {precision} ({', '.join(args.truncation)}; {args.steps} step(s)): "
                  f"{len(found)} launches in {time.perf_counter() - t0:.1f} s; targets per mask {targets}")  # fmt: skip
            if args.verbose:
                for info in infos:
                    print(f"    {info['truncation']}: autocast {info['autocast_casts']}, uncast Python functions "
                          f"{info['autocast_unseen']}; stopped: {info['stopped_after_backward']}")
    traced_s = time.perf_counter() - start
    if args.verbose:
        for launch in launches:
            print(f"  {launch.kernel.__name__}{list(launch.grid)} {launch.where}: {launch.args} {launch.kwargs}")
    specs = specialize(launches, args.arch)
    launched = {s.kernel.__name__ for s in specs}
    not_launched = [name for name in _kernel_names(_dispatch._KERNELS) if name not in launched]
    print(f"{len(launches)} launches of {len(launched)} kernels (traced in {traced_s:.1f} s) -> "
          f"{len(specs) // len(args.arch)} specializations per target")  # fmt: skip
    results, summary = [], {}
    for arch in args.arch:
        todo = [s for s in specs if s.arch == arch]
        t0 = time.perf_counter()
        measured = compile_all(todo, args.jobs)
        wall = time.perf_counter() - t0
        rows = [{**describe(s), "triton": version, **m} for s, m in zip(todo, measured)]
        rows.sort(key=lambda r: (r["kernel"], r["dtypes"], repr(r["constexprs"]), r["divisible_by_16"]))
        results += rows
        summary[f"sm_{arch}"] = {
            "specializations": len(rows), "failed": sum(not r["ok"] for r in rows),
            "spilling": sum(bool(r.get("spill_stores") or r.get("spill_loads")) for r in rows),
            "compile_wall_s": round(wall, 1), "compile_cpu_s": round(sum(r["compile_s"] for r in rows), 1),
        }  # fmt: skip
    print(table(results))
    for arch, s in summary.items():
        print(f"{arch}: {s['specializations'] - s['failed']}/{s['specializations']} compiled by Triton {version}, "
              f"{s['spilling']} spilling; {s['compile_wall_s']} s in {args.jobs} process(es)")  # fmt: skip
    if not_launched:
        print(f"kernels the step does not launch (not compiled): {', '.join(not_launched)}")
    record = {
        "benchmark": "aot",
        **environment(),
        "triton": version,
        "what": "Triton kernels of a training step compiled ahead of time on a CPU (Triton's compiler and the "
                "ptxas in its wheel); static properties of the code, no GPU ran anything",
        "inputs": {"archs": args.arch, "precisions": args.dtypes, "stages": args.stages, "truncation": args.truncation,
                   "steps": args.steps, "batch": args.batch, "sms": args.sms, **MODEL},
        "traced": steps,
        "trace_s": round(traced_s, 1),
        "summary": summary,
        "not_launched": not_launched,
        "results": results,
    }  # fmt: skip
    write_json(output_path(args, f"aot_{version}.json"), record)
    bad = failures(record)
    for line in bad:
        print(f"FAILED {line.splitlines()[0]}")
    if bad:
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main()
