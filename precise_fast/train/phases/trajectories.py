"""The trainer's view of the rollout engine: prompts and slot seeds in, trajectories out.

Two things the engine leaves to its caller are fixed here:

- Seeds: a sample's noise seed is ``stream_seed(run seed, Stream.NOISE, epoch, group, member)`` and its
  initial-latent seed the same (or, with ``same_initial_latent``, the group's), so a sample
  is a function of its slot alone: the same on 1 or 8 ranks, and again after a resume.
- Prompt embeddings: each distinct prompt is encoded alone (one row) and cached, so its
  embedding never depends on which prompts shared a text-encoder batch with it (batched
  matmuls round differently), which a bitwise-exact resume needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...rollout import RolloutEngine, sample_g2rpo
from ..state.rng import Stream, stream_seed
from .prompt_groups import Slot



def slot_seeds(run_seed: int, epoch_key: int, slots: Sequence[Slot], same_initial_latent: bool) -> tuple[list[int], list[int]]:
    noise = [stream_seed(run_seed, Stream.NOISE, epoch_key, s.group, s.member) for s in slots]
    if same_initial_latent:
        init = [stream_seed(run_seed, Stream.NOISE, epoch_key, s.group, -1) for s in slots]
    else:
        init = list(noise)
    return noise, init


class Rollouts:
    def __init__(self, pipeline, cfg, *, kind: str | None = None, decode_chunk: int | None = None):
        s, m = cfg.sampler, cfg.model
        cuda_graph = s.cuda_graph
        if cfg.train.zero_stage == 3:
            # A ZeRO-3 gather puts every weight in new storage, and a captured graph replays
            # the old pointers: the engine would re-capture (and keep) a graph per rollout.
            cuda_graph = False
        self.engine = RolloutEngine(
            pipeline,
            kind=kind or s.kind,
            eta=s.eta if kind in (None, s.kind) else None,
            num_steps=s.num_steps,
            height=s.height,
            width=s.width,
            latent_dtype=getattr(torch, s.latent_dtype),
            cuda_graph=cuda_graph,
            step_backend=s.step_backend,
            max_text_len=m.max_text_len,
            text_layers=tuple(m.text_layers),
            decode_chunk=decode_chunk,
        )
        self._cache: dict[str, torch.Tensor] = {}
        self.g2rpo_completion = cfg.algorithm.g2rpo_completion

    @property
    def num_steps(self) -> int:
        return self.engine.num_steps

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """The prompts' embeddings, stacked on the engine's device. The cache keeps its rows in
        host memory, bit for bit: at the real width a row is 128 x 7680 float32 (3.75 MiB), so a
        full cache on the GPU would hold 15 GiB that the memory probe of the update never saw."""
        encoder = self.engine.prompt_encoder
        for p in dict.fromkeys(prompts):
            if p not in self._cache:
                self._cache[p] = encoder.encode_uncached([p])[0].cpu()
                if len(self._cache) > encoder.cache_size:
                    self._cache.pop(next(iter(self._cache)))
        return torch.stack([self._cache[p] for p in prompts]).to(self.engine.device)

    def sample(self, prompts, noise_seeds, init_seeds, *, mode: str, window=None, decode: bool = True):
        return self.engine.sample(
            self.embed(prompts), seeds=noise_seeds, init_seeds=init_seeds, mode=mode, window=window, decode=decode
        )

    def sample_g2rpo(self, prompts, init_seeds, member_seeds, *, steps, granularities):
        return sample_g2rpo(
            self.engine, self.embed(prompts), init_seeds=init_seeds, member_seeds=member_seeds, steps=steps,
            granularities=granularities, completion=self.g2rpo_completion,
        )
