"""Training throughput: real SALT / V-JEPA training steps on synthetic clips, one process.

    python benchmarks/throughput.py --model vit_l --teacher vit_l --stage salt --batch-size 24 \
        --steps 20 --resolution 224 --frames 16 [--compile] [--kernels triton|reference] \
        [--attention sdpa|flash_attn|xformers] [--checkpointing] [--compare]
    python benchmarks/throughput.py --model vit_tiny --teacher vit_tiny --depth 1 --batch-size 2 \
        --frames 4 --resolution 32 --steps 2          # CPU: checks the script, no claims

The models, optimizer and step are the training loop's (``salt_fast.runtime``): the config is
built with ``load_config`` from the flags, the models, wrap (activation checkpointing,
torch.compile) and optimizer with ``build_run`` (a ``salt`` teacher keeps its random init: same
shapes, same cost), and each step is ``train_step``. One step = [teacher forward, no grad] -> the
stage's loss for every mask configuration -> backward -> global-norm clip -> AdamW ->
[vjepa: EMA update], bf16 autocast on GPU, fp32 on CPU. Data loading is excluded, as in the
paper: the clips are random tensors already on the device and every step's masks are
sampled (by the training ``MaskSampler``) and moved to the device before the timed region.

Reported per GPU: clips/s (timed clips / total timed seconds), median step time, the exact
FLOPs of each step (``salt_fast.flops.step_flops`` with that step's real masks), achieved
TFLOP/s, MFU against the datasheet dense bf16 peak and against a measured bf16 matmul
ceiling (8192^3, GPU only), and peak memory.

Projected GPU-hours of the paper's run of this stage (global batch 3072; the stage's
``paper_steps``: 80k for ``pixel``, 160k for ``salt``, 240k for ``vjepa``; the salt teacher's
own Stage-1 run is a separate ``--stage pixel`` measurement):

    gpu_hours = paper_steps * 3072 / (clips/s per GPU) / 3600

i.e. perfect data-parallel scaling and no data-loading stalls, as the paper's extrapolation
from 20 timed steps assumes.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import triton
except ImportError:  # CPU-only installs: the kernels run their references
    triton = None

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast.config import load_config  # noqa: E402
from salt_fast.flops import GPUS, gpu_spec, peak_flops, step_flops  # noqa: E402
from salt_fast.perf_model import predict, trace_step  # noqa: E402
from salt_fast.kernels import KERNEL_CHOICES  # noqa: E402
from salt_fast.masking import MASK_SETS, MaskSampler  # noqa: E402
from salt_fast.models.vit import ATTENTION_BACKENDS  # noqa: E402
from salt_fast.runtime import build_run, masks_to, setup_runtime, train_step  # noqa: E402
from salt_fast.stages import PAPER_BATCH, STAGES  # noqa: E402

MATMUL_N = 8192
MODEL_GPUS = ("a100", "h100", "h200", "b200")
PREDICTED = "PREDICTED by the step model (salt_fast.perf_model), not measured"
SMALL_CPU_RUN = "--model vit_tiny --teacher vit_tiny --depth 2 --batch-size 2 --frames 4 --resolution 32 --steps 3"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--model", default="vit_l", help="encoder / student preset")
    p.add_argument("--teacher", default="vit_l", help="teacher preset (salt)")
    p.add_argument("--stage", default="salt", choices=tuple(STAGES), help="training stage whose step is timed")
    p.add_argument("--batch-size", type=int, default=24, help="clips per GPU per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 on GPU, 1 on CPU)")
    p.add_argument("--resolution", type=int, default=224, help="clip side in pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--compile", action="store_true", help="runtime.compile=true")
    p.add_argument("--kernels", default="auto", choices=KERNEL_CHOICES, help="runtime.kernels: Triton kernels or the PyTorch references")
    p.add_argument("--attention", default="sdpa", choices=ATTENTION_BACKENDS, help="attention backend")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--masking", default="multi_block", choices=tuple(MASK_SETS), help="mask configurations per step")
    p.add_argument("--depth", type=int, default=None, help="override encoder, teacher and predictor depth: CPU smoke runs (default: the presets')")
    p.add_argument("--compare", action="store_true",
                   help="also run --kernels reference --attention sdpa, when that is a different code path here")
    p.add_argument("--predict", nargs="+", choices=tuple(GPUS), default=None,
                   help="GPUs to print the step model's prediction for (default: this GPU; on a CPU machine: "
                   + " ".join(MODEL_GPUS) + ")")
    p.add_argument("--cpu-max-gflop", type=float, default=100.0,
                   help="on a CPU, time only steps of at most this many GFLOP; larger ones print the prediction")  # fmt: skip
    add_output_args(p, "throughput_<device>_<stage>_<model>.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1")
    return args


def make_config(args: argparse.Namespace, kernels: str, attention: str):
    overrides = [
        f"stage={args.stage}",
        f"model.encoder={args.model}",
        f"model.teacher={args.teacher}",
        f"model.attn_backend={attention}",
        f"runtime.kernels={kernels}",
        f"runtime.activation_checkpointing={str(args.checkpointing).lower()}",
        f"runtime.compile={str(args.compile).lower()}",
        f"data.frames={args.frames}",
        f"data.resolution={args.resolution}",
        f"data.batch_size={args.batch_size}",
        f"masking.configs={args.masking}",
    ]
    if args.depth is not None:
        overrides += [f"model.encoder_overrides.depth={args.depth}", f"model.teacher_overrides.depth={args.depth}",
                      f"model.predictor_overrides.depth={args.depth}"]
    return load_config(None, overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, n: int = MATMUL_N, reps: int = 20) -> float | None:
    """Measured dense bf16 matmul FLOP/s (n x n x n); None off CUDA."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    sync(device)
    seconds = start.elapsed_time(end) / 1e3 / reps
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds


def run_config(args: argparse.Namespace, kernels: str, attention: str, device: torch.device) -> dict:
    """Build the models as training does, run warm-up + timed steps; return the numbers."""
    cfg = make_config(args, kernels, attention)
    rt = setup_runtime(cfg.runtime)  # this device; bf16 autocast on a GPU; the kernels switch
    # A salt teacher keeps its random init: the cost of a Stage-1 teacher, not its quality.
    run = build_run(cfg, rt, load_teacher=False)
    learner, teacher = run.learner, run.teacher

    B, res, frames = args.batch_size, args.resolution, args.frames
    clip_shape = (B, learner.encoder.cfg.in_chans, frames, res, res)
    grid, n_all = run.grid, run.tokens_per_clip
    sampler = MaskSampler(grid, MASK_SETS[cfg.masking.configs], seed=0, truncation=cfg.masking.truncation)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    total = warmup + args.steps
    # Every step's masks sampled and on the device before anything is timed (data loading excluded).
    all_masks = [
        masks_to(sampler.sample(B, step), device) for step in range(total)
    ]
    clips = torch.randn(clip_shape, device=device)

    def step_fn(step: int) -> None:  # exactly the training loop's step
        train_step(run, clips, all_masks[step], step)

    t_warm = time.perf_counter()
    for step in range(warmup):
        step_fn(step)
    sync(device)
    warmup_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times_ms: list[float] = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.steps)]
        for i, step in enumerate(range(warmup, total)):
            events[i][0].record()
            step_fn(step)
            events[i][1].record()
        sync(device)
        times_ms = [s.elapsed_time(e) for s, e in events]
    else:
        for step in range(warmup, total):
            t0 = time.perf_counter()
            step_fn(step)
            times_ms.append(1e3 * (time.perf_counter() - t0))

    flops = [step_flops(learner.encoder, learner.head, all_masks[s], n_all, teacher) for s in range(warmup, total)]
    seconds = sum(times_ms) / 1e3
    clips_per_s = B * args.steps / seconds
    achieved = sum(flops) / seconds
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    paper_steps = STAGES[args.stage].paper_steps
    result = {
        "kernels": kernels,
        "attention": attention,
        "grid": list(grid),
        "tokens_per_clip": n_all,
        "context_tokens": [[int(m.context.shape[1]) for m in all_masks[s]] for s in range(warmup, total)],
        "target_tokens": [[int(m.target.shape[1]) for m in all_masks[s]] for s in range(warmup, total)],
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "timed_steps": args.steps,
        "step_ms": times_ms,
        "median_step_ms": statistics.median(times_ms),
        "mean_step_ms": seconds * 1e3 / args.steps,
        "clips_per_s": clips_per_s,
        "flops_per_step": sum(flops) / len(flops),
        "flops_per_step_each": flops,
        "tflops_per_s": achieved / 1e12,
        "peak_memory_mb": peak_mem,
        "paper_steps": paper_steps,
        "paper_batch": PAPER_BATCH,
        "gpu_hours_projected": paper_steps * PAPER_BATCH / clips_per_s / 3600,
        "full_run_flops_exact": paper_steps * PAPER_BATCH * sum(flops) / (B * len(flops)),
        "params": {
            "encoder": sum(p.numel() for p in learner.encoder.parameters()),
            "head": sum(p.numel() for p in learner.head.parameters()),
            "teacher": sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0,
        },
    }
    return result


def release(device: torch.device) -> None:
    """Free the previous configuration's models and optimizer state before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_mfu(result: dict, datasheet: float | None, ceiling: float | None) -> None:
    achieved = result["tflops_per_s"] * 1e12
    result["mfu_datasheet"] = achieved / datasheet if datasheet else None
    result["mfu_matmul_ceiling"] = achieved / ceiling if ceiling else None


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or a dash of the same width for a missing value."""
    return format(value, spec) if value is not None else format("-", ">" + spec.split(".")[0])


def print_table(args: argparse.Namespace, runs: list[dict]) -> None:
    print(f"\n{args.stage} | {args.model}" + (f" (teacher {args.teacher})" if STAGES[args.stage].loads_teacher else "")
          + f" | batch {args.batch_size} x {args.frames}f x {args.resolution}px | {args.steps} timed steps"
          + (" | compile" if args.compile else "") + (" | act. ckpt" if args.checkpointing else ""))  # fmt: skip
    head = f"{'kernels':>9} {'attention':>10} {'clips/s':>9} {'med ms':>9} {'GFLOP/step':>11} {'TFLOP/s':>8} " \
           f"{'MFU sheet':>9} {'MFU mm':>7} {'peak MiB':>9} {'GPU-h':>9}"  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in runs:
        print(
            f"{r['kernels']:>9} {r['attention']:>10} {r['clips_per_s']:9.2f} {r['median_step_ms']:9.1f} "
            f"{r['flops_per_step'] / 1e9:11.1f} {r['tflops_per_s']:8.2f} {fmt(r['mfu_datasheet'], '9.1%')} "
            f"{fmt(r['mfu_matmul_ceiling'], '7.1%')} {fmt(r['peak_memory_mb'], '9.0f')} {r['gpu_hours_projected']:9.0f}"
        )
    r = runs[0]
    print(f"GPU-hours = {r['paper_steps']} steps x {PAPER_BATCH} clips / (clips/s per GPU) / 3600 "
          f"(paper's {args.stage} run, perfect scaling, data loading excluded)")  # fmt: skip


def code_path(kernels: str, attention: str, device: torch.device) -> tuple[str, str]:
    """What a run actually executes: (``triton`` | ``reference`` kernels, attention backend)."""
    with_triton = kernels == "triton" or (kernels == "auto" and device.type == "cuda" and triton is not None)
    return ("triton" if with_triton else "reference", attention)


def model_predictions(args: argparse.Namespace, gpus: list[str]) -> tuple[int, list[dict]]:
    """The exact FLOPs of one step (meta-device trace) and the step model's prediction per GPU,
    for the fused path where it can be traced, else the reference path."""
    cfg = make_config(args, args.kernels, args.attention)
    for kernels in ("triton", "reference"):
        try:
            ops = trace_step(cfg, kernels)
            break
        except NotImplementedError:
            continue
    preds = [predict(ops, gpu, args.batch_size, kernels) for gpu in gpus]
    return sum(op.flops for op in ops if op.kind != "optimizer"), [{"label": PREDICTED, **p.__dict__} for p in preds]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    spec = gpu_spec(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    gpus = args.predict or ([k for k, v in GPUS.items() if v is spec] if spec else list(MODEL_GPUS))
    flops, predictions = model_predictions(args, gpus)
    for p in predictions:
        print(f"{p['gpu']:>5} ({p['kernels']} kernels): {p['step_s'] * 1e3:.1f} ms/step, {p['clips_per_s']:.1f} clips/s, "
              f"MFU {p['mfu']:.1%}  [{PREDICTED}]")  # fmt: skip
    record = {
        "benchmark": "throughput", **environment(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "flops_per_step_exact": flops, "predictions": predictions,
    }  # fmt: skip
    slug = "cpu" if device.type != "cuda" else torch.cuda.get_device_name(device).replace(" ", "_")
    out = output_path(args, f"throughput_{slug}_{args.stage}_{args.model}.json")
    if device.type != "cuda" and flops > args.cpu_max_gflop * 1e9:
        print(f"\n{flops / 1e9:,.0f} GFLOP per step: not timed on this CPU (over --cpu-max-gflop {args.cpu_max_gflop:g}); "
              "the lines above are the step model's prediction, not a measurement. To time a small configuration here:\n"
              f"  python benchmarks/throughput.py {SMALL_CPU_RUN}")  # fmt: skip
        record["note"] = "CPU machine: not timed (too large); predictions only"
        write_json(out, record)
        return record

    datasheet = peak_flops(device)
    ceiling = matmul_ceiling(device)
    runs = [run_config(args, args.kernels, args.attention, device)]
    paths = [code_path(args.kernels, args.attention, device), code_path("reference", "sdpa", device)]
    if args.compare and paths[0] == paths[1]:
        print(f"--compare: both runs would take the same code path ({paths[0][0]} kernels, {paths[0][1]} attention) "
              "on this machine: no speedup to report")  # fmt: skip
        record["compare"] = f"same code path ({paths[0][0]} kernels, {paths[0][1]} attention): not compared"
    elif args.compare:
        release(device)
        runs.append(run_config(args, "reference", "sdpa", device))
    for r in runs:
        add_mfu(r, datasheet, ceiling)
    print_table(args, runs)
    record.update({
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "code_path": list(paths[0]),
        "peak_bf16_datasheet_flops": datasheet,
        "matmul_ceiling_flops": ceiling,
        "matmul_ceiling_shape": [MATMUL_N] * 3 if ceiling else None,
        "gpu_hours_formula": "paper_steps * 3072 / clips_per_s / 3600 (paper_steps: "
        + ", ".join(f"{name} {stage.paper_steps // 1000}k" for name, stage in STAGES.items()) + ")",
        "result": runs[0],
    })  # fmt: skip
    if len(runs) > 1:
        record["baseline"] = runs[1]
        record["speedup_vs_reference_sdpa"] = runs[0]["clips_per_s"] / runs[1]["clips_per_s"]
        print(f"speedup vs --kernels reference --attention sdpa: {record['speedup_vs_reference_sdpa']:.2f}x")
    if device.type != "cuda":
        record["note"] = "CPU run: checks the script, not a throughput claim"
        print("note: CPU numbers are for checking the script, not for claims")
    write_json(out, record)
    return record


if __name__ == "__main__":
    main()
