"""The capture-safe rollout engine for GRPO on FLUX.2 Klein.

Public API::

    RolloutEngine(pipeline, *, kind="precise", eta=None, num_steps=20, height=512, width=512,
                  latent_dtype=torch.float32, cuda_graph=None, compile_step=False,
                  step_backend="auto", max_text_len=128, text_layers=(9, 18, 27), decode_chunk=None)
        .sample(prompt_embeds=None, *, prompts=None, seeds, init_seeds=None, initial_latents=None,
                mode="sde" | "window" | "ode", window=None, decode=True) -> Rollout
    sample_g2rpo(engine, prompt_embeds=None, *, prompts=None, init_seeds, member_seeds, steps,
                 granularities=(1,), initial_latents=None, decode=True, completion="paper") -> G2RPORollout
    denoise_step(transformer, x, timestep, sigma, next_sigma, std, prompt_embeds, text_ids,
                 latent_ids, seeds, step_index, *, kind, backend="auto")
    score_transitions(transformer, rows: TransitionRows, *, old_mean=None, return_mean=False, backend="auto")
        -> Score(velocity, log_prob, mean, guard_bias)   # the one re-scoring primitive (training runs it)
    group_seeds(prompt_seeds, group_size, *, same_initial_latent=False) -> (seeds, init_seeds)
    initial_latents(init_seeds, layout, dtype=torch.float32)
    plain_rollout(...)   # the reference loop over the stock pipeline's components (tests, benchmark)
"""

from .baseline import plain_rollout
from .engine import Rollout, RolloutEngine, denoise_step, initial_latents
from .g2rpo import G2RPORollout, sample_g2rpo
from .plan import INIT_NOISE_STEP, Hop, Plan, Schedule, granular_path, noise_step_index, pipeline_schedule, trajectory_kinds
from .scoring import Score, TransitionRows, score_transitions
from .seeds import group_seeds, mix_seed

__all__ = [
    "G2RPORollout",
    "Hop",
    "INIT_NOISE_STEP",
    "Plan",
    "Rollout",
    "RolloutEngine",
    "Schedule",
    "Score",
    "TransitionRows",
    "denoise_step",
    "granular_path",
    "group_seeds",
    "initial_latents",
    "mix_seed",
    "noise_step_index",
    "pipeline_schedule",
    "plain_rollout",
    "sample_g2rpo",
    "score_transitions",
    "trajectory_kinds",
]
