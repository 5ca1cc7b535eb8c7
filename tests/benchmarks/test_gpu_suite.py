"""benchmarks/gpu_suite.sh walks every GPU step on the CPU (--dry-run) and leaves what the
device tool brings back: at most eight files, every step's status in summary.json."""

import json
import os
import subprocess
import sys

from support import ROOT

STEPS = ["install", "gpu_tests", "kernels", "throughput", "aot", "roofline", "data", "report"]


def test_dry_run_walks_every_step(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TRITON_INTERPRET", None)  # the aot step compiles; the kernels step turns the interpreter on itself
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert done.returncode == 0, (tmp_path / "suite.log").read_text()[-4000:]
    assert summary["dry_run"] is True and [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == 0 for s in summary["steps"])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and {"summary.json", "suite.log", "REPORT.md"} <= set(files), files
    # The GPU mode runs the same steps, in the same order.
    script = (ROOT / "benchmarks" / "gpu_suite.sh").read_text()
    gpu_mode = script.split("\nelse\n", 1)[1].split("\nfi\n", 1)[0]
    assert [line.split()[1] for line in gpu_mode.splitlines() if line.strip().startswith("step ")] == STEPS[:-1]
