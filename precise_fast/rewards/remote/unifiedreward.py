"""UnifiedReward 2.0 client: an OpenAI-compatible chat-completions server (e.g. vLLM or
SGLang serving ``CodeGoat24/UnifiedReward-2.0-qwen-7b``; Wang et al. 2025, arXiv 2503.05236).

One request per image, ``POST {url}/v1/chat/completions``::

    {"model": "<served model name>",
     "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
         {"type": "text", "text": "<instruction with the caption>"}]}],
     "temperature": 0.0, "max_tokens": 256}

and the answer's ``choices[0].message.content`` is parsed for the three 1-5 sub-scores the
model was trained to emit for point-wise image assessment::

    Alignment Score (1-5): X
    Coherence Score (1-5): Y
    Style Score (1-5): Z

The default instruction is ours and asks for exactly that output format (the format the
UnifiedReward repository publishes for point-wise image assessment). The reward is the weighted mean of the chosen
aspects divided by 5 (Flow-GRPO's ``unifiedreward_score_sglang`` also divides the 1-5
score by 5); each raw aspect is returned as an extra for logging.

Defaults follow the Precise paper's client and server (Tencent-Hunyuan/Precise
``precise_sde/rewards/remote.py`` ``unifiedreward_score_v2`` and
``precise_sde/rewards/servers/unified_reward/start_server.sh``): the served model name
``UnifiedReward``, images resized to 512x512 (PIL's default filter) and sent as JPEG at
quality 95, each parsed aspect clamped to [0, 5] (``range_policy="clamp"``; ``"ignore"``
drops out-of-range values instead), 16 requests in flight (``$PRECISE_SDE_UNIFIEDREWARD_CONCURRENCY``),
and the server URLs from ``$PRECISE_SDE_UNIFIEDREWARD_URLS`` / ``$PRECISE_SDE_UNIFIEDREWARD_URL``
when a spec gives none (see :mod:`.env_urls`).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Mapping

import httpx
import numpy as np
import torch

from PIL import Image

from ..base import SENTINEL, ScoreOutput
from .client import RemoteReward
from .encoding import data_uri, encode_array
from .env_urls import UNIFIEDREWARD_CONCURRENCY_ENV
from .http import RemoteRewardError, ResponseContractError, post_json

CHAT_PATH = "/v1/chat/completions"
ASPECTS = ("alignment", "coherence", "style")
PAPER_MODEL_NAME = "UnifiedReward"  # the paper server's --served-model-name
PAPER_IMAGE_SIZE = 512
PAPER_JPEG_QUALITY = 95
SCORE_RANGE = (0.0, 5.0)  # the paper clamps each parsed aspect to this range
RANGE_POLICIES = ("clamp", "ignore")

# Our own instruction (written here, not copied): it names the three aspects the model was
# trained to grade and asks for the exact "<Aspect> Score (1-5): N" lines the parser reads.
# Users who want the model's published wording pass it as ``prompt_template``.
DEFAULT_TEMPLATE = (
    "Rate the image below against its caption on three aspects, each an integer from 1 (poor) to 5 (excellent).\n"
    "Alignment: does the image show what the caption describes?\n"
    "Coherence: is the image free of artifacts, distortions and impossible structure?\n"
    "Style: how visually pleasing is the image, whatever the caption says?\n"
    "Answer with exactly these three lines, X replaced by your rating, and nothing else:\n"
    "Alignment Score (1-5): X\n"
    "Coherence Score (1-5): X\n"
    "Style Score (1-5): X\n"
    "Caption: [{prompt}]"
)

_NUMBER = r"([-+]?\d+(?:\.\d+)?)"
# "<Aspect> [Score] [(1-5)] [:|=] [**] <number> [/5]" - tolerant of markdown bold, spacing,
# a full-width colon and an "X/5" form. The range "(1-5)" is consumed before the number.
_SEP = r"[\s*_]*"
_RANGE = r"\(\s*1\s*(?:-|–|~|to)\s*5\s*\)"


def _aspect_pattern(name: str) -> re.Pattern:
    # Linear time: every separator run follows a required token, and each optional part
    # carries its own trailing run, so no two quantifiers can share (and re-split) one run
    # of whitespace or markdown. Writing "{_SEP}(?:score)?{_SEP}{_RANGE}?{_SEP}..." accepts
    # the same replies but backtracks over every split of a run: O(n^4), measured 5-7 s
    # for 200 spaces after "Alignment" and ~100 s for 400 (issue 25 item 3).
    return re.compile(
        rf"{name}{_SEP}(?:score{_SEP})?(?:{_RANGE}{_SEP})?(?:[:：=]{_SEP})?{_NUMBER}(?:\s*/\s*5(?!\d))?",
        re.IGNORECASE,
    )


_PATTERNS = {name: _aspect_pattern(name) for name in (*ASPECTS, r"final")}


def parse_unifiedreward_scores(text: str, low: float = 1.0, high: float = 5.0) -> dict[str, float]:
    """Sub-scores found in a reply: ``{"alignment": 4.0, "coherence": 3.5, ...}``.

    The last well-formed value of each aspect wins (a model may restate the format first);
    values outside ``[low, high]`` or non-finite are ignored. ``"final"`` catches the
    ``Final Score: X`` form of UnifiedReward 1.x.
    """
    found: dict[str, float] = {}
    if not isinstance(text, str):
        return found
    for name, pattern in _PATTERNS.items():
        for match in pattern.finditer(text):
            try:
                value = float(match.group(1))
            except ValueError:
                continue
            if math.isfinite(value) and low <= value <= high:
                found[name] = value
    return found


def _message_text(data) -> str:
    """``choices[0].message.content`` as text (a string or a list of text parts)."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ResponseContractError("expected choices[0].message.content") from None
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise ResponseContractError(f"message content is {type(content).__name__}, not text")
    return content


class UnifiedRewardClient(RemoteReward):
    """UnifiedReward 2.0 point-wise scores through a chat-completions server."""

    def __init__(
        self,
        urls,
        *,
        name: str = "unifiedreward",
        model: str = PAPER_MODEL_NAME,
        aspects: Mapping[str, float] | None = None,
        scale: float = 0.2,
        prompt_template: str = DEFAULT_TEMPLATE,
        max_tokens: int = 256,
        temperature: float = 0.0,
        max_concurrency: int | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        path: str = CHAT_PATH,
        image_format: str = "jpeg",
        jpeg_quality: int = PAPER_JPEG_QUALITY,
        resize: int | None = PAPER_IMAGE_SIZE,
        range_policy: str = "clamp",
        **kwargs,
    ):
        if max_concurrency is None:
            max_concurrency = int(os.environ.get(UNIFIEDREWARD_CONCURRENCY_ENV, "16"))
        super().__init__(urls, name=name, max_concurrency=max_concurrency, image_format=image_format,
                         jpeg_quality=jpeg_quality, **kwargs)
        if resize is not None and int(resize) < 1:
            raise ValueError(f"resize must be a positive side length or None, got {resize}")
        if range_policy not in RANGE_POLICIES:
            raise ValueError(f"range_policy must be one of {RANGE_POLICIES}, got {range_policy!r}")
        self.resize = None if resize is None else int(resize)
        self.range_policy = range_policy
        aspects = dict(aspects if aspects is not None else {a: 1.0 for a in ASPECTS})
        unknown = set(aspects) - set(ASPECTS) - {"final"}
        if unknown or not aspects or sum(aspects.values()) <= 0 or any(w < 0 for w in aspects.values()):
            raise ValueError(
                f"aspects must map some of {ASPECTS + ('final',)} to non-negative weights "
                f"with a positive sum, got {aspects}"
            )
        if "{prompt}" not in prompt_template:
            raise ValueError("prompt_template must contain '{prompt}'")
        self.aspects = aspects
        self.scale = float(scale)
        self.model = model
        self.prompt_template = prompt_template
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        # The server URL may be given with or without the /v1 prefix.
        self.urls = [u[: -len("/v1")] if u.endswith("/v1") and path.startswith("/v1/") else u for u in self.urls]
        self.path = path
        key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        self._headers = {"authorization": f"Bearer {key}"} if key else {}
        self.extra_names = tuple(f"{name}_{a}" for a in self.aspects)

    def _requests_for(self, batch: int) -> int:
        return batch

    def request_payload(self, b64: str, prompt: str) -> dict:
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_uri(b64, self.image_format)}},
                        {"type": "text", "text": self.prompt_template.replace("{prompt}", prompt)},
                    ],
                }
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _validate(self, data) -> dict[str, float]:
        text = _message_text(data)
        if self.range_policy == "ignore":
            return parse_unifiedreward_scores(text)
        low, high = SCORE_RANGE
        found = parse_unifiedreward_scores(text, low=-math.inf, high=math.inf)
        return {k: min(max(v, low), high) for k, v in found.items()}

    def _encode(self, array: np.ndarray) -> str:
        if self.resize is not None and array.shape[:2] != (self.resize, self.resize):
            array = np.asarray(Image.fromarray(array).resize((self.resize, self.resize)))
        return encode_array(array, self.image_format, self.jpeg_quality)

    def _incomplete(self, scores: dict[str, float]) -> str | None:
        missing = [a for a, w in self.aspects.items() if w > 0 and a not in scores]
        return f"reply lacks {missing}" if missing else None

    async def _one(self, client, semaphore, array: np.ndarray, prompt: str, start: int) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        async with semaphore:
            b64 = await loop.run_in_executor(None, self._encode, array)
            return await post_json(
                client,
                self.urls,
                self.path,
                self.request_payload(b64, prompt),
                self.policy,
                self._validate,
                what=self.name,
                start=start,
                headers=self._headers,
                incomplete=self._incomplete,
            )

    async def _score_arrays(self, arrays: np.ndarray, prompts: list[str], metadata: list) -> ScoreOutput:
        n = len(arrays)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=self.policy.httpx_timeout(), limits=limits, trust_env=False) as client:
            answers = await asyncio.gather(
                *(self._one(client, semaphore, arrays[i], prompts[i], self._start_index()) for i in range(n)),
                return_exceptions=True,
            )
        total = sum(self.aspects.values())
        scores = torch.full((n,), SENTINEL)
        extras = {f"{self.name}_{a}": torch.full((n,), SENTINEL) for a in self.aspects}
        failed: list[int] = []
        errors: list[BaseException] = []
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, RemoteRewardError):
                    raise answer
                failed.append(i)
                errors.append(answer)
                continue
            for a in self.aspects:
                if a in answer:
                    extras[f"{self.name}_{a}"][i] = answer[a]
            if self._incomplete(answer) is not None:
                failed.append(i)
                continue
            scores[i] = self.scale * sum(w * answer[a] for a, w in self.aspects.items() if w > 0) / total
        if failed:
            cause = errors[0] if errors else "unparseable replies"
            self._failed(
                len(failed), RemoteRewardError(f"{self.name}: samples {failed[:8]} unscored after retries: {cause}")
            )
        valid = torch.ones(n, dtype=torch.bool)
        valid[failed] = False
        return ScoreOutput(scores=scores, valid=valid, extras=extras)
