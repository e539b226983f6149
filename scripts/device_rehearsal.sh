#!/usr/bin/env bash
# Rehearse the lent GPU machine's first contact here, on CPU (issue 24): a Python 3.12 venv with
# the device image's versions (built once, cached in $REHEARSAL_CACHE/device_venv), then from a
# clean clone of this repo's HEAD with the network cut (unshare -n): the offline install of
# .whl, the editable build with the CUDA extension for sm_90, pytest collection with 0 errors,
# the whole CPU suite, and scripts/gpu_check.sh, which must stop at its first step that needs a
# GPU. The last line is a one-line summary.
#
#   scripts/device_rehearsal.sh              # everything (the CPU suite takes long on 2 cores)
#   scripts/device_rehearsal.sh --venv-only  # the wheels and the cached venv, then stop
#   REHEARSAL_PYTEST_ARGS="-n 2" ...         # extra pytest arguments for the CPU suite
# Needs: python3.12, root (unshare -n), nvcc, the registry (for the venv and .whl only).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${REHEARSAL_CACHE:-$HOME/.cache/precise_fast}"
VENV="$CACHE/device_venv"
WHEELS="$CACHE/whl"
say() { echo "[rehearsal] $*"; }
# This machine's pip config names local index folders that may not exist; pip warns per package.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
die() { echo "[rehearsal] FAIL: $*"; exit 1; }
# A pyenv shim answers "command not found" unless 3.12 is the selected version: ask pyenv.
PY312="${PY312:-python3.12}"
if ! "$PY312" --version >/dev/null 2>&1; then
  PY312="$(ls -d "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)"
fi
"${PY312:-false}" --version >/dev/null 2>&1 || die "no python3.12 (set PY312=/path/to/python3.12)"

# The stand-in for the device's python3: the image's versions of what the project uses.
build_venv() {
  local specs constraints stamp
  specs="$(python3 "$ROOT/scripts/device_image.py" specs "$WHEELS")" || die "reading the device image's package list"
  constraints="$(python3 "$ROOT/scripts/device_image.py" constraints)"
  stamp="$(printf '%s\n%s\n' "$specs" "$constraints" | sha256sum | cut -c1-16)"
  if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then
    say "venv $VENV is current"
    return 0
  fi
  say "building $VENV ($("$PY312" --version)): $(echo "$specs" | tr '\n' ' ')"
  # A changed list installs into the venv there (torch alone is gigabytes to fetch again).
  [ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV" || die "python3.12 -m venv"
  quiet "$VENV/bin/python" -m pip install -q --upgrade pip || die "upgrading pip in $VENV"
  printf '%s\n' "$constraints" >"$VENV/constraints.txt"
  # shellcheck disable=SC2086
  PIP_CONSTRAINT="$VENV/constraints.txt" quiet "$VENV/bin/python" -m pip install -q --upgrade --no-cache-dir $specs \
    || die "installing the device image's versions into $VENV"
  echo "$stamp" >"$VENV/.stamp"
  "$VENV/bin/python" -c "import torch, triton, transformers, numpy; print('[rehearsal] venv: torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)"
}

# The wheels the device lacks: the repo's .whl when it holds some, else a cached set.
shopt -s nullglob
carried=("$ROOT"/.whl/*.whl)
shopt -u nullglob
if [ ${#carried[@]} -gt 0 ]; then
  WHEELS="$ROOT/.whl"
else
  bash "$ROOT/scripts/gpu_wheels.sh" "$WHEELS" | tail -n 1 || die "scripts/gpu_wheels.sh $WHEELS"
fi

build_venv
[ "${1:-}" = "--venv-only" ] && exit 0

WORK="$(mktemp -d "${TMPDIR:-/tmp}/device_rehearsal.XXXXXX")"
say "clean clone of $(git -C "$ROOT" rev-parse --short HEAD) in $WORK/repo (uncommitted changes are not rehearsed)"
git clone -q "$ROOT" "$WORK/repo" || die "git clone"
mkdir -p "$WORK/repo/.whl" && cp "$WHEELS"/*.whl "$WORK/repo/.whl/"
# The device's python3 is one environment that the check installs into; here a thin venv that
# sees the cached one through a .pth file (and its pip), so the cache stays as the image is.
"$PY312" -m venv --without-pip "$WORK/venv" || die "the thin venv"
"$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
  >"$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/device_image.pth"

# Everything below runs with the network cut, as on the device (the loopback stays: the
# launcher and reward-worker tests talk over it).
cat >"$WORK/offline.sh" <<'OFFLINE'
set -uo pipefail
ip link set lo up
cd "$WORK/repo"
PY="$WORK/venv/bin/python"
# The offline install and the build first, without the device's time limits (this host's two
# cores take minutes over the CUDA extension); the check's own build step then finds it done.
t0=$(date +%s)
PYTHON="$PY" bash scripts/gpu_check.sh --setup-only "$WORK/setup_out" >"$WORK/setup.log" 2>&1
echo "setup_status=$? setup_s=$(( $(date +%s) - t0 ))" >"$WORK/facts"
# ptxas's options ride in the fatbinary: sm_90 machine code, FMA contraction off.
so=$(ls precise_fast/_C*.so 2>/dev/null | head -n 1)
echo "sm90=$(grep -a -c -- '-arch sm_90 -m 64 -fmad false' "${so:-/dev/null}")" >>"$WORK/facts"
t0=$(date +%s)
PYTHON="$PY" bash scripts/gpu_check.sh "$WORK/gpu_out" >"$WORK/gpu_check.log" 2>&1
echo "gpu_check_status=$? gpu_check_s=$(( $(date +%s) - t0 ))" >>"$WORK/facts"
t0=$(date +%s)
"$PY" -m pytest --collect-only -q -p no:cacheprovider tests >"$WORK/collect.log" 2>&1
echo "collect_status=$? collect_s=$(( $(date +%s) - t0 ))" >>"$WORK/facts"
[ "${REHEARSAL_SKIP_SUITE:-0}" = 1 ] && exit 0
t0=$(date +%s)
# shellcheck disable=SC2086
"$PY" -m pytest -q -p no:cacheprovider tests ${REHEARSAL_PYTEST_ARGS:-} --junitxml="$WORK/suite.xml" >"$WORK/suite.log" 2>&1
echo "suite_status=$? suite_s=$(( $(date +%s) - t0 ))" >>"$WORK/facts"
OFFLINE
say "offline: gpu_check.sh (wheels, build, preflight), collection, the CPU suite; logs in $WORK"
WORK="$WORK" unshare -n bash "$WORK/offline.sh" || die "unshare -n (needs root)"
# shellcheck disable=SC1091
. <(tr ' ' '\n' <"$WORK/facts" | sed 's/^/export /')

problems=()
[ "${setup_status:-1}" = 0 ] || problems+=("offline install or build: $(tail -n 1 "$WORK/setup.log")")
grep -q '^\[gpu_check\] wheels (' "$WORK/gpu_check.log" && grep -q '^\[gpu_check\] build (' "$WORK/gpu_check.log" \
  && ! grep -q '^\[gpu_check\] \(wheels\|build\) FAILED' "$WORK/gpu_check.log" || problems+=("gpu_check.sh's own setup steps")
[ "${sm90:-0}" -gt 0 ] || problems+=("no sm_90 code in precise_fast/_C")
stop_line="$(grep '^\[gpu_check\] STOP' "$WORK/gpu_check.log" | tail -n 1)"
[[ "$stop_line" == *"no CUDA GPU"* ]] || problems+=("gpu_check.sh did not stop at the GPU: ${stop_line:-no STOP line}")
n_tests=$(grep -oE '^[0-9]+ tests? collected' "$WORK/collect.log" | grep -oE '^[0-9]+')
n_errors=$(grep -oE '[0-9]+ errors?' "$WORK/collect.log" | grep -oE '^[0-9]+' | tail -n 1)
[ "${collect_status:-1}" = 0 ] && [ -z "$n_errors" ] || problems+=("collection: ${n_errors:-?} errors")
suite="not run"
if [ -n "${suite_s:-}" ]; then
  suite="$("$PY312" - "$WORK/suite.xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("no JUnit XML"); sys.exit()
s = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
n = {k: sum(int(x.get(k, 0)) for x in s) for k in ("tests", "failures", "errors", "skipped")}
print(f"{n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, {n['failures']} failed, "
      f"{n['errors']} errors, {n['skipped']} skipped")
PYEOF
)"
  [ "${suite_status:-1}" = 0 ] || problems+=("the CPU suite")
fi
grep -h '^\(FAILED\|ERROR\) ' "$WORK/suite.log" 2>/dev/null | head -n 30
summary="offline install + build ${setup_s:-?} s, sm_90 code $([ "${sm90:-0}" -gt 0 ] && echo present || echo MISSING); gpu_check stopped at '${stop_line#\[gpu_check\] STOP: }' after ${gpu_check_s:-?} s; collection ${n_tests:-?} tests, ${n_errors:-0} errors (${collect_s:-?} s); CPU suite ${suite} (${suite_s:-0} s); torch 2.11.0 / triton 3.6.0 / transformers 5.17.0 / numpy 2.5.2, Python 3.12, network cut"
if [ ${#problems[@]} -eq 0 ]; then
  say "PASS: $summary"
else
  say "FAIL ($(IFS=';'; echo "${problems[*]}")): $summary"
  exit 1
fi
