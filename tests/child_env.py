"""The environment of a training / eval process a test starts (launcher, CLI or a rank)."""

from __future__ import annotations

import os

# Set in this process by an in-process test group (tests/train/conftest.py: dist1); a child
# that inherited them would join that group instead of making its own. The crash hook's
# variable is cleared too: a test that wants a crash sets it on the returned dict.
_INHERITED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PRECISE_FAST_CRASH_AT")


def child_env() -> dict[str, str]:
    """``os.environ`` for a CPU child: one intra-op thread, DeepSpeed's CPU accelerator."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for key in _INHERITED:
        env.pop(key, None)
    return env
