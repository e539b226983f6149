"""Prompt encoding for FLUX.2 Klein with a cache that never serves a stale entry.

The encoding is the pipeline's own (``Flux2KleinPipeline._get_qwen3_prompt_embeds``: the
Qwen3 chat template with thinking disabled, padding to ``max_length``, hidden states of
``layers`` stacked along the feature axis), so cached and pipeline embeddings are equal.

Staleness: every lookup compares a fingerprint of the text encoder and tokenizer (object
identities, and each parameter's and buffer's identity, storage pointer, in-place version
counter, dtype and device) with the one the cache was filled under, and drops the cache
when it differs. That catches a swapped encoder, a ``load_state_dict``/optimiser step
(both bump version counters), a ``.to()`` and a replaced ``.data``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

RECIPE_MAX_LENGTH = 128
RECIPE_LAYERS = (9, 18, 27)


def text_ids(batch: int, seq_len: int, device=None) -> torch.Tensor:
    """FLUX.2's 4-D position ids (T, H, W, L) of the text tokens: ``(0, 0, 0, l)``, shape (B, L, 4) int64.

    The same values as the pipeline's ``_prepare_text_ids`` without its loop over rows.
    """
    ids = torch.zeros(seq_len, 4, dtype=torch.int64, device=device)
    ids[:, 3] = torch.arange(seq_len, device=device)
    return ids.unsqueeze(0).expand(batch, -1, -1)


def _fingerprint(text_encoder: torch.nn.Module, tokenizer) -> tuple:
    tensors = [*text_encoder.parameters(), *text_encoder.buffers()]
    return (
        id(text_encoder),
        id(tokenizer),
        len(tokenizer),
        tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors),
    )


class PromptEncoder:
    """Encode prompts to FLUX.2 Klein text embeddings, with an LRU cache per prompt string.

    ``encoder(prompts)`` returns ``(B, max_length, len(layers) * hidden)`` embeddings on
    ``device`` in ``dtype`` (defaults: the transformer's). Duplicate prompts in a batch are
    encoded once. Misses are encoded together in one text-encoder call; rows of a batch
    never interact, so a cached row equals a fresh encoding up to the float rounding of
    batched matmuls.
    """

    def __init__(
        self,
        pipeline,
        *,
        max_length: int = RECIPE_MAX_LENGTH,
        layers: Sequence[int] = RECIPE_LAYERS,
        cache_size: int = 4096,
        device=None,
        dtype: torch.dtype | None = None,
    ):
        self.pipeline = pipeline
        self.max_length = int(max_length)
        self.layers = tuple(int(k) for k in layers)
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        depth = pipeline.text_encoder.config.num_hidden_layers
        bad = [k for k in self.layers if not 0 <= k <= depth]
        if not self.layers or bad:
            raise ValueError(f"layers {self.layers} must lie in [0, {depth}] (the text encoder has {depth} layers)")
        self.cache_size = int(cache_size)
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._fingerprint = None
        self.hits = 0
        self.misses = 0

    @property
    def embed_dim(self) -> int:
        return len(self.layers) * self.pipeline.text_encoder.config.hidden_size

    def _target(self) -> tuple[torch.device, torch.dtype]:
        ref = next(self.pipeline.transformer.parameters())
        return (self.device or ref.device), (self.dtype or ref.dtype)

    def clear(self) -> None:
        self._cache.clear()
        self._fingerprint = None

    def _validate_cache(self) -> None:
        fp = _fingerprint(self.pipeline.text_encoder, self.pipeline.tokenizer)
        if fp != self._fingerprint:
            self._cache.clear()
            self._fingerprint = fp

    @torch.no_grad()
    def encode_uncached(self, prompts: Sequence[str]) -> torch.Tensor:
        """The pipeline's own encoding of ``prompts`` (no cache), on the target device / dtype."""
        device, dtype = self._target()
        return self.pipeline._get_qwen3_prompt_embeds(
            text_encoder=self.pipeline.text_encoder,
            tokenizer=self.pipeline.tokenizer,
            prompt=list(prompts),
            dtype=dtype,
            device=device,
            max_sequence_length=self.max_length,
            hidden_states_layers=self.layers,
        )

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a non-empty list of strings")
        device, dtype = self._target()
        self._validate_cache()
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.encode_uncached(missing)
            for prompt, row in zip(missing, fresh):
                self._cache[prompt] = row
        rows = []
        for p in prompts:
            self._cache.move_to_end(p)
            rows.append(self._cache[p].to(device=device, dtype=dtype))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(rows)

    encode = __call__
