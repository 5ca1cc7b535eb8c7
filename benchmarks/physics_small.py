"""Intuitive-physics surprise at CPU scale: what the small runs learn about what happens next.

    python benchmarks/physics_small.py                              # 3 seeds, ~35 min on a 2-core CPU
    python benchmarks/physics_small.py --masking future --out benchmarks/results/physics_small_future.json

Per seed, the pretraining of ``benchmarks/reproduce_small.py`` (vit_tiny at depth 4, 8 frames
at 64x64 every 4th frame of 32-frame synthetic videos, batch 8, matched total steps S: Stage-1
V-Pixel S/3 steps, its SALT student 2S/3, V-JEPA 2 S; ``--masking`` picks the mask set of all
three), then the surprise test (``salt_fast.eval.surprise``: 4 context + 4 predicted frames,
stride 2, the mean over windows) on the library's intuitive-physics videos
(``salt_fast.data.physics``: 16 frames, the training clips' speed, every kind, as matched
quadruplets and as pairs; new items for every seed) for

- the controls, at the seed's init (the runs' own step-0 weights): every model random (the
  SALT / V-JEPA architecture), the pixel encoder + decoder random, and a random student +
  predictor with SALT's target (the trained Stage-1 teacher) or V-JEPA's trained EMA target;
- the trained Stage-1 pixel model (decoder against pixel targets), SALT student, V-JEPA.

Accuracy per seed and pooled over the seeds' items, each with a 95% Wilson interval, and
whether that interval lies above every control's; SALT against V-JEPA on the same items (exact
McNemar test); the mean surprise gap (impossible minus possible); frozen-probe top-1
(``--probe``, reproduce_small's fast protocol; motion by default) of the random, pixel, SALT
and V-JEPA encoders. Finished runs in ``--workdir`` (one folder per pretraining recipe) are
reused, not retrained. Writes ``benchmarks/results/local/physics_small.json`` (``--refresh``:
the committed ``benchmarks/results/``; ``--out``: anywhere) and prints the README tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, HelpFormatter, add_output_args, output_path, write_text  # noqa: E402
from reproduce_small import (  # noqa: E402
    TASKS,
    VIDEO_FRAMES,
    add_pretrain_args,
    finish,
    load_encoders,
    prepare,
    pretrain,
    probe_config,
)

from salt_fast.data import make_physics_dataset  # noqa: E402
from salt_fast.data.physics import KINDS, PAIR_KINDS  # noqa: E402
from salt_fast.data.synthetic import pixel_speed  # noqa: E402
from salt_fast.eval.probe import run_probe  # noqa: E402
from salt_fast.eval.surprise import (  # noqa: E402
    accuracy_summary,
    judge_items,
    load_surprise_model,
    load_videos,
    read_items,
    score_models,
)
from salt_fast.masking import MASK_SETS  # noqa: E402

# The models scored, in table order: (run, control) -> label.
MODELS = {
    "random": ("salt", "random", "random init, all models (SALT / V-JEPA architecture)"),
    "random_pixel": ("pixel", "random", "random init, pixel encoder + decoder"),
    "random_student_salt": ("salt", "random-student", "random student + predictor, SALT's target (trained teacher)"),
    "random_student_vjepa": ("vjepa", "random-student", "random student + predictor, V-JEPA's trained EMA target"),
    "pixel": ("pixel", "none", "Stage-1 teacher (V-Pixel: decoder vs pixels)"),
    "salt": ("salt", "none", "SALT student"),
    "vjepa": ("vjepa", "none", "V-JEPA 2 (EMA target)"),
}
CONTROLS = ("random", "random_pixel", "random_student_salt", "random_student_vjepa")
OWN_CONTROL = {"pixel": "random_pixel", "salt": "random_student_salt", "vjepa": "random_student_vjepa"}
CONTEXT, PREDICT, STRIDE = 4, 4, 2  # surprise windows, in frames
FRAME_STEP = 4  # the pretraining clips sample every 4th frame of the synthetic videos (data.frame_step)


def evaluate_seed(args, seed: int) -> dict:
    """Pretrain one seed's runs, make its physics videos, and score every model on every list."""
    work = args.workdir / f"seed{seed}"
    run_args = argparse.Namespace(**{**vars(args), "seed": seed, "checkpoints": 1})
    data = prepare(run_args, work, seed)
    t0 = time.perf_counter()
    runs = pretrain(run_args, data, work, [f"masking.configs={args.masking}", *args.set])
    pretrain_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    physics = work / "physics"
    if not (physics / "physics.json").exists():
        make_physics_dataset(
            physics, num_items=args.items, frames=args.physics_frames, size=args.resolution, seed=seed,
            speed=pixel_speed(args.resolution, VIDEO_FRAMES, FRAME_STEP), background=args.background,
        )  # fmt: skip
    models = {key: load_surprise_model(work / run, control, seed)[0] for key, (run, control, _) in MODELS.items()}
    scores: dict = {key: {} for key in MODELS}  # key -> kind -> per quad item, the surprise of its 4 videos
    results: dict = {key: {"quads": {}, "pairs": {}} for key in MODELS}
    for kind in KINDS:
        quads = read_items(physics / f"physics_{kind}_quads.txt")
        pair_kinds = ("vanish", "appear") if kind == "permanence" else (kind,)
        pairs = {p: read_items(physics / f"physics_{p}_pairs.txt") for p in pair_kinds}
        videos = load_videos([v for item in quads for v in item], args.resolution)
        paths = list(videos)
        scored = score_models(models, list(videos.values()), CONTEXT, PREDICT, STRIDE)
        for key in models:
            surprise = dict(zip(paths, scored[key]))
            for test, lists in (("quads", {kind: quads}), ("pairs", pairs)):
                for name, items in lists.items():
                    judged = judge_items(items, surprise)
                    rows = judged.pop("per_item")
                    results[key][test][name] = {**judged, "verdicts": [int(row["correct"]) for row in rows]}
                    if test == "quads":  # the pairs' videos are the quadruplets': their surprises are kept once
                        scores[key][kind] = [[float(f"{v:.6g}") for v in row["surprise"]] for row in rows]
        print(f"seed {seed} {kind:10s} quads: "
              + ", ".join(f"{k} {r['quads'][kind]['accuracy']:.0f}%" for k, r in results.items()), flush=True)  # fmt: skip
    eval_s = time.perf_counter() - t0

    probes: dict = {}
    if args.probe:
        t0 = time.perf_counter()
        cfg = probe_config(args.frames, args.resolution, args.probe_epochs, args.num_workers, seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for key, encoder in load_encoders(work, seed).items():
            probes[key] = {}
            for task in args.probe:
                r = run_probe(encoder, data / f"{task}_train.txt", data / f"{task}_val.txt", cfg, device, show_progress=args.progress)
                probes[key][task] = r["top1"]
        print(f"seed {seed} probes: {probes}", flush=True)
        probes["time_s"] = time.perf_counter() - t0
    return {
        "seed": seed,
        "pretrain": {k: {"steps": r["steps"], "first_loss": r.get("first_loss"), "last_loss": r.get("last_loss")}
                     for k, r in runs.items()},  # fmt: skip
        # Matched steps: the SALT student's count includes its teacher's (the paper's Figure 2).
        "total_steps": {"pixel": runs["pixel"]["steps"], "salt": runs["pixel"]["steps"] + runs["salt"]["steps"],
                        "vjepa": runs["vjepa"]["steps"]},  # fmt: skip
        "pretrain_time_s": pretrain_s,
        "surprise_time_s": eval_s,
        "results": results,
        "surprise": scores,
        "probes": probes,
    }


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: how likely so uneven a split of the discordant items is
    when both models are equally good (a binomial test at 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def verdicts(seeds: list[dict], key: str, test: str, kind: str) -> list[bool]:
    """A model's verdict on every item of every seed, in order."""
    return [bool(v) for s in seeds for v in s["results"][key][test][kind]["verdicts"]]


def compact_json(record: dict) -> str:
    """Indented JSON with each list of plain values on one line: the per-item data stays readable
    and the file small."""
    leaves: list[str] = []

    def mark(x):
        if isinstance(x, dict):
            return {k: mark(v) for k, v in x.items()}
        if isinstance(x, list) and all(v is None or isinstance(v, (bool, int, float, str)) for v in x):
            leaves.append(json.dumps(x))
            return f"@leaf{len(leaves) - 1}@"
        return [mark(v) for v in x] if isinstance(x, list) else x

    text = json.dumps(mark(record), indent=2)
    return re.sub(r'"@leaf(\d+)@"', lambda m: leaves[int(m.group(1))], text) + "\n"


def aggregate(seeds: list[dict], args) -> dict:
    """Per model and list: every seed's summary, the pooled summary over all seeds' items, the
    mean of the seeds' accuracies, whether the pooled interval lies above every control's, and
    for the quadruplets the mean surprise gap (impossible minus possible, per video) and level.
    Plus paired comparisons on the same items: SALT against V-JEPA (exact McNemar test), and each
    trained model's verdicts against its own random-student (or random) control's."""
    out: dict = {}
    for key, (run, control, label) in MODELS.items():
        steps = 0 if control != "none" else seeds[0]["total_steps"][run]
        row: dict = {"label": label, "run": run, "control": control, "steps": steps, "quads": {}, "pairs": {}}
        for test, kinds in (("quads", KINDS), ("pairs", PAIR_KINDS)):
            for kind in kinds:
                per_seed = [s["results"][key][test][kind] for s in seeds]
                row[test][kind] = {
                    "pooled": accuracy_summary(verdicts(seeds, key, test, kind)),
                    "seeds": [{k: r[k] for k in ("accuracy", "correct", "n", "ci95")} for r in per_seed],
                    "mean_accuracy": statistics.fmean(r["accuracy"] for r in per_seed),
                }
        for kind in KINDS:  # the surprise gap of the quadruplets: (impossible total - possible total) / 2
            items = [q for s in seeds for q in s["surprise"][key][kind]]
            row["quads"][kind]["gap"] = statistics.fmean((q[2] + q[3] - q[0] - q[1]) / 2 for q in items)
            row["quads"][kind]["level"] = statistics.fmean(sum(q) / 4 for q in items)
        if args.probe and key in seeds[0]["probes"]:
            row["probe_top1"] = {t: {"seeds": [s["probes"][key][t] for s in seeds],
                                     "mean": statistics.fmean(s["probes"][key][t] for s in seeds)} for t in args.probe}  # fmt: skip
        out[key] = row
    for key, (run, control, _) in MODELS.items():
        for test, kinds in (("quads", KINDS), ("pairs", PAIR_KINDS)):
            for kind in kinds:
                ceiling = max(out[c][test][kind]["pooled"]["ci95"][1] for c in CONTROLS)
                out[key][test][kind]["above_every_control"] = out[key][test][kind]["pooled"]["ci95"][0] > ceiling
    paired: dict = {"salt_vs_vjepa": {}, "agreement_with_own_control": {}}
    for test, kinds in (("quads", KINDS), ("pairs", PAIR_KINDS)):
        paired["salt_vs_vjepa"][test] = {}
        for kind in kinds:
            both = list(zip(verdicts(seeds, "salt", test, kind), verdicts(seeds, "vjepa", test, kind)))
            only_salt, only_vjepa = sum(a and not b for a, b in both), sum(b and not a for a, b in both)
            paired["salt_vs_vjepa"][test][kind] = {"salt_only": only_salt, "vjepa_only": only_vjepa, "n": len(both),
                                                   "p_mcnemar": mcnemar(only_salt, only_vjepa)}  # fmt: skip
    for key, own in OWN_CONTROL.items():
        paired["agreement_with_own_control"][key] = {"control": own, **{
            test: {kind: 100.0 * statistics.fmean(a == b for a, b in zip(verdicts(seeds, key, test, kind),
                                                                          verdicts(seeds, own, test, kind)))
                   for kind in kinds} for test, kinds in (("quads", KINDS), ("pairs", PAIR_KINDS))}}  # fmt: skip
    return {"models": out, "paired": paired}


def _cell(r: dict) -> str:
    lo, hi = r["pooled"]["ci95"]
    seeds = " / ".join(f"{s['accuracy']:.1f}" for s in r["seeds"])
    text = f"{r['pooled']['accuracy']:.1f} [{lo:.1f}-{hi:.1f}] ({seeds})"
    return f"**{text}**" if r["above_every_control"] else text


def tables(results: dict) -> str:
    models = results["models"]
    lines = []
    for test, kinds in (("quads", KINDS), ("pairs", PAIR_KINDS)):
        lines += [f"{test}: accuracy % over all seeds' items [95% Wilson interval] (per seed); bold: the interval lies "
                  "above every control's", "",
                  "| model | steps | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]  # fmt: skip
        for row in models.values():
            lines.append(f"| {row['label']} | {row['steps']} | " + " | ".join(_cell(row[test][k]) for k in kinds) + " |")
        lines.append("")
        lines.append("SALT vs V-JEPA on the same items (items only SALT / only V-JEPA gets right, exact McNemar p): " + ", ".join(
            f"{k} {c['salt_only']}/{c['vjepa_only']} p={c['p_mcnemar']:.2g}" for k, c in results["paired"]["salt_vs_vjepa"][test].items()))
        lines.append("")
    lines += ["mean quadruplet surprise gap (impossible - possible, per video) / mean surprise", "",
              "| model | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]  # fmt: skip
    for row in models.values():
        lines.append(f"| {row['label']} | " + " | ".join(f"{row['quads'][k]['gap']:+.4f} / {row['quads'][k]['level']:.3f}"
                                                       for k in KINDS) + " |")  # fmt: skip
    if any("probe_top1" in row for row in models.values()):
        tasks = next(row["probe_top1"] for row in models.values() if "probe_top1" in row)
        lines += ["", "| encoder | " + " | ".join(f"{t} top-1 % (per seed)" for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
        for row in models.values():
            if "probe_top1" in row:
                cells = [f"{v['mean']:.1f} ({' / '.join(f'{x:.1f}' for x in v['seeds'])})" for v in row["probe_top1"].values()]
                lines.append(f"| {row['label'] if row['control'] == 'none' else 'random init'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_pretrain_args(parser, ROOT / "runs" / "physics_small")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (data, runs, controls, physics items)")
    parser.add_argument("--masking", default="multi_block", choices=tuple(MASK_SETS), help="mask set of all three runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for all three runs (repeatable), e.g. 'model.predictor_overrides={depth: 4}'")  # fmt: skip
    parser.add_argument("--items", type=int, default=40, help="physics items of each kind per seed")
    parser.add_argument("--physics-frames", type=int, default=16, help="frames of each physics video (even)")
    parser.add_argument("--probe", default="motion", help="comma-separated frozen-probe tasks (motion, shape, colour) of "
                        "the random, pixel, SALT and V-JEPA encoders; empty: none")  # fmt: skip
    parser.add_argument("--probe-epochs", type=int, default=20, help="probe training epochs")
    add_output_args(parser, "physics_small.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.probe = [t for t in args.probe.split(",") if t.strip()]
    if not seeds or any(t not in TASKS for t in args.probe):
        parser.error(f"--seeds needs at least one seed and --probe tasks among {', '.join(TASKS)}")
    out = output_path(args, "physics_small.json")
    # One folder per pretraining recipe: finished runs are reused (delete the folder to retrain),
    # never mistaken for those of another recipe.
    recipe = {k: getattr(args, k) for k in ("steps", "depth", "videos", "background", "frames", "resolution",
                                             "batch_size", "masking", "set")}  # fmt: skip
    args.workdir = args.workdir / f"{args.masking}_{hashlib.sha1(json.dumps(recipe).encode()).hexdigest()[:8]}"

    start = time.perf_counter()
    per_seed = [evaluate_seed(args, seed) for seed in seeds]
    results = {
        **aggregate(per_seed, args),
        "seeds": per_seed,
        "setup": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "out": str(out),
                  "context_frames": CONTEXT, "predict_frames": PREDICT, "stride": STRIDE, "reduce": "mean",
                  "physics_speed_px_per_frame": pixel_speed(args.resolution, VIDEO_FRAMES, FRAME_STEP),
                  "interval": "Wilson score, 95%, binomial over items", "chance": 50.0},  # fmt: skip
    }
    return finish(results, out, start, tables(results), lambda path, record: write_text(path, compact_json(record)))


if __name__ == "__main__":
    main()
