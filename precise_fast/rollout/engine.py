"""The capture-safe, batched rollout engine for FLUX.2 Klein.

One step = :func:`denoise_step`: the policy forward (:func:`predict_velocity`, the same
function the trainer calls) and the fused sampler op ``precise_fast.sde.sample_step`` in
sample mode, on the whole batch, with per-row (B,) step values and per-row Philox seeds.
A rollout runs a static :class:`~precise_fast.rollout.plan.Plan` over preallocated
step-major buffers: latents (H + 1, B, S, C), transition means (H, B, S, C), log-probs
(H, B). Step j reads the contiguous slice ``latents[j]`` and the fused op writes its three
results straight into ``latents[j + 1]``, ``log_probs[j]``, ``means[j]`` (its ``out=``
buffers): no strided copy in or out. Callers see batch-major views, (B, H + 1, S, C) etc.
The step loop has no host synchronisation and no data-dependent Python (the hop sequence and
every per-hop value are fixed by the plan; the Philox step index lives in a device tensor),
so on CUDA the whole loop is captured once per (batch, text length, plan) into a CUDA graph
and replayed with new inputs copied into its static buffers. On CPU the same loop runs
eagerly (optionally with the step function compiled; ``torch.compile(fullgraph=True)`` of
:func:`denoise_step` succeeding on CPU is the tested proxy for capturability).

ODE steps go through the same fused op with ``kind="ode"`` (std 0, log-prob 0), so their
mean and rounding match the stochastic steps' conventions exactly.

Reproducibility: row r's initial latent is Philox stream 0 of ``init_seeds[r]`` (drawn in
the pipeline's unpacked (C, rows, cols) shape, then packed) and the noise of the step
leaving ``sigmas[i]`` is stream ``1 + i`` of ``seeds[r]``. Nothing depends on the batch
layout; giving all members of a prompt group the same ``init_seeds`` is the "same initial
latent per prompt" option.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..models.attention import attention_backend_for
from ..models.flux2 import LatentLayout, decode_latents, latent_ids, latent_layout, pack_latents, predict_velocity
from ..models.text import RECIPE_LAYERS, RECIPE_MAX_LENGTH, PromptEncoder, text_ids
from ..sde import DEFAULT_ETA, philox_normal, resolve_backend, sample_step
from ..sde.kinds import DEFAULT_KIND, ODE, STOCHASTIC, check_kind
from .plan import INIT_NOISE_STEP, Plan, PlanCache, Schedule, pipeline_schedule, trajectory_kinds
from .seeds import as_seed_tensor

logger = logging.getLogger("precise_fast.rollout")

# The graph cache's floor when sized automatically (max_cached_graphs=None).
MIN_CACHED_GRAPHS = 16


def denoise_step(
    transformer: torch.nn.Module,
    x: torch.Tensor,
    timestep: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    std: torch.Tensor,
    prompt_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    latent_ids: torch.Tensor,
    seeds: torch.Tensor,
    step_index: torch.Tensor,
    *,
    kind: str,
    backend: str = "auto",
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batched rollout step: ``(prev_sample [x.dtype], log_prob (B,) f32, mean f32)``.

    ``timestep``, ``sigma``, ``next_sigma``, ``std`` are (B,) float32; ``seeds`` (B,) int64;
    ``step_index`` an int64 device tensor (0-d or (B,)). ``out=(prev, log_prob, mean)``:
    contiguous buffers the fused op writes into (and returns). Free of host
    synchronisation when the op backend is a fused one, so it compiles with
    ``fullgraph=True`` and captures.
    """
    v = predict_velocity(transformer, x, timestep, prompt_embeds, text_ids, latent_ids)
    prev, log_prob, mean = sample_step(
        x, v, sigma, next_sigma, std, kind=kind, seeds=seeds, step_index=step_index, return_mean=True, backend=backend,
        out=out,
    )
    return prev, log_prob, mean


@dataclass
class Rollout:
    """A batch of trajectories and everything the trainer needs to re-score them.

    ``latents[:, i]`` is the latent at ``sigmas[:, i]``; step i goes ``latents[:, i] ->
    latents[:, i + 1]`` with transition mean ``means[:, i]``, std ``stds[:, i]`` (0 on ODE
    steps), log-prob ``log_probs[:, i]`` (0 on ODE steps) and transformer input
    ``timesteps[:, i]``. Per-row tables are (B, ...) so rows can be shuffled into minibatches.
    ``latents``, ``means`` and ``log_probs`` are batch-major views of the engine's step-major
    storage (not contiguous; index them, or ``.contiguous()`` where a kernel needs it).
    """

    latents: torch.Tensor  # (B, N + 1, S, C), latent dtype
    means: torch.Tensor  # (B, N, S, C) float32
    log_probs: torch.Tensor  # (B, N) float32
    sigmas: torch.Tensor  # (B, N + 1) float32
    timesteps: torch.Tensor  # (B, N) float32, transformer input
    stds: torch.Tensor  # (B, N) float32
    stochastic: torch.Tensor  # (N,) bool: which steps drew noise
    kinds: tuple[str, ...]  # per step
    prompt_embeds: torch.Tensor  # (B, L, D)
    text_ids: torch.Tensor  # (B, L, 4)
    latent_ids: torch.Tensor  # (B, S, 4)
    seeds: torch.Tensor  # (B,) int64: per-step noise
    init_seeds: torch.Tensor  # (B,) int64: initial latent
    layout: LatentLayout
    kind: str
    eta: float
    images: torch.Tensor | None = None  # (B, 3, H, W) float32 in [0, 1]

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]

    def select(self, rows) -> "Rollout":
        """The rollout restricted to ``rows`` (an index tensor, list or slice), e.g. a minibatch."""
        if isinstance(rows, slice):
            pick = lambda t: t[rows]  # noqa: E731
        else:
            index = torch.as_tensor(rows, device=self.latents.device, dtype=torch.long)
            pick = lambda t: t.index_select(0, index.to(t.device))  # noqa: E731
        fields = dict(
            latents=pick(self.latents),
            means=pick(self.means),
            log_probs=pick(self.log_probs),
            sigmas=pick(self.sigmas),
            timesteps=pick(self.timesteps),
            stds=pick(self.stds),
            prompt_embeds=pick(self.prompt_embeds),
            text_ids=pick(self.text_ids),
            latent_ids=pick(self.latent_ids),
            seeds=pick(self.seeds),
            init_seeds=pick(self.init_seeds),
            images=None if self.images is None else pick(self.images),
        )
        return replace(self, **fields)


class _Buffers:
    """Static per-shape buffers: inputs are copied in, the plan writes the outputs.

    The trajectory is stored step-major (``step_latents`` (H + 1, B, S, C), ``step_means``
    (H, B, S, C), ``step_log_probs`` (H, B)) so every step's slices are contiguous;
    ``latents``, ``means``, ``log_probs`` are their batch-major views.
    """

    _TENSORS = ("step_latents", "step_means", "step_log_probs", "prompt_embeds", "seeds", "text_ids", "latent_ids")

    def __init__(self, batch, plan: Plan, layout: LatentLayout, text_len, embed_dim, embed_dtype, latent_dtype, device):
        hops = len(plan)
        self.batch = batch
        shape = (layout.seq_len, layout.channels)
        self.step_latents = torch.zeros((hops + 1, batch, *shape), dtype=latent_dtype, device=device)
        self.step_means = torch.zeros((hops, batch, *shape), dtype=torch.float32, device=device)
        self.step_log_probs = torch.zeros((hops, batch), dtype=torch.float32, device=device)
        self.prompt_embeds = torch.zeros((batch, text_len, embed_dim), dtype=embed_dtype, device=device)
        self.seeds = torch.zeros((batch,), dtype=torch.int64, device=device)
        self.text_ids = text_ids(batch, text_len, device)
        self.latent_ids = latent_ids(layout, batch, device)

    @property
    def latents(self) -> torch.Tensor:  # (B, H + 1, S, C) view
        return self.step_latents.transpose(0, 1)

    @property
    def means(self) -> torch.Tensor:  # (B, H, S, C) view
        return self.step_means.transpose(0, 1)

    @property
    def log_probs(self) -> torch.Tensor:  # (B, H) view
        return self.step_log_probs.transpose(0, 1)

    def clone(self) -> "_Buffers":
        """A private copy (a graph's static buffers are overwritten by the next replay)."""
        out = object.__new__(_Buffers)
        out.batch = self.batch
        for name in self._TENSORS:
            setattr(out, name, getattr(self, name).clone())
        return out


def initial_latents(init_seeds: torch.Tensor, layout: LatentLayout, dtype=torch.float32) -> torch.Tensor:
    """Packed initial latents (B, S, C) of the Philox stream ``INIT_NOISE_STEP`` of each row's seed.

    Drawn in the pipeline's unpacked shape (B, C, rows, cols), so passing
    ``unpack_latents(result)`` as ``latents=`` to the stock pipeline starts from the same point.
    """
    noise = philox_normal(init_seeds, INIT_NOISE_STEP, layout.noise_shape(init_seeds.shape[0]))
    return pack_latents(noise).to(dtype)


class RolloutEngine:
    """Batched, capture-safe FLUX.2 Klein rollouts for GRPO.

    Args:
        pipeline: a loaded ``Flux2KleinPipeline`` (see :func:`precise_fast.models.load_pipeline`).
        kind, eta: the sampler (``precise_fast.sde.KINDS``); ``eta=None`` takes the recipe's default.
        num_steps, height, width: the schedule and image size (recipe: 20, 512, 512).
        latent_dtype: storage dtype of the trajectory (float32 default: the log-probs of
            re-scored steps are then exact; the transformer still runs in its own dtype).
        cuda_graph: capture and replay the step loop (default: on CUDA); ``False`` is the
            eager fallback. ``True`` off CUDA is an error.
        compile_step: wrap :func:`denoise_step` in ``torch.compile(fullgraph=True)``; a string
            names the compile backend (default ``"inductor"``).
        step_backend: backend of the fused op (``"auto"``: the fastest for the device).
        max_text_len, text_layers: prompt encoding when ``prompts=`` are given (recipe: 128, (9, 18, 27)).
        decode_chunk: VAE decode this many images at a time (``None``: all at once).
        max_cached_graphs: captured graphs kept (least recently used dropped first; each pins
            its buffers). ``None`` (default) sizes the cache to the plan set: at least
            :data:`MIN_CACHED_GRAPHS`, and never fewer than the distinct (plan, shape) pairs
            run so far, so every plan of a G2RPO batch (1 + K + K x n_g of them) stays
            captured and the next batch replays them all.
        attention_backend: the attention backend to sample with (``use="rollout"``, see
            :func:`~precise_fast.models.attention_backend_for`; e.g. ``"auto"`` takes the
            forward-only flash-attn 3 on Hopper); ``None`` keeps the transformer's own.

    ``before_capture``: a callable run right before each CUDA-graph warm-up and capture
    (never before a replay); the trainer sets it to drain the reward worker, so no other
    thread issues CUDA work while a graph is captured.
    """

    def __init__(
        self,
        pipeline,
        *,
        kind: str = DEFAULT_KIND,
        eta: float | None = None,
        num_steps: int = 20,
        height: int = 512,
        width: int = 512,
        latent_dtype: torch.dtype = torch.float32,
        cuda_graph: bool | None = None,
        compile_step: bool | str = False,
        step_backend: str = "auto",
        max_text_len: int = RECIPE_MAX_LENGTH,
        text_layers: Sequence[int] = RECIPE_LAYERS,
        decode_chunk: int | None = None,
        max_cached_graphs: int | None = None,
        attention_backend: str | None = None,
    ):
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.kind = check_kind(kind)
        self.eta = float(DEFAULT_ETA[kind] if eta is None else eta)
        self.layout = latent_layout(pipeline, height, width)
        self.latent_dtype = latent_dtype
        self.device = next(self.transformer.parameters()).device
        self.schedule: Schedule = pipeline_schedule(pipeline, num_steps, self.layout.seq_len, latent_dtype)
        self.plans = PlanCache(self.schedule, self.eta, self.device)
        if kind != ODE:
            self.plans.std(kind)  # validates eta for the kind now, not at the first rollout
        self.step_backend = step_backend
        resolved = resolve_backend(step_backend, torch.empty(1, device=self.device, dtype=latent_dtype))
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda" and resolved != "reference"
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the pipeline on CUDA, it is on {self.device}")
        if cuda_graph and resolved == "reference":
            raise ValueError("cuda_graph=True needs a fused step backend; the reference step synchronises with the host")
        self.cuda_graph = bool(cuda_graph)
        self.step_fn = denoise_step
        if compile_step:
            backend = compile_step if isinstance(compile_step, str) else "inductor"
            self.step_fn = torch.compile(denoise_step, fullgraph=True, dynamic=False, backend=backend)
        self.max_text_len = int(max_text_len)
        self.text_layers = tuple(text_layers)
        self.decode_chunk = decode_chunk
        self._prompt_encoder: PromptEncoder | None = None
        self._graphs: dict[tuple, tuple[object, _Buffers]] = {}
        self.max_cached_graphs = None if max_cached_graphs is None else max(1, int(max_cached_graphs))
        self._graph_shapes: set[tuple] = set()  # distinct (plan, shape) keys ever run through a graph
        self._graph_pool = None
        self._warmup_stream = None
        self.attention_backend = attention_backend
        self.before_capture = None
        # Transformer forward rows run so far, per text length (batch x hops of every plan, replayed or
        # eager): what the trainer's rollout FLOP count and MFU are made of (train/report/throughput.py).
        self.forward_rows: collections.Counter[int] = collections.Counter()
        logger.info(
            "rollout engine: kind=%s eta=%g steps=%d %dx%d (%d tokens), op backend=%s, cuda graph=%s, compiled=%s",
            self.kind, self.eta, num_steps, height, width, self.layout.seq_len, resolved, self.cuda_graph, compile_step,
        )

    # ------------------------------------------------------------------ inputs

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def prompt_encoder(self) -> PromptEncoder:
        if self._prompt_encoder is None:
            self._prompt_encoder = PromptEncoder(self.pipeline, max_length=self.max_text_len, layers=self.text_layers)
        return self._prompt_encoder

    def _embeddings(self, prompt_embeds, prompts) -> torch.Tensor:
        if (prompt_embeds is None) == (prompts is None):
            raise ValueError("pass exactly one of prompt_embeds= or prompts=")
        if prompts is not None:
            prompt_embeds = self.prompt_encoder(prompts)
        expected = self.transformer.config.joint_attention_dim
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != expected:
            raise ValueError(f"prompt_embeds must be (B, L, {expected}), got {tuple(prompt_embeds.shape)}")
        return prompt_embeds.to(self.device, self.transformer.dtype)

    def _start_latents(self, init_seeds, given) -> torch.Tensor:
        batch = init_seeds.shape[0]
        if given is None:
            return initial_latents(init_seeds, self.layout, self.latent_dtype)
        if given.dim() == 4:
            if tuple(given.shape) != self.layout.noise_shape(batch):
                raise ValueError(f"initial_latents must be {self.layout.noise_shape(batch)}, got {tuple(given.shape)}")
            given = pack_latents(given)
        elif tuple(given.shape) != self.layout.packed_shape(batch):
            raise ValueError(f"packed initial_latents must be {self.layout.packed_shape(batch)}, got {tuple(given.shape)}")
        return given.to(self.device, self.latent_dtype)

    # ------------------------------------------------------------------ the step loop

    def _run_plan(self, plan: Plan, bufs: _Buffers) -> None:
        """Every hop of ``plan`` on ``bufs``: no host sync, no data-dependent Python."""
        batch = bufs.batch
        for j, hop in enumerate(plan.hops):
            self.step_fn(
                self.transformer,
                bufs.step_latents[j],
                plan.timestep[j].expand(batch),
                plan.sigma[j].expand(batch),
                plan.next_sigma[j].expand(batch),
                plan.std[j].expand(batch),
                bufs.prompt_embeds,
                bufs.text_ids,
                bufs.latent_ids,
                bufs.seeds,
                plan.noise_step[j],
                kind=hop.kind,
                backend=self.step_backend,
                out=(bufs.step_latents[j + 1], bufs.step_log_probs[j], bufs.step_means[j]),
            )

    def _weights_key(self) -> tuple:
        # A captured graph bakes in parameter storage and Python-side adapter flags: in-place
        # updates (optimiser steps, EMA copies) are seen by replays, but a new tensor (.to(),
        # a new adapter) or a switched / disabled adapter needs a recapture.
        params = tuple((id(p), p.data_ptr()) for p in self.transformer.parameters())
        adapters = tuple(
            (tuple(m.active_adapters), bool(m.disable_adapters), bool(m.merged))
            for m in self.transformer.modules()
            if hasattr(m, "active_adapters") and hasattr(m, "merged")
        )
        # The attention kernels are baked in too: a graph captured with flash-attn 3 keeps it.
        attention = getattr(self.transformer, "precise_fast_attention_backend", None)
        return params, adapters, attention

    def graph_cache_bound(self) -> int:
        """How many captured graphs the cache keeps now (see ``max_cached_graphs``)."""
        if self.max_cached_graphs is not None:
            return self.max_cached_graphs
        return max(MIN_CACHED_GRAPHS, len(self._graph_shapes))

    def _capture(self, run) -> object:
        """Warm up ``run`` on a side stream, then capture it into a CUDA graph (``.replay()``)."""
        # Lazy cuBLAS / Triton initialisation happens in the warm-up, never inside the capture.
        # One warm-up stream per engine: cuBLAS keeps a workspace per stream it ever ran on.
        if self._warmup_stream is None:
            self._warmup_stream = torch.cuda.Stream(self.device)
        side = self._warmup_stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._graph_pool is None or not self._graphs:
            # A pool that no live graph holds may still keep blocks a capture allocated for good
            # (cuBLAS's workspace for the capture stream): torch cannot free it, and capturing
            # into it again fails its allocator's assert (use_count > 0). Such a pool is left.
            self._graph_pool = torch.cuda.graph_pool_handle()
        # "thread_local": CUDA calls of other threads (the reward worker's side stream) are
        # not this capture's business; the default "global" mode would fail the capture on them.
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
            run()
        return graph

    def _graph_for(self, plan: Plan, batch: int, text_len: int, embed_dim: int, embed_dtype) -> tuple:
        shape = (plan.key, batch, text_len, embed_dim, embed_dtype)
        key = (*shape, self._weights_key())
        self._graph_shapes.add(shape)
        if key in self._graphs:
            self._graphs[key] = self._graphs.pop(key)  # most recently used last
        else:
            bufs = _Buffers(batch, plan, self.layout, text_len, embed_dim, embed_dtype, self.latent_dtype, self.device)
            while len(self._graphs) >= self.graph_cache_bound():
                # Each graph pins its static buffers: bound the memory.
                self._graphs.pop(next(iter(self._graphs)))
            if self.before_capture is not None:
                self.before_capture()
            graph = self._capture(lambda: self._run_plan(plan, bufs))
            self._graphs[key] = (graph, bufs)
            logger.info("captured a CUDA graph: %d hops, batch %d, %d text tokens", len(plan), batch, text_len)
        return self._graphs[key]

    def reset_graphs(self) -> None:
        """Drop every captured graph and its static buffers (frees their memory)."""
        self._graphs.clear()
        self._graph_shapes.clear()

    def _attention(self):
        if self.attention_backend is None:
            return contextlib.nullcontext()
        return attention_backend_for(self.transformer, self.attention_backend, "rollout")

    @torch.no_grad()
    def run_plan(self, plan: Plan, prompt_embeds: torch.Tensor, seeds: torch.Tensor, start: torch.Tensor) -> _Buffers:
        """Run ``plan`` from packed latents ``start`` (B, S, C); returns buffers owned by the caller."""
        self.forward_rows[prompt_embeds.shape[1]] += prompt_embeds.shape[0] * len(plan.hops)
        with self._attention():
            return self._run_plan_on_buffers(plan, prompt_embeds, seeds, start)

    def _run_plan_on_buffers(self, plan: Plan, prompt_embeds, seeds, start) -> _Buffers:
        batch, text_len, embed_dim = prompt_embeds.shape
        if self.cuda_graph:
            graph, static = self._graph_for(plan, batch, text_len, embed_dim, prompt_embeds.dtype)
            static.prompt_embeds.copy_(prompt_embeds)
            static.seeds.copy_(seeds)
            static.step_latents[0].copy_(start)
            graph.replay()
            return static.clone()
        bufs = _Buffers(batch, plan, self.layout, text_len, embed_dim, prompt_embeds.dtype, self.latent_dtype, self.device)
        bufs.prompt_embeds.copy_(prompt_embeds)
        bufs.seeds.copy_(seeds)
        bufs.step_latents[0].copy_(start)
        self._run_plan(plan, bufs)
        return bufs

    @torch.no_grad()
    def decode(self, packed_latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) float32 in [0, 1] of packed final latents."""
        return decode_latents(self.pipeline, packed_latents, self.layout, chunk=self.decode_chunk)

    # ------------------------------------------------------------------ public sampling

    @torch.no_grad()
    def sample(
        self,
        prompt_embeds: torch.Tensor | None = None,
        *,
        prompts: Sequence[str] | None = None,
        seeds,
        init_seeds=None,
        initial_latents: torch.Tensor | None = None,
        mode: str = "sde",
        window: tuple[int, int] | None = None,
        decode: bool = True,
    ) -> Rollout:
        """Sample a batch of trajectories.

        Args:
            prompt_embeds: (B, L, D) text embeddings, or ``prompts`` (B strings) to encode
                (cached, :class:`~precise_fast.models.PromptEncoder`).
            seeds: (B,) integers; row r's step noise is a function of ``seeds[r]`` alone.
            init_seeds: (B,) integers for the initial latents (default ``seeds``); give
                the members of a prompt group the same value for "same initial latent per prompt".
            initial_latents: explicit start, (B, C, rows, cols) as the pipeline's ``latents=``
                or packed (B, S, C); overrides ``init_seeds``.
            mode: ``"sde"`` (every step uses the engine's kind), ``"window"`` (only
                ``window=(start, stop)`` steps; ODE elsewhere), or ``"ode"``.
            decode: also decode the final latents to images for the rewards.
        """
        embeds = self._embeddings(prompt_embeds, prompts)
        batch = embeds.shape[0]
        seeds_t = as_seed_tensor(seeds, "seeds", self.device)
        init_t = seeds_t if init_seeds is None else as_seed_tensor(init_seeds, "init_seeds", self.device)
        if seeds_t.shape[0] != batch or init_t.shape[0] != batch:
            raise ValueError(f"seeds and init_seeds need {batch} entries (one per prompt_embeds row)")
        kinds = trajectory_kinds(self.num_steps, self.kind, mode, window)
        plan = self.plans.trajectory(kinds)
        bufs = self.run_plan(plan, embeds, seeds_t, self._start_latents(init_t, initial_latents))
        n = self.num_steps
        rows = lambda t: t.unsqueeze(0).expand(batch, -1).contiguous()  # noqa: E731
        return Rollout(
            latents=bufs.latents,
            means=bufs.means,
            log_probs=bufs.log_probs,
            sigmas=rows(self.schedule.sigmas.to(self.device)),
            timesteps=rows(plan.timestep),
            stds=rows(plan.std),
            stochastic=torch.tensor([k in STOCHASTIC for k in kinds]),
            kinds=kinds,
            prompt_embeds=bufs.prompt_embeds,
            text_ids=bufs.text_ids,
            latent_ids=bufs.latent_ids,
            seeds=seeds_t,
            init_seeds=init_t,
            layout=self.layout,
            kind=self.kind,
            eta=self.eta,
            images=self.decode(bufs.step_latents[n]) if decode else None,
        )
