"""The step model's prediction of GPU step time, from an exact trace of a real training step.

    python benchmarks/roofline.py                               # ViT-L, every stage, A100/H100/H200/B200
    python benchmarks/roofline.py --model vit_g --stages salt --batch-size 16 --gpus h100

PREDICTED, NOT MEASURED: every number this prints comes from ``salt_fast.perf_model`` (one
``train_step`` traced on the meta device; each op's exact FLOPs and bytes turned into time with
datasheet ceilings and the stated efficiency assumptions; see that module's docstring). For each
stage and kernel path (the fused Triton kernels, where they can be traced, and the PyTorch
references, in the same run) and each GPU: step time, clips/s, MFU, kernel launches per step,
the time by op class and the ten costliest ops; then the GPU-hours of the paper's SALT ViT-L
run (an 80k-step Stage-1 teacher and a 160k-step student at global batch 3072) beside the
paper's measured 8,263 A100-hours (its Table 11).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast.config import load_config  # noqa: E402
from salt_fast.flops import GPUS  # noqa: E402
from salt_fast.masking import MASK_SETS  # noqa: E402
from salt_fast.models import ENCODER_PRESETS  # noqa: E402
from salt_fast.perf_model import Assumptions, gpu_hours, predict, trace_step  # noqa: E402
from salt_fast.stages import PAPER_BATCH, STAGES  # noqa: E402

PAPER_GPU_HOURS = {"salt vit_l (stage 1 + 2)": 8263, "stage 1 vit_l": 9062}  # the paper's Table 11, A100
MODEL_GPUS = ("a100", "h100", "h200", "b200")
LABEL = "PREDICTED by the step model (salt_fast.perf_model), not measured"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="vit_l", choices=tuple(ENCODER_PRESETS), help="encoder / student preset")
    p.add_argument("--teacher", default="vit_l", choices=tuple(ENCODER_PRESETS), help="teacher preset (salt)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=tuple(STAGES), help="stages whose step to model")
    p.add_argument("--batch-size", type=int, default=24, help="clips per GPU per step")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--resolution", type=int, default=224, help="clip side in pixels")
    p.add_argument("--masking", default="multi_block", choices=tuple(MASK_SETS), help="mask configurations per step")
    p.add_argument("--gpus", nargs="+", default=list(MODEL_GPUS), choices=tuple(GPUS), help="datasheet entries to predict for")
    p.add_argument("--top", type=int, default=10, help="costliest ops listed per prediction")
    add_output_args(p, "roofline_<model>.json", "predictions JSON")
    return p


def config(args: argparse.Namespace, stage: str, model: str | None = None):
    return load_config(None, [
        f"stage={stage}", f"model.encoder={model or args.model}", f"model.teacher={args.teacher}",
        f"data.batch_size={args.batch_size}", f"data.frames={args.frames}", f"data.resolution={args.resolution}",
        f"masking.configs={args.masking}",
    ])  # fmt: skip


_TRACES: dict[tuple, dict[str, list | str]] = {}


def kernel_paths(cfg) -> dict[str, list | str]:
    """Each kernel path's traced ops, or why it could not be traced (traced once per config)."""
    key = (cfg.stage, cfg.model.encoder, cfg.model.teacher, cfg.data.batch_size, cfg.data.frames, cfg.data.resolution,
           cfg.masking.configs)  # fmt: skip
    if key not in _TRACES:
        paths: dict[str, list | str] = {}
        for kernels in ("triton", "reference"):
            try:
                paths[kernels] = trace_step(cfg, kernels)
            except NotImplementedError as exc:
                paths[kernels] = str(exc)
        _TRACES[key] = paths
    return _TRACES[key]


def show(pred, top: int) -> None:
    print(f"  {pred.gpu:>5} {pred.kernels:>9}: step {pred.step_s * 1e3:8.1f} ms  {pred.clips_per_s:7.1f} clips/s  "
          f"MFU {pred.mfu:5.1%}  {pred.launches} launches")  # fmt: skip
    for kind, v in sorted(pred.by_kind.items(), key=lambda kv: -kv[1]["s"]):
        print(f"      {kind:9} {v['s'] * 1e3:8.1f} ms  {v['flops'] / 1e12:8.2f} TFLOP  {v['bytes'] / 1e9:8.2f} GB  {int(v['launches']):5d} launches")
    for op in pred.top_ops[:top]:
        print(f"      {op['s'] * 1e3:8.2f} ms  {op['calls']:4d}x  {op['op']}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    assumptions = Assumptions()
    print(LABEL)
    print(f"assumptions: {assumptions}")
    t0 = time.perf_counter()
    predictions = []
    for stage in args.stages:
        cfg = config(args, stage)
        print(f"\n{stage} | {args.model}" + (f" (teacher {args.teacher})" if STAGES[stage].loads_teacher else "")
              + f" | batch {args.batch_size} x {args.frames}f x {args.resolution}px")  # fmt: skip
        for kernels, ops in kernel_paths(cfg).items():
            if isinstance(ops, str):
                print(f"  {kernels}: not traced ({ops})")
                continue
            for gpu in args.gpus:
                pred = predict(ops, gpu, args.batch_size, kernels, assumptions)
                show(pred, args.top)
                predictions.append({"stage": stage, "model": args.model, **pred.__dict__})

    # The paper's SALT ViT-L run: Stage 1 (pixel, ViT-L) then Stage 2 (salt, ViT-L from a ViT-L teacher).
    paper_run = []
    for gpu in args.gpus:
        row = {"gpu": GPUS[gpu].name}
        for stage in ("pixel", "salt"):
            ops = kernel_paths(config(args, stage, "vit_l"))
            for kernels, traced in ops.items():
                if not isinstance(traced, str):
                    pred = predict(traced, gpu, args.batch_size, kernels, assumptions)
                    row[f"{stage}_{kernels}_hours"] = gpu_hours(pred, STAGES[stage].paper_steps)
        for kernels in ("triton", "reference"):
            if f"pixel_{kernels}_hours" in row:
                row[f"total_{kernels}_hours"] = row[f"pixel_{kernels}_hours"] + row[f"salt_{kernels}_hours"]
        paper_run.append(row)
    print(f"\nGPU-hours of the paper's SALT ViT-L run (Stage 1 80k + Stage 2 160k steps, batch {PAPER_BATCH}, "
          f"{args.batch_size} clips per GPU), {LABEL}; the paper measured {PAPER_GPU_HOURS['salt vit_l (stage 1 + 2)']} "
          "A100-hours (Table 11)")  # fmt: skip
    for row in paper_run:
        print("  " + "  ".join(f"{k} {v:,.0f}" if isinstance(v, float) else f"{v:>5}" for k, v in row.items()))
    record = {
        "benchmark": "roofline", "label": LABEL, **environment(), "args": {k: str(v) for k, v in vars(args).items()},
        "assumptions": assumptions.__dict__, "gpus": {g: GPUS[g].__dict__ for g in args.gpus},
        "predictions": predictions, "paper_salt_l_run": paper_run, "paper_gpu_hours_a100": PAPER_GPU_HOURS,
        "trace_s": time.perf_counter() - t0,
    }  # fmt: skip
    write_json(output_path(args, f"roofline_{args.model}.json"), record)
    return record


if __name__ == "__main__":
    main()
