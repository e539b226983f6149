#!/usr/bin/env bash
# Compile csrc/*.cu with nvcc for sm_90 so the CUDA kernels cannot rot on GPU-less CI.
# Object files only (nothing is linked or run); exits non-zero on a compile error, and 0
# with a clear SKIP line only when no CUDA toolkit can be found at all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

# The nvcc on PATH may be a wrapper script: use a real toolkit folder (bin/nvcc + include/).
find_toolkit() {
  local cand site
  for cand in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-*; do
    if [ -n "$cand" ] && [ -x "$cand/bin/nvcc" ] && [ -f "$cand/include/cuda_runtime.h" ]; then
      echo "$cand"; return 0
    fi
  done
  site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)"
  for cand in "$site/nvidia/cu13" "$site/nvidia/cuda_nvcc" "$site/nvidia/cu12"; do
    if [ -x "$cand/bin/nvcc" ] && [ -f "$cand/include/cuda_runtime.h" ]; then
      echo "$cand"; return 0
    fi
  done
  return 1
}

if ! CUDA_HOME="$(find_toolkit)"; then
  echo "SKIP compile_cuda: no CUDA toolkit (bin/nvcc with include/cuda_runtime.h) found; CUDA kernels not compiled"
  exit 0
fi
export CUDA_HOME TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
NVCC="$CUDA_HOME/bin/nvcc"
echo "compile_cuda: $("$NVCC" --version | tail -n 1) from $CUDA_HOME, arch sm_90"

TORCH_INC="$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null | tr ' ' '\n' | grep -v '^$' | sed 's/^/-I/' | tr '\n' ' ')"
PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
BUILD="$(mktemp -d "${TMPDIR:-/tmp}/precise_fast_cuda.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT

status=0
shopt -s nullglob
sources=("$ROOT"/csrc/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "compile_cuda: no csrc/*.cu sources" >&2
  exit 1
fi
for src in "${sources[@]}"; do
  obj="$BUILD/$(basename "$src" .cu).o"
  # The flags of torch's CUDAExtension build (setup.py) plus -Werror on nvcc's own
  # cross-execution-space warnings, which flag host functions called from device code.
  # shellcheck disable=SC2086
  if "$NVCC" -c "$src" -o "$obj" -std=c++20 -O3 --fmad=false \
      -gencode arch=compute_90,code=sm_90 \
      --expt-relaxed-constexpr -Xcompiler -fPIC \
      -DTORCH_EXTENSION_NAME=_C -DPRECISE_FAST_WITH_CUDA=1 \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
      -Werror cross-execution-space-call \
      -I"$ROOT/csrc" $TORCH_INC -I"$PY_INC" -I"$CUDA_HOME/include"; then
    echo "compile_cuda: OK $(basename "$src") ($(stat -c %s "$obj") bytes of sm_90 object)"
  else
    echo "compile_cuda: FAILED $(basename "$src")" >&2
    status=1
  fi
done
exit $status
