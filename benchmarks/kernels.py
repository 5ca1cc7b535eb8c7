"""Kernel benchmark: each salt_fast op against its eager reference and torch.compile of it.

At the paper's shapes (16 x 224 x 224 clips -> 1568 tokens, per-GPU batch 24, bf16) for
ViT-L and ViT-g, with the context / target sizes that multi-block masks with "min"
truncation really give at that batch. For every op and implementation: median forward and
backward time, achieved GB/s (bytes the op must move, counted below) and its share of the
device's measured copy bandwidth, and peak memory of forward + backward. Every implementation is
first checked against the eager reference on the same input (forward output and input gradient;
bf16: within 2% of the largest value): the script exits with status 1 if one disagrees, so on a
GPU it is also the kernels' correctness test at the real shapes.

    python benchmarks/kernels.py                 # GPU: writes benchmarks/results/local/kernels_<device>.json
    python benchmarks/kernels.py --refresh       # GPU: the committed benchmarks/results/kernels_<device>.json
    python benchmarks/kernels.py --smoke         # CPU: tiny shapes, Triton interpreter, checks the script
                                                 # (writes nothing unless --out is given)

Implementations: "eager" = the op's PyTorch reference (for the latent loss also
"eager_unfused" = V-JEPA 2's LayerNorm over all tokens, then gather, then L1); "compiled" =
torch.compile of the reference; "triton" = the salt_fast kernel.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

if "--smoke" in sys.argv:  # the interpreter must be on before the kernels are defined
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast.kernels import latent_loss, masked_tokens, pixel_loss, rope3d  # noqa: E402
from salt_fast.masking import MaskSampler  # noqa: E402
from salt_fast.models import ENCODER_PRESETS, PREDICTOR_CONFIG  # noqa: E402

Fn = Callable[..., torch.Tensor]


@dataclass
class Case:
    """One op at one shape: implementations, inputs, and the bytes each direction must move."""

    op: str
    shape: str
    impls: dict[str, Fn]
    make_inputs: Callable[[], tuple]  # (differentiable input, *other args)
    fwd_bytes: int
    bwd_bytes: int


# ---------------------------------------------------------------- timing


def bench(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median milliseconds of ``fn``."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth in GB/s (read + write counted)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 22)
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device, reps=20)
    return 2 * src.numel() * 4 / (ms * 1e6)


def measure(case: Case, name: str, fn: Fn, device: torch.device, reps: int) -> dict:
    x, *rest = case.make_inputs()
    leaf = x.detach().requires_grad_(True)
    in_place = case.op.endswith("_")

    def forward() -> torch.Tensor:
        if in_place:  # its forward is the same with or without a graph; a leaf can't be modified in place
            with torch.no_grad():
                return fn(x, *rest)
        return fn(leaf, *rest)  # as in training: the fused losses write grad_pred here

    # clone(): in-place ops need a non-leaf input; CloneBackward passes the grad through for free.
    out = fn(leaf.clone(), *rest)
    grad_out = torch.randn_like(out) if out.dim() else torch.ones_like(out)
    fwd_ms = bench(forward, device, reps)
    bwd_ms = bench(partial(torch.autograd.grad, out, leaf, grad_out, retain_graph=True), device, reps)
    del out

    peak_mb = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = fn(leaf.clone(), *rest)
        torch.autograd.grad(y, leaf, grad_out)
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        del y
    return {
        "fwd_ms": fwd_ms,
        "bwd_ms": bwd_ms,
        "fwd_gbps": case.fwd_bytes / (fwd_ms * 1e6),
        "bwd_gbps": case.bwd_bytes / (bwd_ms * 1e6),
        "peak_mb": peak_mb,
    }


def agreement(case: Case, reference: Fn, fn: Fn, tol: float) -> dict:
    """The op against its eager reference on one input: the largest forward and input-gradient
    errors, relative to the reference's largest magnitude, and whether both are within ``tol``."""
    x, *rest = case.make_inputs()
    results = []
    for impl in (reference, fn):
        leaf = x.detach().clone().requires_grad_(True)
        out = impl(leaf.clone(), *rest)  # clone(): the in-place op may rotate its input
        torch.manual_seed(0)
        grad_out = torch.randn_like(out) if out.dim() else torch.ones_like(out)
        (grad,) = torch.autograd.grad(out, leaf, grad_out)
        results.append((out.detach().float(), grad.float()))
    (ref_out, ref_grad), (out, grad) = results
    fwd = ((out - ref_out).abs().max() / ref_out.abs().max().clamp_min(1e-12)).item()
    bwd = ((grad - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-12)).item()
    return {"fwd_rel_err": fwd, "bwd_rel_err": bwd, "ok": fwd <= tol and bwd <= tol}


# ---------------------------------------------------------------- the ops


def rope_reference(qkv: torch.Tensor, ids: torch.Tensor | None, grid, mode: str = "standard") -> torch.Tensor:
    """What eager code does: tables rebuilt per call, q and k rotated out of place, v re-packed."""
    cos, sin = rope3d.rope3d_cos_sin(ids, grid, qkv.shape[-1], mode, device=qkv.device)
    qk = rope3d.rope3d_rotate(qkv[:, :, :2].permute(2, 0, 3, 1, 4), cos, sin).permute(1, 3, 0, 2, 4)
    return torch.cat((qk, qkv[:, :, 2:]), dim=2)


def latent_unfused(pred: torch.Tensor, target: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """V-JEPA 2's way: LayerNorm over every teacher token, then gather, then L1."""
    normed = F.layer_norm(target.float(), target.shape[-1:])
    return (pred.float() - masked_tokens.gather_tokens_reference(normed, ids)).abs().mean()


def mask_sizes(grid, batch: int) -> dict[str, tuple[int, int]]:
    """(context, targets) kept per config after V-JEPA 2's "min" truncation, a real batch's worth."""
    masks = MaskSampler(grid, seed=0, truncation="min").sample(batch, 0)
    return {name: (m.context.shape[1], m.target.shape[1]) for name, m in zip(("short", "long"), masks)}


def build_cases(model: str, batch: int, frames: int, res: int, dtype, device, compile_: bool) -> list[Case]:
    cfg = ENCODER_PRESETS[model]
    D, H, hd = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    grid = (frames // 2, res // 16, res // 16)
    N = grid[0] * grid[1] * grid[2]
    es = torch.tensor([], dtype=dtype).element_size()
    sizes = mask_sizes(grid, batch)

    def ids_of(k: int) -> torch.Tensor:
        return torch.stack([torch.randperm(N, device=device)[:k].sort().values for _ in range(batch)])

    def variants(ref: Fn, fast: Fn, extra: dict[str, Fn] | None = None) -> dict[str, Fn]:
        impls = {"eager": ref, **(extra or {})}
        if compile_:
            impls["compiled"] = torch.compile(ref)
        impls["triton"] = fast
        return impls

    cases = []
    kc, kt = sizes["short"]
    for label, k, ids_fn in (("context short", kc, lambda: ids_of(kc)), ("teacher all tokens", N, lambda: None)):
        shape = f"{model} qkv [{batch}, {k}, 3, {H}, {hd}], {label}"
        cases.append(
            Case(
                "rope3d_qkv_",
                shape,
                variants(lambda qkv, ids: rope_reference(qkv, ids, grid), lambda qkv, ids: rope3d.rope3d_qkv_(qkv, ids, grid)),
                lambda k=k, ids_fn=ids_fn: (torch.randn(batch, k, 3, H, hd, device=device, dtype=dtype), ids_fn()),
                fwd_bytes=2 * 2 * batch * k * D * es,  # read and write q, k
                bwd_bytes=2 * 3 * batch * k * D * es,  # read and write the packed grad
            )
        )
    cases.append(
        Case(
            "gather_tokens",
            f"{model} x [{batch}, {N}, {D}] -> K={kc} (context short)",
            variants(masked_tokens.gather_tokens_reference, masked_tokens.gather_tokens),
            lambda: (torch.randn(batch, N, D, device=device, dtype=dtype), ids_of(kc)),
            fwd_bytes=2 * batch * kc * D * es,
            bwd_bytes=(N + 2 * kc) * batch * D * es,  # zero-fill, then read and write K rows
        )
    )
    P = PREDICTOR_CONFIG.embed_dim
    token = torch.zeros(P, device=device, dtype=dtype)
    cases.append(
        Case(
            "assemble_predictor_input",
            f"predictor context [{batch}, {kc}, {P}] + {kt} mask tokens",
            variants(
                lambda c, ci, ti: masked_tokens.assemble_predictor_input_reference(c, ci, ti, token)[0],
                lambda c, ci, ti: masked_tokens.assemble_predictor_input(c, ci, ti, token)[0],
            ),
            lambda: (torch.randn(batch, kc, P, device=device, dtype=dtype), ids_of(kc), ids_of(kt)),
            fwd_bytes=(2 * kc + kt) * batch * P * es,
            bwd_bytes=(kc + kt) * batch * P * es,
        )
    )
    for config, (_, k) in sizes.items():
        target = torch.randn(batch, N, D, device=device, dtype=dtype)
        cases.append(
            Case(
                "latent_l1_loss",
                f"{model} pred [{batch}, {k}, {D}], teacher [{batch}, {N}, {D}] (targets {config})",
                variants(
                    lambda p, ids, t=target: latent_loss.latent_l1_loss_reference(p, t, ids),
                    lambda p, ids, t=target: latent_loss.latent_l1_loss(p, t, ids),
                    {"eager_unfused": lambda p, ids, t=target: latent_unfused(p, t, ids)},
                ),
                lambda k=k: (torch.randn(batch, k, D, device=device, dtype=dtype), ids_of(k)),
                fwd_bytes=3 * batch * k * D * es,  # read target rows and pred, write grad
                bwd_bytes=2 * batch * k * D * es,  # scale the stored grad
            )
        )
    video = torch.randn(batch, 3, frames, res, res, device=device, dtype=dtype)
    cases.append(
        Case(
            "pixel_mse_loss",
            f"pred [{batch}, {kt}, 1536], video [{batch}, 3, {frames}, {res}, {res}] (targets short)",
            variants(
                lambda p, ids: pixel_loss.pixel_mse_loss_reference(p, video, ids),
                lambda p, ids: pixel_loss.pixel_mse_loss(p, video, ids),
            ),
            lambda: (torch.randn(batch, kt, 1536, device=device, dtype=dtype), ids_of(kt)),
            fwd_bytes=3 * batch * kt * 1536 * es,
            bwd_bytes=2 * batch * kt * 1536 * es,
        )
    )
    return cases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_l", "vit_g"], help="encoder presets whose shapes are timed")
    parser.add_argument("--batch", type=int, default=24, help="clips per GPU (sets the token counts)")
    parser.add_argument("--reps", type=int, default=50, help="timed repetitions per op and implementation")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU through the Triton interpreter; writes a JSON only with --out")
    add_output_args(parser, "kernels_<device>.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.smoke:
        device, dtype, frames, res, batch, reps = torch.device("cpu"), torch.float32, 4, 32, 2, 2
        os.environ["SALT_FAST_KERNELS"] = "triton"  # public ops take the kernels, references stay references
    elif torch.cuda.is_available():
        device, dtype, frames, res, batch, reps = torch.device("cuda"), torch.bfloat16, 16, 224, args.batch, args.reps
    else:
        parser.error("no CUDA device: run on a GPU, or pass --smoke to check the script on the CPU")
    compile_ = not (args.no_compile or args.smoke)

    bandwidth = copy_bandwidth(device)
    print(f"{environment()['device']}: measured copy bandwidth {bandwidth:.0f} GB/s")
    results = []
    for model in args.models:
        for case in build_cases(model, batch, frames, res, dtype, device, compile_):
            row = {"op": case.op, "shape": case.shape, "impls": {}}
            for name, fn in case.impls.items():
                row["impls"][name] = r = measure(case, name, fn, device, reps)
                r["fwd_pct_copy"] = 100 * r["fwd_gbps"] / bandwidth
                r["bwd_pct_copy"] = 100 * r["bwd_gbps"] / bandwidth
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-4  # bf16: a few ulps of the largest value
            row["agreement"] = {name: agreement(case, case.impls["eager"], fn, tol)
                                for name, fn in case.impls.items() if name != "eager"}  # fmt: skip
            fast = row["impls"]["triton"]
            for base in ("eager", "compiled", "eager_unfused"):
                if base in row["impls"]:
                    ref = row["impls"][base]
                    row[f"speedup_vs_{base}"] = {
                        "fwd": ref["fwd_ms"] / fast["fwd_ms"],
                        "bwd": ref["bwd_ms"] / fast["bwd_ms"],
                        "fwd_bwd": (ref["fwd_ms"] + ref["bwd_ms"]) / (fast["fwd_ms"] + fast["bwd_ms"]),
                    }
            results.append(row)
            print(f"\n{case.op}: {case.shape}")
            for name, agree in row["agreement"].items():
                print(f"  {name:<14} vs eager: fwd {agree['fwd_rel_err']:.1e}, grad {agree['bwd_rel_err']:.1e} "
                      + ("ok" if agree["ok"] else f"DISAGREES (tolerance {tol:g})"))  # fmt: skip
            for name, r in row["impls"].items():
                peak = "" if r["peak_mb"] is None else f"  peak {r['peak_mb']:8.1f} MB"
                print(
                    f"  {name:<14} fwd {r['fwd_ms']:8.3f} ms ({r['fwd_pct_copy']:5.1f}% of copy)"
                    f"  bwd {r['bwd_ms']:8.3f} ms ({r['bwd_pct_copy']:5.1f}% of copy){peak}"
                )

    record = {
        "benchmark": "kernels",
        **environment(),
        "smoke": args.smoke,
        "dtype": str(dtype),
        "batch": batch,
        "frames": frames,
        "resolution": res,
        "copy_bandwidth_gbps": bandwidth,
        "cases": results,
    }
    if not args.smoke or args.out is not None:
        name = "kernels_" + record["device"].replace(" ", "_") + ".json"
        write_json(output_path(args, name), record)
    wrong = [f"{row['op']} ({name})" for row in results for name, a in row["agreement"].items() if not a["ok"]]
    if wrong:
        print(f"\nDISAGREE with their eager references: {', '.join(wrong)}")
        sys.exit(1)
    return record


if __name__ == "__main__":
    main()
