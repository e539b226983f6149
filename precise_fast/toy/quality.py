"""Base quality of a world model: the toy GenEval score of ODE samples on a prompt set.

The samples come from the project's rollout engine (the sampler the trainer's eval uses, no
classifier-free guidance), ``seeds_per_prompt`` fixed initial latents per prompt, with the
trainer eval's items and seeds (:func:`precise_fast.train.report.evaluator.item_seed`: item ``i`` is
prompt ``i // seeds_per_prompt``), so with the main job's 4 seeds per prompt the score is
the base its eval reports.
"""

from __future__ import annotations

import numpy as np
import torch

from ..kinds import DEFAULT_KIND, ODE
from ..models import TINY_TEXT_LAYERS, load_pipeline
from ..prompts import load_prompts
from ..rewards.shapes import world
from ..rewards.shapes.reward import ToyGenEvalReward, to_pil
from ..rollout import RolloutEngine
from ..train.report.evaluator import item_seed

NUM_STEPS = 10


def nothing_detected(images: torch.Tensor, reward: ToyGenEvalReward | None = None) -> torch.Tensor:
    """(B,) bool: the reward's detector finds no object at all in the image (no colour
    component of an object's size, whatever its shape). A washed-out sample (pretrain.py
    stage 2: objects blended to pale colours, which the detector's colour rule takes for
    background) is one, as is a blank canvas. The share of such images is the headroom RL
    on this world removes first (docs/SAMPLER_STUDY.md); the score of the others is the
    model's composition skill."""
    detector = (reward or ToyGenEvalReward()).scorer.detector
    found = detector.detect([np.asarray(im) for im in to_pil(images)])
    return torch.tensor([all(boxes.shape[0] == 0 for boxes, _ in per_class) for per_class in found])


@torch.no_grad()
def world_score(model_dir, prompt_file, *, seeds_per_prompt: int = 2, batch_size: int = 32, max_text_len: int = 32,
                pipeline=None, seed: int = 0) -> dict:
    """``{"score", "strict_correct", "per_tag": {tag: score}, "nothing_detected", "score_where_detected"}``:
    means over prompts x seeds; the last two split the score by :func:`nothing_detected`."""
    pipe = pipeline if pipeline is not None else load_pipeline(model_dir)
    engine = RolloutEngine(pipe, kind=DEFAULT_KIND, num_steps=NUM_STEPS, height=world.IMAGE_SIZE, width=world.IMAGE_SIZE,
                           max_text_len=max_text_len, text_layers=TINY_TEXT_LAYERS)
    prompts = load_prompts(prompt_file)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(seeds_per_prompt)]
    reward = ToyGenEvalReward()
    scores, strict, tags, blank = [], [], [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        texts = [prompts.prompts[i] for i, _ in chunk]
        metas = [prompts.metadata[i] for i, _ in chunk]
        seeds = [item_seed(seed, i * seeds_per_prompt + s) for i, s in chunk]
        images = engine.sample(prompts=texts, seeds=seeds, mode=ODE).images
        out = reward(images, texts, metas)
        scores += out.scores.tolist()
        strict += out.extras["strict_correct"].tolist()
        tags += [m["tag"] for m in metas]
        blank += nothing_detected(images, reward).tolist()
    per_tag = {t: sum(s for s, g in zip(scores, tags) if g == t) / tags.count(t) for t in dict.fromkeys(tags)}
    drawn = [sc for sc, b in zip(scores, blank) if not b]
    return {"score": sum(scores) / len(scores), "strict_correct": sum(strict) / len(strict), "per_tag": per_tag,
            "nothing_detected": sum(blank) / len(blank),
            "score_where_detected": sum(drawn) / len(drawn) if drawn else float("nan")}
