"""A small end-to-end reproduction of the paper's claims on the built-in synthetic videos.

    python benchmarks/reproduce_small.py                 # ~30 min on a 2-core CPU, minutes on a GPU

At matched total steps S (the paper's 1/3 teacher + 2/3 student split, its Figure 2):

- (a) a random-init encoder (no training),
- (b) the Stage-1 V-Pixel teacher, trained S/3 steps,
- (c) the SALT student of (b), trained 2S/3 steps,
- (d) the V-JEPA 2 baseline (EMA teacher), trained S steps,

each probed with the fast protocol (frozen encoder, attentive probe) on a temporal task
(motion direction: no single frame tells it) and two appearance tasks (shape, colour), plus the
RankMe of each encoder and the loss-vs-accuracy R^2 across (c)'s checkpoints. Writes
``benchmarks/results/local/reproduce_small.json`` and the loss-vs-accuracy plot beside it
(untracked; ``--refresh``: the committed ``benchmarks/results/``) and prints the README table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402

from salt_fast.config import load_config  # noqa: E402
from salt_fast.data import VideoList, make_synthetic_dataset  # noqa: E402
from salt_fast.eval.encoders import load_encoder  # noqa: E402
from salt_fast.eval.loss_vs_accuracy import loss_vs_accuracy  # noqa: E402
from salt_fast.eval.probe import ProbeConfig, run_probe  # noqa: E402
from salt_fast.eval.rankme import encoder_rankme  # noqa: E402
from salt_fast.models import VisionTransformer  # noqa: E402
from salt_fast.train import train  # noqa: E402

TASKS = ("motion", "shape", "colour")
VIDEO_FRAMES = 32  # frames of each synthetic video; the clips sample every 4th (data.frame_step)
ENCODERS = {
    "random": "(a) random init",
    "pixel": "(b) Stage-1 teacher (V-Pixel)",
    "salt": "(c) SALT student",
    "vjepa": "(d) V-JEPA 2 (EMA)",
}


def add_pretrain_args(parser: argparse.ArgumentParser, workdir: Path) -> None:
    """The flags of the pretraining setup (data, models, clips, steps) that benchmarks/physics_small.py shares."""
    parser.add_argument("--steps", type=int, default=600, help="matched total pretraining steps S")
    parser.add_argument("--depth", type=int, default=4, help="vit_tiny depth of every encoder")
    parser.add_argument("--videos", type=int, default=320, help="synthetic videos (1/4 held out for probe validation)")
    parser.add_argument(
        "--background", default="plain",
        help="synthetic background: plain (the Stage-1 pixel loss can learn) or random (textured: per-patch normalised "
        "texture is noise at this scale)",
    )  # fmt: skip
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (pretraining and probes)")
    parser.add_argument("--resolution", type=int, default=64, help="clip side in pixels (pretraining and probes)")
    parser.add_argument("--batch-size", type=int, default=8, help="pretraining batch size")
    parser.add_argument("--num-workers", type=int, default=1, help="data-loading worker processes")
    parser.add_argument("--workdir", type=Path, default=workdir, help="where the synthetic videos and the runs go")
    parser.add_argument("--progress", action="store_true", help="progress bars")


def prepare(args, workdir: Path, seed: int) -> Path:
    """Threads for the CPU, and the synthetic videos of ``seed`` in ``workdir/synthetic`` (made
    once); returns that folder."""
    if not torch.cuda.is_available():
        # Leave the decode workers their cores: oversubscribed OpenMP threads spin-wait, and on
        # 2 cores one compute thread beside one worker was as fast as two and far steadier.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.num_workers))
    data = workdir / "synthetic"
    if not (data / "labels.json").exists():
        make_synthetic_dataset(
            data, num_videos=args.videos, frames=VIDEO_FRAMES, height=args.resolution, width=args.resolution, seed=seed,
            background=args.background,
        )  # fmt: skip
    return data


def pretrain(args, data: Path, work: Path, overrides: Sequence[str] = ()) -> dict[str, dict]:
    """Train (b), (c), (d) in ``work`` with ``args.seed``; ``overrides`` (dotted config keys)
    apply to all three runs. Returns each run's summary."""
    shape = f"{{depth: {args.depth}}}"
    common = [
        "model.encoder=vit_tiny", "model.teacher=vit_tiny",
        f"model.encoder_overrides={shape}", f"model.teacher_overrides={shape}",
        f"data.train_lists=[{data / 'motion_train.txt'}]",  # pretraining ignores the labels
        f"data.frames={args.frames}", f"data.resolution={args.resolution}", f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.num_workers}", f"optim.warmup_steps={max(1, args.steps // 10)}",
        "checkpoint.keep=1000", "log.every=1", "log.tensorboard=false", f"log.progress={'true' if args.progress else 'false'}",
        f"seed={args.seed}", *overrides,
    ]  # fmt: skip
    configs = ROOT / "configs"
    teacher_steps = args.steps // 3
    student_steps = args.steps - teacher_steps
    runs = {}
    t0 = time.perf_counter()
    runs["pixel"] = train(load_config(configs / "quickstart_pixel.yaml", [
        *common, f"output_dir={work / 'pixel'}", f"optim.steps={teacher_steps}", f"checkpoint.every={teacher_steps}",
    ]))  # fmt: skip
    runs["pixel"]["time_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs["salt"] = train(load_config(configs / "quickstart_salt.yaml", [
        *common, f"output_dir={work / 'salt'}", f"optim.steps={student_steps}",
        f"checkpoint.every={max(1, student_steps // args.checkpoints)}", f"model.teacher_checkpoint={runs['pixel']['encoder']}",
    ]))  # fmt: skip
    runs["salt"]["time_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs["vjepa"] = train(load_config(configs / "quickstart_salt.yaml", [
        *common, "stage=vjepa", "model.teacher_checkpoint=null", f"output_dir={work / 'vjepa'}",
        f"optim.steps={args.steps}", f"checkpoint.every={args.steps}",
    ]))  # fmt: skip
    runs["vjepa"]["time_s"] = time.perf_counter() - t0
    return runs


def load_encoders(workdir: Path, seed: int) -> dict[str, torch.nn.Module]:
    """(a)-(d) of a finished pretraining in ``workdir``; (a) is a fresh init of (b)'s architecture
    (its whole ViTConfig: depth, patch size ...) seeded by ``seed``, so every script that probes
    the workdir sees the same random encoder."""
    pixel = load_encoder(workdir / "pixel" / "encoder.safetensors")
    torch.manual_seed(seed)
    return {
        "random": VisionTransformer(pixel.cfg),
        "pixel": pixel,
        "salt": load_encoder(workdir / "salt" / "encoder.safetensors"),
        "vjepa": load_encoder(workdir / "vjepa"),  # its EMA target encoder, as V-JEPA 2 evaluates
    }


def probe_config(frames: int, resolution: int, epochs: int, num_workers: int, seed: int) -> ProbeConfig:
    """The fast probe protocol (1 clip, 1 view, lr 1e-3, wd 0.01), scaled to the tiny clips and
    dataset (batch 32: the training split holds only 240 videos)."""
    return ProbeConfig.protocol(
        "fast", frames=frames, resolution=resolution, epochs=epochs, batch_size=32, num_workers=num_workers, seed=seed
    )


def table(results: dict) -> str:
    lines = [
        "| encoder | pretraining steps | motion top-1 (%) | shape top-1 (%) | colour top-1 (%) | RankMe |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in ENCODERS.items():
        r = results["encoders"][key]
        lines.append(
            f"| {label} | {r['steps']} | {r['motion']['top1']:.1f} | {r['shape']['top1']:.1f} | {r['colour']['top1']:.1f} "
            f"| {r['rankme']:.1f} |"
        )
    fit = results["loss_vs_accuracy"]["fit"]
    lines.append("")
    lines.append(
        f"SALT student loss vs motion top-1 across {len(results['loss_vs_accuracy']['points'])} checkpoints: "
        f"R^2 = {fit['r2']:.3f} (slope {fit['slope']:.1f} points per unit of loss)."
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_pretrain_args(parser, ROOT / "runs" / "reproduce_small")
    parser.add_argument("--checkpoints", type=int, default=6, help="checkpoints of (c) for the loss-vs-accuracy fit")
    parser.add_argument("--probe-epochs", type=int, default=20, help="probe training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the runs, the random encoder and the probes")
    add_output_args(parser, "reproduce_small.json", "results JSON (the plot goes beside it)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.out = out = output_path(args, "reproduce_small.json")  # the setup below records where it went

    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = prepare(args, args.workdir, args.seed)
    runs = pretrain(args, data, args.workdir)

    encoders = load_encoders(args.workdir, args.seed)
    steps = {"random": 0, "pixel": runs["pixel"]["steps"], "salt": runs["pixel"]["steps"] + runs["salt"]["steps"], "vjepa": args.steps}
    probe_cfg = probe_config(args.frames, args.resolution, args.probe_epochs, args.num_workers, args.seed)
    results: dict = {"encoders": {}}
    for key, encoder in encoders.items():
        row: dict = {"steps": steps[key]}
        for task in TASKS:
            r = run_probe(encoder, data / f"{task}_train.txt", data / f"{task}_val.txt", probe_cfg, device, show_progress=args.progress)
            row[task] = {"top1": r["top1"], "train_loss": r["best"]["train_loss"], "time_s": r["time_s"]}
            print(f"{ENCODERS[key]:32s} {task:6s} top-1 {r['top1']:5.1f}%", flush=True)
        row["rankme"] = encoder_rankme(encoder, VideoList.from_file(data / "motion_val.txt"), probe_cfg, device, args.progress)["rankme"]
        if key in runs:
            row["pretrain_loss"] = {"first": runs[key]["first_loss"], "last": runs[key]["last_loss"]}
            row["pretrain_time_s"] = runs[key]["time_s"]
        results["encoders"][key] = row

    fit = loss_vs_accuracy(
        args.workdir / "salt", data / "motion_train.txt", data / "motion_val.txt", probe_cfg, device,
        plot=out.with_name("reproduce_small_loss_vs_accuracy.png"), show_progress=args.progress,
    )  # fmt: skip
    results["loss_vs_accuracy"] = fit
    results["setup"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["probe"] = {"protocol": "fast", **{k: v for k, v in vars(probe_cfg).items()}}
    # Majority-class rate of each validation list (motion and shape are balanced: 25%).
    results["chance_top1"] = {}
    for task in TASKS:
        labels = VideoList.from_file(data / f"{task}_val.txt").labels
        results["chance_top1"][task] = 100.0 * max(labels.count(c) for c in set(labels)) / len(labels)
    return finish(results, out, start, table(results))


def finish(results: dict, out: Path, start: float, text: str, write=write_json) -> dict:
    """Record the wall time since ``start`` and the environment, ``write(out, results)``, print ``text``."""
    results["time_s"] = time.perf_counter() - start
    results["environment"] = environment()
    write(out, results)
    print(text)
    print(f"total {results['time_s'] / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
