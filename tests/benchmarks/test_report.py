"""benchmarks/report.py turns result JSON files into Markdown tables."""

import json
import shutil
import subprocess
import sys
from support import ROOT



def test_report_from_committed_results_and_a_gpu_throughput_record(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    fake = {  # the shape benchmarks/throughput.py writes on a GPU
        "device": "NVIDIA H100 80GB HBM3",
        "args": {"stage": "salt", "model": "vit_l", "batch_size": 24},
        "result": {"clips_per_s": 50.0, "tflops_per_s": 400.0, "mfu_datasheet": 0.4, "gpu_hours_projected": 4369.0},
        "speedup_vs_reference_sdpa": 1.4,
        "predictions": [{"gpu": "H100", "clips_per_s": 61.5, "label": "PREDICTED by the step model"}],
    }
    (results / "throughput_test_salt_vit_l.json").write_text(json.dumps(fake))
    (results / "throughput_cpu_salt_vit_tiny.json").write_text(json.dumps({**fake, "note": "CPU run"}))
    out = tmp_path / "REPORT.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--results", str(results), "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = out.read_text()
    assert "Table 16: SALT-L 80k + 160k" in report and "exact / 6ND" in report
    assert "| NVIDIA H100 80GB HBM3 | salt | vit_l | 24 | 50.0 | 61.5 | 400.0 | 40.0% | 1.40x | 4369 | 8263 |" in report
    assert "vit_tiny" not in report  # CPU throughput runs check the script; they are not results
