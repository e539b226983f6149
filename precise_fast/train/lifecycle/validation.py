"""Checks of the reward setup that run before any model loads (a 4B model takes minutes).

The reward is built first: an unknown reward name or option is a :class:`ConfigError`
naming ``reward.spec``; missing reward weights raise the rewards layer's
:class:`~precise_fast.model_paths.WeightsNotFoundError` naming the file. Then every
component's own input check (``_check_inputs``, e.g. GenEval's "each prompt needs its
``tag`` / ``include`` metadata") runs once over the whole prompt set, so a ``.txt`` prompt
set fed to GenEval fails here rather than at the first reward call.

``train.lora_path`` is checked against the adapter the run will build (targets and shapes)
on a transformer built from its config on the meta device: no weights read, no memory.
"""

from __future__ import annotations

import warnings

import torch

from ...model_paths import resolve_model_path
from ...models import apply_lora, check_pipeline_folder, init_lora_from
from ...rewards import build_reward
from ..config import ConfigError


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


def check_start_lora(cfg, model_path) -> None:
    """``train.lora_path`` fits the adapter this run builds (same targets and shapes), or a
    :class:`ConfigError` naming the key; checked before the model's weights load."""
    if not cfg.train.lora_path or cfg.model.finetune != "lora":
        return
    # diffusers takes seconds to import: the other checks before the model loads, and a start
    # they refuse, do without it.
    from accelerate import init_empty_weights
    from diffusers import Flux2Transformer2DModel

    m = cfg.model
    folder = check_pipeline_folder(resolve_model_path(model_path, root=m.model_root))
    with init_empty_weights():
        transformer = Flux2Transformer2DModel.from_config(Flux2Transformer2DModel.load_config(str(folder / "transformer")))
    apply_lora(transformer, rank=m.lora_rank, alpha=m.lora_alpha, init=m.lora_init, targets=m.lora_targets)
    try:
        with warnings.catch_warnings():  # loading into meta tensors stores nothing, as intended here
            warnings.filterwarnings("ignore", message=".*to a meta parameter.*")
            init_lora_from(transformer, cfg.train.lora_path)  # compares names and shapes first
    except (ValueError, FileNotFoundError) as err:
        message = str(err)
        raise ConfigError(message if message.startswith("train.lora_path") else f"train.lora_path: {message}") from None
