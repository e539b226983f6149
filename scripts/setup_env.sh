#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and build the package with
# its C++ extension. Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# This machine's pip config lists a local index folder that may not exist; pip warns once
# per package about it. Keep the log readable without hiding real errors.
quiet_pip() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.precise_fast_requirements
if ! cmp -s requirements.txt "$stamp" 2>/dev/null; then
    echo "[setup] installing pinned requirements (torch comes from the local wheel cache)"
    quiet_pip .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
    quiet_pip .venv/bin/python -m pip install --quiet -r requirements.txt
    cp requirements.txt "$stamp"
fi
echo "[setup] building precise_fast (C++ CPU extension, OpenMP)"
MAX_JOBS=${MAX_JOBS:-2} quiet_pip .venv/bin/python -m pip install --quiet --no-build-isolation --no-deps -e .
.venv/bin/python -c "import precise_fast, torch; print('[setup] precise_fast', precise_fast.__version__, 'torch', torch.__version__)"
