"""The quickstart: Stage 1 then Stage 2 of a tiny model on the built-in synthetic videos.

    python -m salt_fast.quickstart [key=value ...]     # overrides apply to both stages

Runs configs/quickstart_pixel.yaml (a V-Pixel teacher), then configs/quickstart_salt.yaml
(a SALT student of that frozen teacher), and prints where the checkpoints, logs and plots
are with a short summary. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from salt_fast.config import load_config
from salt_fast.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def mean_clips_per_s(metrics: str) -> float:
    with open(metrics) as f:
        rates = [float(row["clips_per_s"]) for row in csv.DictReader(f) if row.get("clips_per_s")]
    return sum(rates) / max(len(rates), 1)


def main(argv: list[str] | None = None) -> tuple[dict, dict]:
    overrides = list(sys.argv[1:] if argv is None else argv)
    # output_dir=ROOT puts the two stages in ROOT/pixel and ROOT/salt.
    roots = [o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")]
    overrides = [o for o in overrides if not o.startswith("output_dir=")]
    root = roots[-1] if roots else "runs/quickstart"
    teacher = train(load_config(CONFIGS / "quickstart_pixel.yaml", [*overrides, f"output_dir={root}/pixel"]))
    student_overrides = [*overrides, f"output_dir={root}/salt", f"model.teacher_checkpoint={teacher['encoder']}"]
    student = train(load_config(CONFIGS / "quickstart_salt.yaml", student_overrides))
    print("\nsalt_fast quickstart: done")
    for name, run in (("Stage 1 teacher (V-Pixel)", teacher), ("Stage 2 student (SALT)", student)):
        print(
            f"  {name}: loss {run['first_loss']:.4f} -> {run['last_loss']:.4f}, "
            f"{mean_clips_per_s(run['metrics']):.1f} clips/s\n"
            f"    checkpoints {run['checkpoints']}\n    encoder     {run['encoder']}\n"
            f"    metrics     {run['metrics']} (TensorBoard: {Path(run['output_dir']) / 'tb'})\n"
            f"    plot        {run['plot']}"
        )
    return teacher, student


if __name__ == "__main__":
    main()
