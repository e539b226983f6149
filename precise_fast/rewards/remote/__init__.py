"""Remote reward clients (async HTTP): GenEval and UnifiedReward over JSON, and the paper's pickled
GenEval protocol (replies decoded by a restricted unpickler)."""

from .geneval import GenEvalClient
from .geneval_paper import PaperGenEvalClient
from .http import BackgroundLoop, RemoteRewardError, ResponseContractError, RetryPolicy, post_json
from .safe_pickle import UnsafePickleError, safe_loads
from .unifiedreward import UnifiedRewardClient, parse_unifiedreward_scores

__all__ = [
    "BackgroundLoop",
    "GenEvalClient",
    "PaperGenEvalClient",
    "RemoteRewardError",
    "ResponseContractError",
    "RetryPolicy",
    "UnifiedRewardClient",
    "UnsafePickleError",
    "parse_unifiedreward_scores",
    "post_json",
    "safe_loads",
]
