#!/usr/bin/env bash
# The one GPU check (issue 12): on a machine with one CUDA GPU, from a fresh clone, in at most
# 8 minutes: set up .venv and build the CUDA extension, run every GPU-marked test
# (`pytest -m gpu`), then the GPU benchmarks (fused step vs eager / torch.compile with % of
# HBM bandwidth; rollout of the real-width model, CUDA graph vs eager; one bf16 training
# update at real width with tokens/s and MFU). Writes OUT/gpu_report.json and
# OUT/gpu_report.md (plus one log per step) and exits non-zero on any failure.
#
#   scripts/gpu_check.sh OUT            # on the GPU machine
#   scripts/gpu_check.sh --dry-run OUT  # CPU CI: the script parses, every test file it names
#                                       # holds GPU tests, every benchmark it calls imports
# GPU_CHECK_SKIP_SETUP=1 uses the existing .venv and extension build as they are.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: scripts/gpu_check.sh [--dry-run] OUT" >&2
  exit 2
fi
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

# Test files holding @pytest.mark.gpu tests this check must run (each must collect >= 1);
# the run itself selects every gpu-marked test under tests/.
GPU_TEST_FILES=(
  tests/kernels/test_fused_step_cpu.py
  tests/kernels/test_fused_step_triton.py
  tests/kernels/test_noise_stream.py
  tests/kernels/test_op_registration.py
  tests/models/test_attention.py
  tests/rollout/test_capture.py
  tests/rollout/test_capture_gpu.py
  tests/rewards/test_executor_gpu.py
)
# Not gpu-marked (they run wherever Triton runs) but they check what a GPU compiles: run by name.
TRITON_GPU_TESTS=(
  tests/kernels/test_op_registration.py::test_triton_ops_use_the_triton_op_registration_shipped_for_gpu
  tests/kernels/test_op_registration.py::test_every_triton_launch_disables_fp_fusion
)
BENCHES=(bench/gpu_fused_step.py bench/gpu_rollout.py bench/gpu_train_step.py)
BUDGET_S=480

if [ "$DRY" = 1 ]; then
  [ -x "$PY" ] || PY="$(command -v python3)"
  bash -n "${BASH_SOURCE[0]}" || { echo "[gpu_check] FAIL: the script does not parse"; exit 1; }
  for f in "${GPU_TEST_FILES[@]}" "${BENCHES[@]}" bench/gpu_report.py; do
    [ -f "$f" ] || { echo "[gpu_check] FAIL: $f does not exist"; exit 1; }
  done
  if ! "$PY" -m pytest --collect-only -q -m gpu -p no:cacheprovider "${GPU_TEST_FILES[@]}" >"$OUT/gpu_collect.txt" 2>&1; then
    cat "$OUT/gpu_collect.txt"; echo "[gpu_check] FAIL: collecting the GPU tests"; exit 1
  fi
  for f in "${GPU_TEST_FILES[@]}"; do
    grep -q "^$f::" "$OUT/gpu_collect.txt" || { echo "[gpu_check] FAIL: $f holds no gpu-marked test"; exit 1; }
  done
  if ! "$PY" -m pytest --collect-only -q -p no:cacheprovider "${TRITON_GPU_TESTS[@]}" >"$OUT/triton_collect.txt" 2>&1; then
    cat "$OUT/triton_collect.txt"; echo "[gpu_check] FAIL: a Triton test named here does not exist"; exit 1
  fi
  for f in "${BENCHES[@]}" bench/gpu_report.py; do
    "$PY" - "$f" <<'PYEOF' || { echo "[gpu_check] FAIL: $f does not import"; exit 1; }
import importlib.util, sys
spec = importlib.util.spec_from_file_location("gpu_check_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(getattr(module, "main", None)), f"{sys.argv[1]} has no main()"
PYEOF
  done
  echo "[gpu_check] dry run ok: $(grep -c '::' "$OUT/gpu_collect.txt") GPU tests in ${#GPU_TEST_FILES[@]} files, ${#BENCHES[@]} benchmarks import"
  exit 0
fi

START=$(date +%s)
: >"$OUT/steps.tsv"
# step NAME LIMIT_S CMD...: runs CMD with its output in OUT/NAME.log, within the time left.
step() {
  local name=$1 limit=$2 t0 status left
  shift 2
  left=$(( BUDGET_S - ($(date +%s) - START) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 0 ]; then
    echo "[gpu_check] $name: no time left of the ${BUDGET_S} s budget"
    printf '%s\t%d\t%d\n' "$name" 124 0 >>"$OUT/steps.tsv"
    return
  fi
  echo "[gpu_check] $name (limit ${limit} s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  status=$?
  printf '%s\t%d\t%d\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >>"$OUT/steps.tsv"
  [ "$status" -eq 0 ] || { echo "[gpu_check] $name FAILED ($status), last lines:"; tail -n 20 "$OUT/$name.log"; }
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "[gpu_check] nvidia-smi failed (see $OUT/nvidia-smi.txt)"
if [ "${GPU_CHECK_SKIP_SETUP:-0}" != 1 ]; then
  step setup 240 env PRECISE_FAST_BUILD_CUDA=1 MAX_JOBS="$(nproc)" bash scripts/setup_env.sh
fi
step cuda_extension 60 "$PY" -c "
import torch
from precise_fast.sde import resolve_backend
assert torch.cuda.is_available(), 'no CUDA device visible to torch'
x = torch.empty(1, device='cuda')
assert resolve_backend('cuda', x) == 'cuda', 'the CUDA kernel of precise_fast._C is not built'
print(torch.cuda.get_device_name(), 'auto ->', resolve_backend('auto', x))
"
step gpu_tests 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests --junitxml="$OUT/gpu_tests.xml"
step triton_on_gpu 60 "$PY" -m pytest -q -p no:cacheprovider "${TRITON_GPU_TESTS[@]}"
for bench in "${BENCHES[@]}"; do
  name=$(basename "$bench" .py)
  step "$name" 100 "$PY" "$bench" --out "$OUT/$name.json"
done
"$PY" bench/gpu_report.py "$OUT"
