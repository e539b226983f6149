"""Common shape of a remote reward client (GenEval, UnifiedReward)."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..base import MAX_ABS_SCORE, SENTINEL, RewardModel, ScoreOutput
from .encoding import check_format, images_to_host
from .http import (
    ON_ERROR,
    BackgroundLoop,
    RemoteRewardError,
    RetryPolicy,
    normalize_urls,
)

logger = logging.getLogger("precise_fast.rewards")


def invalid_output(batch: int, extras: Sequence[str] = ()) -> ScoreOutput:
    scores = torch.full((batch,), SENTINEL, dtype=torch.float32)
    return ScoreOutput(
        scores=scores, valid=torch.zeros(batch, dtype=torch.bool), extras={k: scores.clone() for k in extras}
    )


def finite_or_none(value) -> float | None:
    """A JSON number in range (finite, within +-MAX_ABS_SCORE), else None (null, NaN, 1e300,
    strings, booleans...): a 1e300 written into the float32 score tensor crashed the run."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and abs(value) <= MAX_ABS_SCORE else None


class RemoteReward(RewardModel):
    """Async HTTP scorer. ``submit`` returns a Future of a CPU :class:`ScoreOutput`;
    calling the object waits for it and returns it on the images' device.

    ``on_error="sentinel"`` (default): samples the server could not score after the allowed
    retries get the sentinel and ``valid=False`` (a warning is logged); ``"raise"``: a
    :class:`RemoteRewardError` is raised instead.
    """

    remote = True
    extra_names: tuple[str, ...] = ()

    def __init__(
        self,
        urls,
        *,
        name: str,
        policy: RetryPolicy | None = None,
        on_error: str = "sentinel",
        image_format: str = "png",
        jpeg_quality: int = 95,
        max_concurrency: int = 4,
        **policy_fields,
    ):
        self.name = name
        self.urls = normalize_urls(urls)
        unknown = set(policy_fields) - set(RetryPolicy.__dataclass_fields__)
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {sorted(unknown)}")
        # RetryPolicy fields may be given directly (timeout_s=..., max_retries=...).
        self.policy = dataclasses.replace(policy or RetryPolicy(), **policy_fields)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.image_format = check_format(image_format)
        self.jpeg_quality = int(jpeg_quality)
        if not 1 <= int(max_concurrency) <= 1024:
            raise ValueError(f"max_concurrency must be in [1, 1024], got {max_concurrency}")
        self.max_concurrency = int(max_concurrency)
        self._next_url = 0  # spreads successive requests over the servers

    # -- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    def _requests_for(self, batch: int) -> int:
        """How many HTTP calls a batch of this size needs (for the deadline)."""

    @abc.abstractmethod
    async def _score_arrays(self, arrays: np.ndarray, prompts: list[str], metadata: list) -> ScoreOutput:
        """Score host uint8 images; failures follow ``self.on_error``."""

    def _check_inputs(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping]) -> None:  # noqa: B027
        """Validate before any network traffic (raise ValueError on bad input)."""

    # -- shared machinery ---------------------------------------------------------------
    def _start_index(self) -> int:
        index = self._next_url
        self._next_url = (self._next_url + 1) % len(self.urls)
        return index

    def deadline_s(self, batch: int) -> float:
        waves = math.ceil(max(1, self._requests_for(batch)) / self.max_concurrency)
        return waves * self.policy.deadline_s()

    def _failed(self, batch: int, exc: BaseException) -> ScoreOutput:
        if self.on_error == "raise":
            if isinstance(exc, RemoteRewardError):
                raise exc
            raise RemoteRewardError(f"{self.name}: {exc}") from exc
        logger.warning("%s: %d samples get the sentinel: %s", self.name, batch, exc)
        return invalid_output(batch, self.extra_names)

    async def _guarded(self, arrays: np.ndarray, prompts: list[str], metadata: list) -> ScoreOutput:
        batch = len(arrays)
        deadline = self.deadline_s(batch)
        try:
            return await asyncio.wait_for(self._score_arrays(arrays, prompts, metadata), timeout=deadline)
        except TimeoutError:  # asyncio.wait_for raises the builtin on Python >= 3.11
            return self._failed(batch, RemoteRewardError(f"{self.name}: no answer within the {deadline:.1f}s deadline"))
        except RemoteRewardError as exc:
            return self._failed(batch, exc)

    def _prepare(self, images, prompts, metadata):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be (B, 3, H, W)")
        prompts = list(prompts)
        metadata = [{} for _ in prompts] if metadata is None else list(metadata)
        if len(prompts) != images.shape[0] or len(metadata) != images.shape[0]:
            raise ValueError(
                f"{self.name}: {images.shape[0]} images, {len(prompts)} prompts, {len(metadata)} metadata entries"
            )
        self._check_inputs(images, prompts, metadata)
        return images_to_host(images), prompts, metadata

    def submit(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None
    ) -> concurrent.futures.Future:
        arrays, prompts, metadata = self._prepare(images, prompts, metadata)
        return BackgroundLoop.get().submit(self._guarded(arrays, prompts, metadata))

    async def score_async(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None
    ) -> ScoreOutput:
        """For callers with their own event loop. Result tensors are on the CPU."""
        arrays, prompts, metadata = self._prepare(images, prompts, metadata)
        return await self._guarded(arrays, prompts, metadata)

    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None
    ) -> ScoreOutput:
        future = self.submit(images, prompts, metadata)
        deadline = self.deadline_s(images.shape[0]) + 5.0
        try:
            out = future.result(timeout=deadline)
        except concurrent.futures.TimeoutError:
            future.cancel()
            out = self._failed(images.shape[0], RemoteRewardError(f"{self.name}: no answer within {deadline:.1f}s"))
        device = images.device
        return ScoreOutput(
            out.scores.to(device), out.valid.to(device), {k: v.to(device) for k, v in out.extras.items()}
        )
