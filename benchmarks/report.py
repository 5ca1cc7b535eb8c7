"""Turn the benchmarks' JSON results into the README's tables.

    python benchmarks/report.py              # committed + local results -> benchmarks/results/local/REPORT.md
    python benchmarks/report.py --refresh    # committed results only    -> benchmarks/results/REPORT.md (committed)

Which results: the committed ones in benchmarks/results/ (``--results``) and, unless
``--refresh``, the untracked ones the benchmarks write by default into its local/ folder; a
local file replaces the committed file of the same name (the same benchmark on the same
device, measured again here). ``--refresh`` reads the committed files only, so the committed
REPORT.md never describes results that are not committed. Where the report goes: local/REPORT.md,
with ``--refresh`` the committed benchmarks/results/REPORT.md, or ``--out``.

Sections appear only for results that exist: FLOPs (the paper's 6ND tables and our exact
count per model), mask sampling, data loading, kernels (GPU runs) and training throughput
(GPU runs: clips/s, MFU, and the projected GPU-hours beside the paper's Table 11) and the
intuitive-physics surprise test per pretraining recipe (``physics_small*.json``). CPU
throughput and --smoke kernel runs check the scripts and are left out of the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOCAL, RESULTS, HelpFormatter, add_output_args, output_path, shown, write_text  # noqa: E402

# The paper's Table 11: measured A100 GPU-hours of the full runs.
PAPER_GPU_HOURS = {
    ("vjepa", "vit_l"): 9800, ("vjepa", "vit_h"): 14377, ("vjepa", "vit_g"): 18708,
    ("pixel", "vit_l"): 9062,
    ("salt", "vit_l"): 8263, ("salt", "vit_h"): 9574, ("salt", "vit_g"): 10476, ("salt", "vit_G"): 12379,
}  # fmt: skip


def load(folders: list[Path], pattern: str) -> list[tuple[str, dict]]:
    """``(name, record)`` of the files matching ``pattern`` in ``folders``, by name; a later
    folder's file replaces an earlier folder's file of the same name."""
    found = {p.name: p for folder in folders for p in sorted(folder.glob(pattern))}
    return [(name, json.loads(found[name].read_text())) for name in sorted(found)]


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def flops_section(name: str, r: dict) -> str:
    rows = [[x["name"], x["paper"], f"{x['computed']:.{x['decimals'] + 1}f}", f"{x['computed_exact_N']:.{x['decimals'] + 1}f}"]
            for x in r["rows"]]  # fmt: skip
    out = f"### FLOPs ({name})\n\n" + table(["x10^21 FLOPs", "paper", "6ND, paper's N", "6ND, exact N"], rows)
    if r.get("exact_vs_six_nd"):
        rows = [[x["stage"], x["model"], f"{x['exact_per_sample'] / 1e12:.2f}", f"{x['six_nd_per_sample'] / 1e12:.2f}",
                 f"{x['ratio']:.2f}", f"{x['mean_context_fraction']:.1%}"] for x in r["exact_vs_six_nd"]]  # fmt: skip
        out += "\n\nPer training sample at 224 px (ViT-L teacher), TFLOP:\n\n" + table(
            ["stage", "model", "exact (ours)", "6ND", "exact / 6ND", "context kept per configuration"], rows
        )
    return out


def throughput_section(runs: list[tuple[str, dict]]) -> str:
    rows = []
    for name, r in runs:
        if "result" not in r:  # a CPU machine at paper sizes: predictions only
            continue
        x, key = r["result"], (r["args"]["stage"], r["args"]["model"])
        mfu = x.get("mfu_datasheet")
        speedup = r.get("speedup_vs_reference_sdpa")
        # The step model's prediction for this very GPU, beside the measurement.
        predicted = next((p for p in r.get("predictions", []) if p["gpu"] in r["device"]), None)
        rows.append([r["device"], *key, r["args"]["batch_size"], f"{x['clips_per_s']:.1f}",
                     f"{predicted['clips_per_s']:.1f}" if predicted else "-", f"{x['tflops_per_s']:.1f}",
                     f"{100 * mfu:.1f}%" if mfu else "-", f"{speedup:.2f}x" if speedup else "-",
                     f"{x['gpu_hours_projected']:.0f}", PAPER_GPU_HOURS.get(key, "-"), name])  # fmt: skip
    header = ["device", "stage", "model", "batch/GPU", "clips/s/GPU", "clips/s predicted (model)", "TFLOP/s", "MFU",
              "vs reference", "GPU-h (ours)", "GPU-h (paper, A100)", "file"]  # fmt: skip
    return "### Training throughput (GPU)\n\n" + table(header, rows)


def physics_section(runs: list[tuple[str, dict]]) -> str:
    """The surprise test's quadruplet accuracy per recipe (mask set), model and kind of
    violation, beside the best random control's, and the motion probe."""
    rows = []
    for name, r in runs:
        models, setup = r["models"], r["setup"]
        kinds = list(models["salt"]["quads"])
        recipe = f"{setup['masking']}{''.join(' ' + s for s in setup.get('set', []))}"
        controls = [m for m in models.values() if m["control"] != "none"]
        best = []
        for kind in kinds:
            top = max(controls, key=lambda m: m["quads"][kind]["pooled"]["accuracy"])["quads"][kind]["pooled"]
            best.append(f"{top['accuracy']:.1f} [{top['ci95'][0]:.0f}-{top['ci95'][1]:.0f}]")
        probe = models["random"].get("probe_top1", {}).get("motion")
        rows.append([recipe, len(r["seeds"]), "best of the random controls (probe: random init)", *best, f"{probe['mean']:.1f}" if probe else "-", name])
        for key in ("pixel", "salt", "vjepa"):
            m = models[key]
            cells = []
            for kind in kinds:
                c = m["quads"][kind]
                text = f"{c['pooled']['accuracy']:.1f} [{c['pooled']['ci95'][0]:.0f}-{c['pooled']['ci95'][1]:.0f}]"
                cells.append(f"**{text}**" if c["above_every_control"] else text)
            probe = m.get("probe_top1", {}).get("motion")
            rows.append([recipe, len(r["seeds"]), f"{m['label']}, {m['steps']} steps", *cells,
                         f"{probe['mean']:.1f}" if probe else "-", name])  # fmt: skip
    header = ["mask set", "seeds", "model", *kinds, "motion probe top-1 %", "file"]
    return ("### Intuitive-physics surprise (quadruplets)\n\nAccuracy % over all seeds' items [95% Wilson interval]; "
            "bold: the interval lies above every random control's.\n\n" + table(header, rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder of the committed results; its local/ subfolder is read too, unless --refresh")  # fmt: skip
    add_output_args(parser, "REPORT.md", "report (Markdown)")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    local = args.results / LOCAL
    if args.refresh:  # the committed report describes the committed results only
        folders, source = [args.results], "the JSON files beside it"
    else:
        folders = [args.results, local]
        source = f"the JSON files in {shown(args.results)}/ and {shown(local)}/ (a local file replaces the committed one of the same name)"
    sections = [f"# salt_fast benchmark report\n\nGenerated by `python benchmarks/report.py` from {source}."]
    for name, r in load(folders, "flops_tables.json"):
        sections.append(flops_section(name, r))
    for name, r in load(folders, "masking_*.json"):
        rows = [[b, f"{v['ms_per_batch']:.3f}", f"{v['batches_per_s']:.0f}"] for b, v in r["backends"].items()]
        title = f"### Mask sampling ({name}, {r['device']}, batch {r['batch']})\n\n"
        sections.append(title + table(["backend", "ms/batch", "batches/s"], rows))
    for name, r in load(folders, "data_*.json"):
        rows = [[x["path"], x["codec"], f"{x['video_seconds']:g} s" if "video_seconds" in x else "-",
                 x["workers"] if x["workers"] is not None else "-",
                 f"{x['clips_per_s']:.1f}" if x["clips_per_s"] else x["note"],
                 f"{x['vs_vjepa2']:.2f}x" if x.get("vs_vjepa2") else "-"] for x in r["results"]]  # fmt: skip
        sections.append(f"### Data loading ({name}, {r['device']})\n\n"
                        + table(["path", "codec", "videos", "workers", "clips/s", "vs V-JEPA 2"], rows))  # fmt: skip
    for name, r in load(folders, "kernels_*.json"):
        if r.get("smoke"):
            continue
        impls, times = ("eager", "compiled", "triton"), ("fwd_ms", "bwd_ms")
        rows = []
        for c in r["cases"]:
            ms = [f"{c['impls'][i][k]:.3f}" if i in c["impls"] else "-" for i in impls for k in times]
            fast = c["impls"]["triton"]
            rows.append([c["op"], c["shape"], *ms, f"{fast['fwd_pct_copy']:.0f}% / {fast['bwd_pct_copy']:.0f}%"])
        header = ["op", "shape", *(f"{i} {k[:3]} ms" for i in impls for k in times), "triton % of copy BW"]
        sections.append(f"### Kernels ({name}, {r['device']})\n\n" + table(header, rows))
    gpu_runs = [(n, r) for n, r in load(folders, "throughput_*.json") if "note" not in r]  # CPU runs carry a note
    if gpu_runs:
        sections.append(throughput_section(gpu_runs))
    physics = load(folders, "physics_small*.json")
    if physics:
        sections.append(physics_section(physics))
    report = "\n\n".join(sections) + "\n"
    print(report)
    write_text(output_path(args, "REPORT.md", args.results), report)
    return report


if __name__ == "__main__":
    main()
