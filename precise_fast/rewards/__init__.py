"""Reward layer: the scorers of the Precise recipe, loaded from local weights, plus remote
reward clients and an overlap executor.

    from precise_fast.rewards import build_reward, RewardExecutor, normalize_rewards

    reward = build_reward("mix", device="cuda", dtype=torch.bfloat16)   # PickScore+CLIPScore+HPSv2.1
    result = reward(images, prompts, metadata)        # RewardResult(per_component, combined, valid, ...)

    # distributed: gather result.per_component / result.component_valid over ranks, then
    combined, valid = normalize_rewards(gathered, reward.weights, gathered_valid)

Model files: see :mod:`precise_fast.model_paths` (``$PRECISE_FAST_MODEL_ROOT``).
Heavy libraries (transformers, open_clip) are imported only when a scorer that needs them
is built.
"""

from .base import (
    SENTINEL,
    MultiReward,
    RewardModel,
    RewardResult,
    ScoreOutput,
    combine_rewards,
    normalize_rewards,
    standardize,
)
from .executor import RewardExecutor
from .registry import PRESETS, available_rewards, build_reward, build_scorer, parse_spec, register_reward
from .remote.http import RemoteRewardError, RetryPolicy

__all__ = [
    "PRESETS",
    "SENTINEL",
    "MultiReward",
    "RemoteRewardError",
    "RetryPolicy",
    "RewardExecutor",
    "RewardModel",
    "RewardResult",
    "ScoreOutput",
    "available_rewards",
    "build_reward",
    "build_scorer",
    "combine_rewards",
    "normalize_rewards",
    "parse_spec",
    "register_reward",
    "standardize",
]
