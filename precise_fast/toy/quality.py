"""Base quality of a world model: the toy GenEval score of ODE samples on a prompt set.

The samples come from the project's rollout engine (the sampler the trainer's eval uses, no
classifier-free guidance), ``seeds_per_prompt`` fixed initial latents per prompt, with the
trainer eval's items and seeds (:func:`precise_fast.train.evaluate.item_seed`: item ``i`` is
prompt ``i // seeds_per_prompt``), so with the main job's 4 seeds per prompt the score is
the base its eval reports.
"""

from __future__ import annotations

import torch

from ..models import TINY_TEXT_LAYERS, load_pipeline
from ..rollout import RolloutEngine
from ..train.evaluate import item_seed
from ..train.prompts import load_prompts
from . import world
from .reward import ToyGenEvalReward

NUM_STEPS = 10


@torch.no_grad()
def world_score(model_dir, prompt_file, *, seeds_per_prompt: int = 2, batch_size: int = 32, max_text_len: int = 32,
                pipeline=None, seed: int = 0) -> dict:
    """``{"score", "strict_correct", "per_tag": {tag: score}}``, means over prompts x seeds."""
    pipe = pipeline if pipeline is not None else load_pipeline(model_dir)
    engine = RolloutEngine(pipe, kind="precise", num_steps=NUM_STEPS, height=world.IMAGE_SIZE, width=world.IMAGE_SIZE,
                           max_text_len=max_text_len, text_layers=TINY_TEXT_LAYERS)
    prompts = load_prompts(prompt_file)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(seeds_per_prompt)]
    reward = ToyGenEvalReward()
    scores, strict, tags = [], [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        texts = [prompts.prompts[i] for i, _ in chunk]
        metas = [prompts.metadata[i] for i, _ in chunk]
        seeds = [item_seed(seed, i * seeds_per_prompt + s) for i, s in chunk]
        images = engine.sample(prompts=texts, seeds=seeds, mode="ode").images
        out = reward(images, texts, metas)
        scores += out.scores.tolist()
        strict += out.extras["strict_correct"].tolist()
        tags += [m["tag"] for m in metas]
    per_tag = {t: sum(s for s, g in zip(scores, tags) if g == t) / tags.count(t) for t in dict.fromkeys(tags)}
    return {"score": sum(scores) / len(scores), "strict_correct": sum(strict) / len(strict), "per_tag": per_tag}
