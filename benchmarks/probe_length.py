"""How much of each encoder's score in the small reproduction is the probe's training budget?

    python benchmarks/probe_length.py                       # after benchmarks/reproduce_small.py

Re-probes the four encoders of a finished ``reproduce_small`` workdir on one task (motion by
default) with the same fast protocol at several epoch counts, from the same seeded heads, and
writes ``benchmarks/results/local/reproduce_small_probe_length.json`` (untracked; ``--refresh``:
the committed ``benchmarks/results/reproduce_small_probe_length.json``). The reproduction's 20-epoch
probe stops while the heads are still fitting; this shows whether a longer probe changes the
ordering of the encoders, and which features hold the information at all (train loss beside
validation top-1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, HelpFormatter, add_output_args, environment, output_path, write_json  # noqa: E402
from reproduce_small import ENCODERS, load_encoders, probe_config  # noqa: E402

from salt_fast.config import load_config  # noqa: E402
from salt_fast.eval.probe import run_probe  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "reproduce_small",
                        help="the finished benchmarks/reproduce_small.py workdir to re-probe")  # fmt: skip
    parser.add_argument("--epochs", default="20,60,100", help="comma-separated probe epoch counts")
    parser.add_argument("--task", default="motion", choices=("motion", "shape", "colour"), help="the probe task")
    parser.add_argument("--seed", type=int, default=0, help="the reproduction's --seed (random init and probe heads)")
    add_output_args(parser, "reproduce_small_probe_length.json")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    epochs = [int(e) for e in args.epochs.split(",")]
    if not epochs or min(epochs) < 1:
        parser.error(f"--epochs must be positive integers, got {args.epochs!r}")
    run_cfg = args.workdir / "pixel" / "config.yaml"
    if not run_cfg.exists():
        parser.error(f"{run_cfg} not found: run benchmarks/reproduce_small.py --workdir {args.workdir} first")

    start = time.perf_counter()
    d = load_config(run_cfg).data  # the clips the encoders were pretrained on
    # Every core computes: the videos are decoded once per probe, the heads then train from the
    # feature cache (unlike reproduce_small, whose pretraining decodes beside the compute).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = args.workdir / "synthetic"
    results: dict = {"task": args.task, "epochs": epochs, "encoders": {}}
    for key, encoder in load_encoders(args.workdir, args.seed).items():
        rows = []
        for e in epochs:
            cfg = probe_config(d.frames, d.resolution, e, d.num_workers, args.seed)
            r = run_probe(encoder, data / f"{args.task}_train.txt", data / f"{args.task}_val.txt", cfg, device, show_progress=args.progress)
            rows.append({"epochs": e, "top1": r["top1"], "train_loss": r["best"]["train_loss"], "time_s": r["time_s"]})
            print(f"{ENCODERS[key]:32s} {e:4d} epochs: train loss {rows[-1]['train_loss']:.3f}, val top-1 {r['top1']:5.1f}%", flush=True)
        results["encoders"][key] = rows
    results["setup"] = {"workdir": str(args.workdir), "frames": d.frames, "resolution": d.resolution, "seed": args.seed}
    results["time_s"] = time.perf_counter() - start
    results["environment"] = environment()
    write_json(output_path(args, "reproduce_small_probe_length.json"), results)
    return results


if __name__ == "__main__":
    main()
