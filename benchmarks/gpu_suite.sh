#!/usr/bin/env bash
# Every GPU check in one command, for the day a GPU appears (one H100/H200, torch + triton there).
#
#   bash benchmarks/gpu_suite.sh [--out DIR]     # GPU: ~8 minutes; every result under DIR
#   bash benchmarks/gpu_suite.sh --dry-run       # CPU: the same steps at toy sizes (CI runs this)
#
# Steps (each runs even if an earlier one failed; the exit status is 1 if any failed):
#   install     salt_fast without dependencies, its C++ extension built against the torch there
#   gpu_tests   the tests that need CUDA (DALI's NVDEC decoder against PyAV, the GPU loader)
#   kernels     each kernel against its eager reference (correctness at the paper's shapes, bf16),
#               then timed against eager and torch.compile
#   throughput  real ViT-L SALT training steps, fused kernels against the references (--compare),
#               with the step model's prediction beside the measurement
#   aot         every kernel specialization of the step compiled for sm_80 / sm_90 / sm_100
#   roofline    the step model's predictions, for the report's predicted-vs-measured columns
#   data        the CPU loader against a V-JEPA 2-style one, and DALI where it is installed
#   report      REPORT.md from the JSON files above
# Output: DIR/{kernels,throughput,aot,roofline,data}_suite.json, DIR/summary.json, DIR/REPORT.md and DIR/suite.log
# (eight files: what the device tool brings back). Missing Python packages there (PyAV, DALI)
# make their steps fail with the import error in suite.log; carry them as wheels.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
out=benchmarks/results/local/gpu_suite
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
log="$out/suite.log"
: > "$log"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
tiny=(--model vit_tiny --teacher vit_tiny --depth 1 --batch-size 2 --frames 4 --resolution 32)

names=() codes=() seconds=()
step() {  # step NAME CMD...: run, log, time, remember the status
  local name=$1; shift
  echo "== $name: $*" | tee -a "$log"
  local start=$SECONDS
  "$@" >> "$log" 2>&1
  local rc=$?
  names+=("$name") codes+=("$rc") seconds+=($((SECONDS - start)))
  echo "   -> $([ "$rc" = 0 ] && echo ok || echo "FAILED (status $rc)") in $((SECONDS - start)) s" | tee -a "$log"
}

if [ "$dry" = 1 ]; then
  step install "$PY" -c "import salt_fast, salt_fast.kernels; print('salt_fast', salt_fast.__version__)"
  step gpu_tests "$PY" -m pytest -q -p no:cacheprovider tests/data/test_data_dali.py -k gpu
  step kernels "$PY" benchmarks/kernels.py --smoke --out "$out/kernels_suite.json"
  step throughput "$PY" benchmarks/throughput.py "${tiny[@]}" --stage salt --steps 2 --compare --out "$out/throughput_suite.json"
  step aot "$PY" benchmarks/aot.py --arch 90 --dtypes fp32 --out "$out/aot_suite.json"
  step roofline "$PY" benchmarks/roofline.py --model vit_small --teacher vit_small --batch-size 2 --frames 4 \
    --resolution 32 --stages salt --gpus h100 --out "$out/roofline_suite.json"
  step data "$PY" benchmarks/data.py --quick --out "$out/data_suite.json"
else
  step install "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  step gpu_tests "$PY" -m pytest -q -p no:cacheprovider tests/data/test_data_dali.py -k gpu
  step kernels "$PY" benchmarks/kernels.py --out "$out/kernels_suite.json"
  step throughput "$PY" benchmarks/throughput.py --model vit_l --teacher vit_l --stage salt --compare --out "$out/throughput_suite.json"
  step aot "$PY" benchmarks/aot.py --out "$out/aot_suite.json"
  step roofline "$PY" benchmarks/roofline.py --stages salt --gpus h100 h200 --out "$out/roofline_suite.json"
  step data "$PY" benchmarks/data.py --out "$out/data_suite.json"
fi
step report "$PY" benchmarks/report.py --results "$out" --out "$out/REPORT.md"

failed=0
{
  printf '{"dry_run": %s, "steps": [' "$([ "$dry" = 1 ] && echo true || echo false)"
  for i in "${!names[@]}"; do
    [ "${codes[$i]}" = 0 ] || failed=1
    printf '%s{"step": "%s", "status": %s, "seconds": %s}' "$([ "$i" = 0 ] || echo ,)" "${names[$i]}" "${codes[$i]}" "${seconds[$i]}"
  done
  printf '], "total_seconds": %s, "commit": "%s"}\n' "$SECONDS" "$(git rev-parse HEAD 2>/dev/null || echo unknown)"
} > "$out/summary.json"
echo
echo "gpu_suite: $([ "$failed" = 0 ] && echo "every step ok" || echo "SOME STEPS FAILED") in $SECONDS s; results in $out"
for i in "${!names[@]}"; do
  printf '  %-11s %-7s %4s s\n' "${names[$i]}" "$([ "${codes[$i]}" = 0 ] && echo ok || echo FAILED)" "${seconds[$i]}"
done
exit "$failed"
