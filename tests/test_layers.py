"""The package's layers are a checked promise (.importlinter, docs/ARCHITECTURE.md).

``lint-imports`` checks three contracts: the package layers (cli over eval / launch / toy over
train over rollout / rewards over models over sde over the leaves), train's own layers (entry
points over the trainer over report over phases over state / policy over lifecycle / grpo over
config) and no import cycle between the modules or subpackages of any package. The Triton
kernels ship as ``precise_fast.kernels`` from ``kernels/`` (setup.py's package_dir), outside
the folder import-linter reads, so their one allowed import is checked here.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    # requirements.txt installs it for `make test`; the GPU machine's image lacks it (.ci/run runs
    # lint-imports itself, so CI fails when it is missing).
    pytest.importorskip("importlinter")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is installed but its lint-imports command is not beside this Python"
    proc = subprocess.run([exe, "--no-cache", "--config", str(REPO / ".importlinter")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_kernels_import_only_the_kind_table():
    """The Triton backend sits below sde: of the package it may read only precise_fast.kinds."""
    imported = set()
    for path in (REPO / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("precise_fast")):
                imported.add(("." * node.level) + (node.module or ""))
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("precise_fast"))
    assert imported <= {"precise_fast.kinds"}, imported
