"""GenEval client for the paper's own reward server (pickle over HTTP).

A user who already runs Tencent-Hunyuan/Precise's GenEval server
(``precise_sde/rewards/servers/geneval/app.py``; client side ``precise_sde/rewards/remote.py``
``geneval_score``) can point us at it with ``{"geneval": {"scorer": "geneval_paper",
"urls": ["http://127.0.0.1:18085"]}}`` (or no ``urls`` and ``$PRECISE_SDE_GENEVAL_URL``).
Our JSON protocol (:mod:`.geneval`) stays the default.

Wire format, as the paper's code has it:

* request: ``POST {url}`` (the server's root path) with the body ``pickle.dumps({"images":
  [JPEG bytes, ...], "meta_datas": [GenEval metadata dict, ...], "only_strict": bool})``;
  the images are PIL JPEGs at PIL's default quality (75); the paper batches 64 per request;
* reply ``200``: ``pickle.dumps({"scores": [float], "rewards": [float], "strict_rewards":
  [float], "group_rewards": {tag: [float]}, "group_strict_rewards": {tag: [float]}})`` with
  ``scores`` the partial credit, ``strict_rewards`` 1.0/0.0 for the exact match and
  ``rewards`` 1.0/0.0 for GenEval's own criterion (0.0 throughout when ``only_strict``);
  ``500`` with a traceback as text on failure (the paper's client retries those).

We pickle only our own request. The reply is decoded by :func:`.safe_pickle.safe_loads`,
which admits plain containers, numbers, strings and bytes, in time linear in the reply
(at most 1 MiB), and refuses anything else, and then checked against the shape above;
the per-image values then flow through the same
columns as the JSON client (``geneval_score``, ``geneval_strict``, ``geneval_correct``).
"""

from __future__ import annotations

import base64
import math
import pickle

from .geneval import GenEvalClient, _jsonable
from .http import ResponseContractError, post_json
from .safe_pickle import safe_loads

PAPER_JPEG_QUALITY = 75  # PIL's default, which the paper's client leaves in place
PAPER_BATCH_SIZE = 64
_KEYS = ("scores", "rewards", "strict_rewards")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResponseContractError(f"{where}: expected a number, got {type(value).__name__}")
    return float(value)


def paper_reply_to_results(reply, n: int, metadata: list, only_strict: bool) -> list[dict]:
    """The paper's reply dict -> our per-image result records (the JSON contract's shape)."""
    if not isinstance(reply, dict) or any(k not in reply for k in _KEYS):
        raise ResponseContractError(f"expected a dict with keys {list(_KEYS)}")
    for key in _KEYS:
        if not isinstance(reply[key], list) or len(reply[key]) != n:
            raise ResponseContractError(f"'{key}' must be a list of {n} numbers")
    results = []
    for i in range(n):
        score = _number(reply["scores"][i], f"scores[{i}]")
        strict = _number(reply["strict_rewards"][i], f"strict_rewards[{i}]")
        correct = _number(reply["rewards"][i], f"rewards[{i}]")
        results.append({
            "score": score if math.isfinite(score) else None,
            "strict_correct": strict == 1.0,
            "correct": None if only_strict else correct == 1.0,
            "tag": metadata[i].get("tag"),
        })
    return results


class PaperGenEvalClient(GenEvalClient):
    """:class:`.geneval.GenEvalClient` speaking the paper server's pickle protocol."""

    def __init__(self, urls, *, name: str = "geneval", batch_size: int = PAPER_BATCH_SIZE,
                 image_format: str = "jpeg", jpeg_quality: int = PAPER_JPEG_QUALITY, path: str = "/", **kwargs):
        if str(image_format).lower() not in ("jpeg", "jpg"):
            raise ValueError("the paper's GenEval server decodes JPEG only (image_format='jpeg')")
        super().__init__(urls, name=name, batch_size=batch_size, image_format="jpeg", jpeg_quality=jpeg_quality,
                         path=path, **kwargs)

    async def _score_chunk(self, client, semaphore, b64: list[str], metadata: list, start: int):
        request = {
            "images": [base64.b64decode(b) for b in b64],
            "meta_datas": [_jsonable(m) for m in metadata],
            "only_strict": self.only_strict,
        }
        n = len(b64)

        def decode(body: bytes):
            return paper_reply_to_results(safe_loads(body), n, metadata, self.only_strict)

        async with semaphore:
            return await post_json(
                client, self.urls, self.path, pickle.dumps(request), self.policy,
                lambda results: results, what=self.name, start=start, incomplete=self._incomplete, decode=decode,
                headers={"content-type": "application/octet-stream", "accept": "*/*"},
            )
