"""One-rank runs that stand for the main job: the overrides the learning test, the sampler
study and the gradient-signal probe share, so they stay matched to the 2-rank config."""

from __future__ import annotations

from pathlib import Path

from ..train.config import load_config

MAIN_JOB_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy" / "shapes_precise.yaml"
MAIN_JOB_RANKS = 2  # `make train` runs --num_gpus 2
# The stand-ins' eval: fixed initial latents per held-out prompt (62 x 2 = 124 ODE images), half
# the main job's 4, so a one-rank run's two evals cost less than its training.
STAND_IN_EVAL_SEEDS = 2


def one_rank_epoch(config: str | Path = MAIN_JOB_CONFIG, ranks: int = MAIN_JOB_RANKS) -> list[str]:
    """Overrides under which one rank does the ``ranks``-rank job's epoch: the same rollouts
    (``ranks`` x its sampling batches) and the same optimizer steps (``ranks`` x its
    accumulation, each step averaging as many samples as the ranks' all-reduce did)."""
    cfg = load_config(config)
    return [f"sampler.num_batches_per_epoch={cfg.sampler.num_batches_per_epoch * ranks}",
            f"train.gradient_accumulation_steps={cfg.train.gradient_accumulation_steps * ranks}"]


def fixed_eval(images_per_prompt: int = STAND_IN_EVAL_SEEDS, seed: int = 0) -> list[str]:
    """The ODE eval on every held-out prompt, ``images_per_prompt`` each, on the same images
    whatever ``run.seed`` is, so runs that differ in training seed are compared fairly."""
    return [f"eval.seed={seed}",
            f"eval.targets=[{{name: test, kind: ode, num_prompts: 0, images_per_prompt: {images_per_prompt}, batch_size: 31}}]"]
