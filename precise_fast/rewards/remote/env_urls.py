"""Server URLs from the paper's environment variables, used when a spec gives no ``urls``.

Tencent-Hunyuan/Precise reads ``PRECISE_SDE_GENEVAL_URL`` (default
``http://127.0.0.1:18085``, set by ``launch/train.sh`` and ``eval/infer_eval.sh``) and
``PRECISE_SDE_UNIFIEDREWARD_URLS`` (comma-separated) before ``PRECISE_SDE_UNIFIEDREWARD_URL``
(``precise_sde/rewards/remote.py``); a ``/v1`` suffix on a UnifiedReward URL is accepted.
"""

from __future__ import annotations

import os

GENEVAL_ENV = "PRECISE_SDE_GENEVAL_URL"
UNIFIEDREWARD_ENVS = ("PRECISE_SDE_UNIFIEDREWARD_URLS", "PRECISE_SDE_UNIFIEDREWARD_URL")
UNIFIEDREWARD_CONCURRENCY_ENV = "PRECISE_SDE_UNIFIEDREWARD_CONCURRENCY"

_ENVS = {"geneval": (GENEVAL_ENV,), "unifiedreward": UNIFIEDREWARD_ENVS}


def env_names(family: str) -> tuple[str, ...]:
    return _ENVS.get(family, ())


def urls_from_env(family: str) -> list[str]:
    """The first non-empty variable of ``family`` ("geneval", "unifiedreward") as a URL list."""
    for name in env_names(family):
        value = os.environ.get(name, "").strip()
        if value:
            return [u.strip() for u in value.split(",") if u.strip()]
    return []
