#!/usr/bin/env bash
# On a machine with the package registry: the wheels the lent GPU machine's image lacks, for its
# python3 (CPython 3.12, manylinux x86_64), into DIR (default .whl, git-ignored). Carry DIR with
# the one device call; scripts/gpu_check.sh installs them there with no index and no deps.
#
#   scripts/gpu_wheels.sh [DIR]
#
# What is missing is derived, not listed: requirements.txt minus scripts/device_image_packages.txt,
# then each wheel's dependencies the same way (scripts/device_image.py). deepspeed ships only a
# source archive: its wheel is built here with DS_BUILD_OPS=0 (no ops compiled ahead; it builds
# what it uses when first called, as on any machine). The wheels travel inside the 64 MiB that
# the device call may carry, beside the working tree: their total must stay under 40 MiB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${1:-.whl}"
LIMIT_MIB=40
mkdir -p "$DIR"
# deepspeed's setup.py imports torch: build with an interpreter that has it.
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
# This machine's pip config names local index folders that may not exist; pip warns per package.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

for pass in 1 2; do
  source_only="$(quiet "$PY" scripts/device_image.py missing "$DIR" | grep -v '^ERROR\|^WARNING' || true)"
  [ -z "$source_only" ] && break
  [ "$pass" = 2 ] && { echo "[gpu_wheels] FAIL: no wheel could be had for: $source_only"; exit 1; }
  for spec in $source_only; do
    echo "[gpu_wheels] building a wheel of $spec (source only on the index)"
    # DS_ACCELERATOR=cuda: the device's accelerator, recorded in the wheel's build info.
    quiet env DS_BUILD_OPS=0 DS_ACCELERATOR=cuda "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation --no-binary :all: \
      -w "$DIR" "$spec"
  done
done

# One version of each package: two stop the offline install there.
dupes="$(ls "$DIR"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | sort | uniq -d)"
[ -z "$dupes" ] || { echo "[gpu_wheels] FAIL: more than one wheel of: $dupes (empty $DIR and rerun)"; exit 1; }
ls -1 "$DIR"/*.whl | xargs -n1 basename
bytes=$(cat "$DIR"/*.whl | wc -c)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "[gpu_wheels] $(ls "$DIR"/*.whl | wc -l) wheels in $DIR, ${mib} MiB (limit ${LIMIT_MIB} MiB)"
[ "$mib" -lt "$LIMIT_MIB" ] || { echo "[gpu_wheels] FAIL: ${mib} MiB of wheels leaves too little of the 64 MiB a device call carries"; exit 1; }
