"""Remote reward clients (async HTTP, JSON only): GenEval and UnifiedReward."""

from .geneval import GenEvalClient
from .http import BackgroundLoop, RemoteRewardError, ResponseContractError, RetryPolicy, post_json
from .unifiedreward import UnifiedRewardClient, parse_unifiedreward_scores

__all__ = [
    "BackgroundLoop",
    "GenEvalClient",
    "RemoteRewardError",
    "ResponseContractError",
    "RetryPolicy",
    "UnifiedRewardClient",
    "parse_unifiedreward_scores",
    "post_json",
]
