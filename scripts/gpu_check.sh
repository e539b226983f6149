#!/usr/bin/env bash
# The one GPU check (issues 12, 24), for the lent machine as it is: no network, no registry, a
# python3 that holds torch, at most 8 files back from OUT. In at most BUDGET_S seconds:
#   wheels     install .whl/*.whl offline (what the image lacks: scripts/gpu_wheels.sh made them)
#   build      the project, editable, with the CUDA extension for sm_90
#   preflight  GPU, versions, an import of every needed package, the _C CUDA kernel
#   gpu_tests  every gpu-marked test, GPU_TESTS_FIRST first (JUnit: gpu_tests.xml; the report names
#              any the step had no time for); triton_on_gpu: the Triton launch checks
#   gpu_*      the GPU benchmarks (bench/gpu_*.py --out OUT/NAME.json)
# then bench/gpu_report.py writes OUT/gpu_report.json and .md; the logs go in OUT/logs.tar.gz.
# A failed wheels / build / preflight step stops the check with one line "[gpu_check] STOP: ...".
# Exit status: the report's (non-zero when any step failed).
#
#   bash scripts/gpu_check.sh OUT            # on the GPU machine (carry .whl)
#   bash scripts/gpu_check.sh --dry-run OUT  # CPU CI: parses, limits within the budget, files
#                                            # in OUT <= 8, GPU tests collect, benchmarks import
#   bash scripts/gpu_check.sh --setup-only OUT  # the wheels and build steps alone, without the
#                                            # time limits (scripts/device_rehearsal.sh: a 2-core
#                                            # host builds the CUDA extension in ~6 min)
# The interpreter: $PYTHON if set, else python3 if it imports torch with CUDA, else .venv.
# GPU_CHECK_SKIP_SETUP=1 skips the wheels and build steps (the environment is ready).
# A second call on the same lease: GPU_CHECK_ONLY="gpu_tests ..." runs those steps alone (after
# the setup steps, which a warm machine passes in seconds) and gives them the others' time;
# GPU_TESTS_FROM=FILE makes gpu_tests run FILE's node ids (one a line) or, for a gpu_report.json,
# its tests' "rerun" list (the failed, then those the first call had no time for).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY=0
SETUP_ONLY=0
case "${1:-}" in
  --dry-run) DRY=1; shift ;;
  --setup-only) SETUP_ONLY=1; shift ;;
esac
if [ $# -ne 1 ]; then
  echo "usage: scripts/gpu_check.sh [--dry-run | --setup-only] OUT" >&2
  exit 2
fi
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"

# The budget and each step's share of it, in one place. A step may use what earlier steps left
# unused, never the share of a later one. The device call's own limit is 600 s and a lease has
# 15 minutes with a 1-2 minute start: 480 s leaves room for the start and one rerun. The
# benchmarks keep about a third (the share they had of the first plan's 860 s).
BUDGET_S=480
SETUP_STEPS=(wheels build preflight)  # every call runs these (a warm machine passes them in seconds)
STEPS=("${SETUP_STEPS[@]}" gpu_tests triton_on_gpu gpu_fused_step gpu_rollout gpu_train_step)
declare -A SHARE=([wheels]=15 [build]=90 [preflight]=20 [gpu_tests]=165 [triton_on_gpu]=20
                  [gpu_fused_step]=50 [gpu_rollout]=60 [gpu_train_step]=60)
# What each step leaves in OUT (the first word: its JUnit XML or JSON); the rest of OUT is the
# report and the log archive. Each is written in place, so a check cut short still brings back
# what it finished. The trainer's end-to-end GPU tests write their figures to $GPU_REPORT_DIR.
declare -A OUTPUT=([gpu_tests]="gpu_tests.xml trainer_end_to_end.json" [gpu_fused_step]=gpu_fused_step.json
                   [gpu_rollout]=gpu_rollout.json [gpu_train_step]=gpu_train_step.json)
FINAL_FILES=(gpu_report.json gpu_report.md logs.tar.gz)
MAX_OUT_FILES=8          # what the device tool brings back
PER_TEST_TIMEOUT_S=90    # pytest-timeout: one hung test fails alone
KILL_AFTER_S=15          # after INT (pytest then writes its JUnit XML), KILL
# Not gpu-marked (they run wherever Triton runs), but on a GPU host they check what CUDA compiles.
TRITON_GPU_TESTS=(
  tests/kernels/test_op_registration.py::test_triton_ops_use_the_triton_op_registration_shipped_for_gpu
  tests/kernels/test_op_registration.py::test_every_triton_launch_disables_fp_fusion
)
# The GPU tests that run first, in this order (node-id prefixes; tests/conftest.py orders them):
# one broad check of each layer before the kernels' full dtype x kind matrix, so a test step cut
# at its limit has touched every part. The report names what did not finish.
GPU_TESTS_FIRST=(
  tests/kernels/test_sm90_compile.py
  tests/kernels/test_op_registration.py
  tests/kernels/test_noise_stream.py
  tests/kernels/test_fused_step_cpu.py::test_full_size
  tests/kernels/test_fused_step_triton.py::test_full_size
  tests/models
  tests/rewards
  tests/rollout
  tests/train
)
BENCHES=(bench/gpu_fused_step.py bench/gpu_rollout.py bench/gpu_train_step.py)
# The device has no network: let nothing wait on one.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# torch looks for CUDA beside `which nvcc`: a wrapper script there (/usr/local/bin/nvcc on the
# rehearsal host) would point it at /usr/local.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if command -v python3 >/dev/null && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    command -v python3; return
  fi
  echo "$ROOT/.venv/bin/python"
}

sum_shares() { local s=0 n; for n in "${STEPS[@]}"; do s=$(( s + SHARE[$n] )); done; echo "$s"; }
out_files() { local n; for n in "${STEPS[@]}"; do [ -n "${OUTPUT[$n]:-}" ] && printf '%s\n' ${OUTPUT[$n]}; done; printf '%s\n' "${FINAL_FILES[@]}"; }

if [ "$DRY" = 1 ]; then
  PY="${PYTHON:-$ROOT/.venv/bin/python}"
  [ -x "$PY" ] || PY="$(command -v python3)"
  fail() { echo "[gpu_check] FAIL: $*"; exit 1; }
  bash -n "${BASH_SOURCE[0]}" || fail "the script does not parse"
  total=$(sum_shares)
  [ "$total" -le "$BUDGET_S" ] || fail "the step shares add up to ${total} s, over the ${BUDGET_S} s budget"
  n_files=$(out_files | sort -u | wc -l)
  [ "$n_files" -le "$MAX_OUT_FILES" ] || fail "$n_files files would land in OUT; the device brings back $MAX_OUT_FILES"
  for f in "${BENCHES[@]}" bench/gpu_report.py scripts/gpu_preflight.py; do
    [ -f "$f" ] || fail "$f does not exist"
  done
  for f in "${BENCHES[@]}"; do
    n=$(basename "$f" .py)
    [ -n "${SHARE[$n]:-}" ] && [ "${OUTPUT[$n]:-}" = "$n.json" ] || fail "$f has no step of its own"
  done
  "$PY" -m pytest --collect-only -q -m gpu -p no:cacheprovider tests >"$OUT/gpu_collect.txt" 2>&1
  status=$?
  errors=$(grep -cE '^(ERROR|E  )' "$OUT/gpu_collect.txt")
  if [ "$status" -ne 0 ] || [ "$errors" -ne 0 ]; then
    tail -n 30 "$OUT/gpu_collect.txt"; fail "collecting the GPU tests (pytest status $status, $errors error lines)"
  fi
  n_gpu=$(grep -c '::' "$OUT/gpu_collect.txt")
  [ "$n_gpu" -gt 0 ] || fail "no gpu-marked test collected"
  for p in "${GPU_TESTS_FIRST[@]}"; do
    awk -v p="$p" 'index($0, p) == 1 { found = 1 } END { exit !found }' "$OUT/gpu_collect.txt" \
      || fail "GPU_TESTS_FIRST names $p, which no collected GPU test starts with"
  done
  "$PY" -m pytest --collect-only -q -p no:cacheprovider "${TRITON_GPU_TESTS[@]}" >"$OUT/triton_collect.txt" 2>&1 \
    || { cat "$OUT/triton_collect.txt"; fail "a Triton test named here does not exist"; }
  for f in "${BENCHES[@]}" bench/gpu_report.py; do
    "$PY" - "$f" <<'PYEOF' || fail "$f does not import"
import importlib.util, sys
spec = importlib.util.spec_from_file_location("gpu_check_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(getattr(module, "main", None)), f"{sys.argv[1]} has no main()"
PYEOF
  done
  echo "[gpu_check] dry run ok: shares ${total}/${BUDGET_S} s, ${n_files}/${MAX_OUT_FILES} files in OUT, ${n_gpu} GPU tests collect with 0 errors, ${#BENCHES[@]} benchmarks import"
  exit 0
fi

# A second call's choices, checked before any setup time is spent on them.
if [ -n "${GPU_CHECK_ONLY:-}" ]; then
  kept=("${SETUP_STEPS[@]}")
  choices="${STEPS[*]:${#SETUP_STEPS[@]}}"
  for n in $GPU_CHECK_ONLY; do
    case " $choices " in
      *" $n "*) kept+=("$n") ;;
      *) echo "[gpu_check] STOP: GPU_CHECK_ONLY names '$n'; the steps after the setup are: $choices"; exit 2 ;;
    esac
  done
  STEPS=("${kept[@]}")
fi
if [ -n "${GPU_TESTS_FROM:-}" ] && [ ! -f "$GPU_TESTS_FROM" ]; then
  echo "[gpu_check] STOP: GPU_TESTS_FROM=$GPU_TESTS_FROM is not a file"; exit 2
fi

PY="$(pick_python)"
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_logs.XXXXXX")"
START=$(date +%s)
: >"$LOGS/steps.tsv"

# The report from what exists, then the logs into one archive: runs on every exit.
finish() {
  local status=${1:-1}
  trap - EXIT INT TERM
  if [ -x "$PY" ] || command -v "$PY" >/dev/null; then
    # The report's inputs from the logs sit in OUT only while it runs (OUT keeps 8 files).
    cp "$LOGS/steps.tsv" "$OUT/steps.tsv"
    [ -f "$LOGS/gpu_tests_collected.txt" ] && cp "$LOGS/gpu_tests_collected.txt" "$OUT/"
    "$PY" bench/gpu_report.py "$OUT" >"$LOGS/gpu_report.log" 2>&1 || status=1
    rm -f "$OUT/steps.tsv" "$OUT/gpu_tests_collected.txt"
    # The device tool's reply holds the console's last lines: the report is what to read first.
    [ -f "$OUT/gpu_report.md" ] && cat "$OUT/gpu_report.md"
  fi
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . && rm -rf "$LOGS"
  local n
  n=$(find "$OUT" -type f | wc -l)
  [ "$n" -le "$MAX_OUT_FILES" ] || echo "[gpu_check] WARNING: $n files in OUT; only $MAX_OUT_FILES come back"
  echo "[gpu_check] done in $(( $(date +%s) - START )) s, status $status; OUT: $(ls "$OUT" | tr '\n' ' ')"
  exit "$status"
}
trap 'finish 1' EXIT INT TERM

# The later steps' shares, so that no step eats into them.
later_shares() {
  local seen=0 s=0 n
  for n in "${STEPS[@]}"; do
    [ "$seen" = 1 ] && s=$(( s + SHARE[$n] ))
    [ "$n" = "$1" ] && seen=1
  done
  echo "$s"
}

# step NAME CMD...: CMD with its output in the log archive, within its share plus what earlier
# steps left; INT at the limit (pytest writes its JUnit XML), KILL 15 s later. Returns CMD's status.
step() {
  local name=$1 limit t0 status
  shift
  limit=$(( BUDGET_S - ($(date +%s) - START) - $(later_shares "$name") ))
  [ "$SETUP_ONLY" = 1 ] && limit=86400
  if [ "$limit" -le 0 ]; then
    echo "[gpu_check] $name: no time left of the ${BUDGET_S} s budget"
    printf '%s\t%d\t%d\n' "$name" 124 0 >>"$LOGS/steps.tsv"
    return 124
  fi
  echo "[gpu_check] $name (limit ${limit} s, $(( $(date +%s) - START )) s in)"
  t0=$(date +%s)
  timeout -s INT -k "$KILL_AFTER_S" "$limit" "$@" >"$LOGS/$name.log" 2>&1
  status=$?
  printf '%s\t%d\t%d\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >>"$LOGS/steps.tsv"
  if [ "$status" -ne 0 ]; then
    echo "[gpu_check] $name FAILED (status $status)"
    # A step that says why in one STOP line (the preflight) is quoted by setup_step alone.
    grep -q '^\[gpu_check\] STOP' "$LOGS/$name.log" || tail -n 15 "$LOGS/$name.log"
  fi
  return "$status"
}

# A setup step that fails ends the check: nothing after it could run.
setup_step() {
  local name=$1
  step "$@" && return 0
  local why
  why="$(grep -h '^\[gpu_check\] STOP' "$LOGS/$name.log" | tail -n 1)"
  [ -n "$why" ] && echo "$why" || echo "[gpu_check] STOP: the $name step failed (see $name.log in OUT/logs.tar.gz)"
  finish 1
}

echo "[gpu_check] python: $PY ($("$PY" --version 2>&1)); budget ${BUDGET_S} s; OUT $OUT"
"$PY" -c 'import sys' 2>/dev/null || { echo "[gpu_check] STOP: no usable Python at $PY (set PYTHON)"; finish 1; }
nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1 || echo "[gpu_check] nvidia-smi failed (its output is in the log archive)"
if [ "${GPU_CHECK_SKIP_SETUP:-0}" != 1 ]; then
  shopt -s nullglob
  wheels=(.whl/*.whl)
  shopt -u nullglob
  if [ ${#wheels[@]} -gt 0 ]; then
    setup_step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile "${wheels[@]}"
  else
    echo "[gpu_check] wheels: no .whl/*.whl carried; the interpreter must hold every package (preflight checks)"
  fi
  # The extension in place, then the package registered editable without building it again:
  # build_ext keeps its objects in build/ (ninja rebuilds only what changed: a rerun on a warm
  # machine costs seconds), where pip's editable build starts from an empty folder each time.
  export PRECISE_FAST_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  setup_step build bash -c '"$0" setup.py -q build_ext --inplace &&
    PRECISE_FAST_SKIP_EXT=1 "$0" -m pip install -q --no-index --no-build-isolation --no-deps -e .' "$PY"
fi
[ "$SETUP_ONLY" = 1 ] && { echo "[gpu_check] setup done in $(( $(date +%s) - START )) s"; rm -rf "$LOGS"; trap - EXIT INT TERM; exit 0; }
setup_step preflight "$PY" scripts/gpu_preflight.py

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rs --continue-on-collection-errors --timeout="$PER_TEST_TIMEOUT_S")
read -r gpu_junit _ <<<"${OUTPUT[gpu_tests]}"
selected=(-m gpu tests)
if [ -n "${GPU_TESTS_FROM:-}" ]; then
  mapfile -t selected < <(case "$GPU_TESTS_FROM" in
    *.json) "$PY" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["tests"]["rerun"]))' "$GPU_TESTS_FROM" ;;
    *) cat "$GPU_TESTS_FROM" ;;
  esac | grep -v '^[[:space:]]*$')
  echo "[gpu_check] gpu_tests: ${#selected[@]} tests from $GPU_TESTS_FROM"
fi
planned() { case " ${STEPS[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
if planned gpu_tests && [ ${#selected[@]} -gt 0 ]; then
  PRECISE_FAST_TESTS_FIRST="${GPU_TESTS_FIRST[*]}" PRECISE_FAST_TESTS_COLLECTED="$LOGS/gpu_tests_collected.txt" \
    GPU_REPORT_DIR="$OUT" step gpu_tests "${PYTEST[@]}" "${selected[@]}" --junitxml="$OUT/$gpu_junit"
fi
planned triton_on_gpu && step triton_on_gpu "${PYTEST[@]}" "${TRITON_GPU_TESTS[@]}" --junitxml="$LOGS/triton_tests.xml"
for bench in "${BENCHES[@]}"; do
  name=$(basename "$bench" .py)
  planned "$name" && step "$name" "$PY" "$bench" --out "$OUT/${OUTPUT[$name]}"
done
finish 0
