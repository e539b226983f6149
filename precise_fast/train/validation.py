"""Checks of the reward setup that run before any model loads (a 4B model takes minutes).

The reward is built first: an unknown reward name or option is a :class:`ConfigError`
naming ``reward.spec``; missing reward weights raise the rewards layer's
:class:`~precise_fast.rewards.paths.MissingCheckpointError` naming the file. Then every
component's own input check (``_check_inputs``, e.g. GenEval's "each prompt needs its
``tag`` / ``include`` metadata") runs once over the whole prompt set, so a ``.txt`` prompt
set fed to GenEval fails here rather than at the first reward call.
"""

from __future__ import annotations

import torch

from ..rewards import build_reward
from .config import ConfigError


def build_checked_reward(cfg, *, device: torch.device, dtype: torch.dtype, prompt_sets: dict):
    """The run's reward; ``prompt_sets`` maps a config key (``prompts.train``) to its PromptSet."""
    r = cfg.reward
    try:
        reward = build_reward(r.spec, device=device, dtype=dtype, model_root=r.model_root)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, FileNotFoundError):  # missing weights: already names the file
            raise
        raise ConfigError(f"reward.spec: {err.args[0] if err.args else err}") from None
    try:
        for name, component in reward.components.items():
            check = getattr(component, "_check_inputs", None)
            if check is None:
                continue
            for key, prompt_set in prompt_sets.items():
                if prompt_set is None:
                    continue
                try:
                    check(None, list(prompt_set.prompts), list(prompt_set.metadata))
                except ValueError as err:
                    raise ConfigError(f"reward.spec: {err} ({key}: {prompt_set.path})") from None
    except BaseException:
        reward.close()
        raise
    return reward
