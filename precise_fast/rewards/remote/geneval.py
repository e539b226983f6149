"""GenEval reward client (object-detector server; Ghosh et al. 2023, arXiv 2310.11513).

JSON contract (version 1; the server is ``precise_fast.rewards.servers.geneval_server``)
------------------------------------------------------------------------------------------
``POST {url}/v1/geneval`` with ``Content-Type: application/json``::

    {"version": 1,
     "image_format": "png" | "jpeg",
     "images": ["<base64>", ...],                 # RGB, one per sample
     "metadata": [{"tag": "counting",             # GenEval prompt metadata, one per image:
                   "prompt": "a photo of three cups",
                   "include": [{"class": "cup", "count": 3}],
                   "exclude": [{"class": "cup", "count": 4}]}, ...],
     "only_strict": false}                        # true: skip GenEval's own 'correct' flag

``200`` answer::

    {"version": 1,
     "results": [{"score": 0.75,                  # partial credit in [.., 1]; null if unscorable
                  "strict_correct": false,        # exact counts / colours / positions
                  "correct": false,               # GenEval's original criterion (null if only_strict)
                  "tag": "counting",
                  "reason": "expected cup==3, found 2"}, ...]}   # one per image, same order

Errors: ``400`` (bad request, not retried), ``413`` (too large), ``503`` (detector
unavailable, retried then reported), ``500`` (retried); all with ``{"error": "..."}``.

The trained reward is ``score`` by default, the partial credit Flow-GRPO trains GenEval on
(github.com/yifan123/reward-server ``evaluate_reward``); ``reward="strict"`` or
``"correct"`` select the binary variants. All three come back as extras for logging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import httpx
import numpy as np
import torch

from ..base import SENTINEL, ScoreOutput
from .client import RemoteReward, finite_or_none
from .encoding import encode_batch
from .http import RemoteRewardError, ResponseContractError, post_json

CONTRACT_VERSION = 1
GENEVAL_PATH = "/v1/geneval"
GENEVAL_REWARDS = ("score", "strict", "correct")


def _jsonable(value):
    """Metadata may hold numpy scalars or tuples (GenEval positions are tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _as_flag(value) -> float:
    return 1.0 if value is True else 0.0 if value is False else SENTINEL


class GenEvalClient(RemoteReward):
    """Scores images with a GenEval detector server; see the module docstring."""

    extra_names = ("geneval_score", "geneval_strict", "geneval_correct")

    def __init__(
        self,
        urls,
        *,
        name: str = "geneval",
        reward: str = "score",
        only_strict: bool = False,
        batch_size: int = 16,
        max_concurrency: int = 4,
        path: str = GENEVAL_PATH,
        image_format: str = "jpeg",
        jpeg_quality: int = 75,
        **kwargs,
    ):
        # JPEG at Pillow's default quality 75, as the paper's client sends them
        # (Tencent-Hunyuan/Precise precise_sde/rewards/remote.py, geneval_score); "png" is lossless.
        super().__init__(urls, name=name, max_concurrency=max_concurrency, image_format=image_format,
                         jpeg_quality=jpeg_quality, **kwargs)
        if reward not in GENEVAL_REWARDS:
            raise ValueError(f"geneval reward must be one of {GENEVAL_REWARDS}, got {reward!r}")
        if reward == "correct" and only_strict:
            raise ValueError("geneval reward='correct' needs only_strict=False")
        self.reward = reward
        self.only_strict = bool(only_strict)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = path if path.startswith("/") else "/" + path

    def _requests_for(self, batch: int) -> int:
        return -(-batch // self.batch_size)

    def _check_inputs(self, images, prompts, metadata) -> None:
        for i, meta in enumerate(metadata):
            if not isinstance(meta, Mapping) or "tag" not in meta or "include" not in meta:
                raise ValueError(
                    f"{self.name}: metadata[{i}] must be GenEval metadata with 'tag' and 'include', got {meta!r:.120}"
                )

    def _validator(self, n: int):
        def validate(data):
            if not isinstance(data, dict) or not isinstance(data.get("results"), list):
                raise ResponseContractError("expected an object with a 'results' list")
            if len(data["results"]) != n:
                raise ResponseContractError(f"{len(data['results'])} results for {n} images")
            if any(not isinstance(r, dict) for r in data["results"]):
                raise ResponseContractError("every result must be an object")
            return data["results"]

        return validate

    async def _score_chunk(self, client, semaphore, b64: list[str], metadata: list, start: int):
        payload = {
            "version": CONTRACT_VERSION,
            "image_format": self.image_format,
            "images": b64,
            "metadata": [_jsonable(m) for m in metadata],
            "only_strict": self.only_strict,
        }
        async with semaphore:
            return await post_json(
                client,
                self.urls,
                self.path,
                payload,
                self.policy,
                self._validator(len(b64)),
                what=self.name,
                start=start,
                incomplete=self._incomplete,
            )

    def _key(self) -> str:
        return {"score": "score", "strict": "strict_correct", "correct": "correct"}[self.reward]

    def _usable(self, result: dict) -> bool:
        value = result.get(self._key())
        return finite_or_none(value) is not None if self.reward == "score" else isinstance(value, bool)

    def _incomplete(self, results: list) -> str | None:
        """Null / NaN / missing entries are retried like a transient server fault."""
        bad = [i for i, r in enumerate(results) if not self._usable(r)]
        return f"no usable {self._key()!r} for items {bad[:8]}" if bad else None

    async def _score_arrays(self, arrays: np.ndarray, prompts: list[str], metadata: list) -> ScoreOutput:
        n = len(arrays)
        loop = asyncio.get_running_loop()
        b64 = await loop.run_in_executor(None, encode_batch, arrays, self.image_format, self.jpeg_quality)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        bounds = [(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        async with httpx.AsyncClient(timeout=self.policy.httpx_timeout(), trust_env=False) as client:
            answers = await asyncio.gather(
                *(
                    self._score_chunk(client, semaphore, b64[a:b], metadata[a:b], self._start_index())
                    for a, b in bounds
                ),
                return_exceptions=True,
            )
        columns = {key: torch.full((n,), SENTINEL) for key in self.extra_names}
        unusable: list[int] = []
        valid = torch.ones(n, dtype=torch.bool)
        for (a, b), answer in zip(bounds, answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, RemoteRewardError):
                    raise answer
                self._failed(b - a, answer)  # raises under on_error="raise"; else logs
                valid[a:b] = False
                continue
            for i, result in enumerate(answer):
                score = finite_or_none(result.get("score"))
                columns["geneval_score"][a + i] = SENTINEL if score is None else score
                columns["geneval_strict"][a + i] = _as_flag(result.get("strict_correct"))
                columns["geneval_correct"][a + i] = _as_flag(result.get("correct"))
                if not self._usable(result):
                    unusable.append(a + i)
        if unusable:
            # Still NaN / null / missing after the retries: the server could not score them.
            self._failed(
                len(unusable),
                RemoteRewardError(f"{self.name}: no usable {self._key()!r} for samples {unusable[:8]} after retries"),
            )
        chosen = {"score": "geneval_score", "strict": "geneval_strict", "correct": "geneval_correct"}[self.reward]
        scores = columns[chosen]
        valid[unusable] = False
        scores = torch.where(valid, scores, torch.full_like(scores, SENTINEL))
        return ScoreOutput(scores=scores, valid=valid, extras=columns)


def geneval_tags(metadata: Sequence[Mapping]) -> list[str]:
    """The GenEval task of each sample (for per-task logging)."""
    return [str(m.get("tag", "")) for m in metadata]
