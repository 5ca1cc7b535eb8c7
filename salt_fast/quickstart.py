"""The quickstart: Stage 1 then Stage 2 of a tiny model on the built-in synthetic videos.

    python -m salt_fast.quickstart [key=value ...]     # overrides apply to both stages

Runs configs/quickstart_pixel.yaml (a V-Pixel teacher), then configs/quickstart_salt.yaml
(a SALT student of that frozen teacher), and prints where the checkpoints, logs and plots
are with a short summary. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from salt_fast.cli import HelpFormatter, one_line_errors
from salt_fast.config import load_config
from salt_fast.train import describe, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def mean_clips_per_s(metrics: str) -> float:
    with open(metrics) as f:
        rates = [float(row["clips_per_s"]) for row in csv.DictReader(f) if row.get("clips_per_s")]
    return sum(rates) / max(len(rates), 1)


@one_line_errors()
def main(argv: list[str] | None = None) -> tuple[dict, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for both stages; output_dir=ROOT puts them "
                        "in ROOT/pixel and ROOT/salt (default: runs/quickstart)")  # fmt: skip
    overrides = parser.parse_args(argv).overrides
    roots = [o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")]
    overrides = [o for o in overrides if not o.startswith("output_dir=")]
    root = roots[-1] if roots else "runs/quickstart"
    teacher = train(load_config(CONFIGS / "quickstart_pixel.yaml", [*overrides, f"output_dir={root}/pixel"]))
    student_overrides = [*overrides, f"output_dir={root}/salt", f"model.teacher_checkpoint={teacher['encoder']}"]
    student = train(load_config(CONFIGS / "quickstart_salt.yaml", student_overrides))
    print("\nsalt_fast quickstart: done")
    for name, run in (("Stage 1 teacher (V-Pixel)", teacher), ("Stage 2 student (SALT)", student)):
        print(f"{name}, {mean_clips_per_s(run['metrics']):.1f} clips/s (TensorBoard: {Path(run['output_dir']) / 'tb'})")
        print("  " + describe(run).replace("\n", "\n  "))
    return teacher, student


if __name__ == "__main__":
    main()
