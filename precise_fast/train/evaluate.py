"""Evaluation on held-out prompts: fixed seeds, the EMA weights, per-reward means over all ranks.

Each eval draws the same initial latents (seeded by prompt index only), so successive
evals differ only by the weights. The default sampler is the ODE (deterministic given the
latent); any stochastic kind may be chosen instead. Ranks take equal shares (the last
padded with repeats that are not counted) so every rank runs the same number of
forwards, which a ZeRO-3 parameter gather needs.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..rollout.seeds import mix_seed
from .distributed import all_reduce_

_EVAL = 17  # random-stream tag


@torch.no_grad()
def evaluate(rollouts, reward_fn, prompt_set, *, cfg, rank: int, world_size: int, weights_context=None, gathered=None,
             keep_preview: int = 0) -> tuple[dict[str, float], dict]:
    """Returns ``(metrics, preview)``; metrics are ``eval/<component>`` means and ``eval/reward_mean``."""
    total = min(cfg.eval.num_prompts or len(prompt_set), len(prompt_set))
    share = math.ceil(total / world_size)
    mine = [min(rank * share + i, total - 1) for i in range(share)]
    counted = [rank * share + i < total for i in range(share)]
    mode = "ode" if cfg.eval.kind == "ode" else "sde"
    sums: dict[str, torch.Tensor] = {}
    combined_sum = torch.zeros(2, dtype=torch.float64)
    preview = {"images": [], "prompts": [], "rewards": []}
    with weights_context() if weights_context else contextlib.nullcontext(), gathered() if gathered else contextlib.nullcontext():
        for start in range(0, share, cfg.eval.batch_size):
            idx = mine[start : start + cfg.eval.batch_size]
            use = torch.tensor(counted[start : start + cfg.eval.batch_size])
            texts = [prompt_set.prompts[i] for i in idx]
            seeds = [mix_seed(cfg.run.seed, _EVAL, i) for i in idx]
            ro = rollouts.sample(texts, seeds, seeds, mode=mode)
            result = reward_fn(ro.images, texts, [prompt_set.metadata[i] for i in idx])
            for name, scores in result.per_component.items():
                ok = result.component_valid[name].cpu() & use
                acc = sums.setdefault(name, torch.zeros(2, dtype=torch.float64))
                acc += torch.stack([scores.cpu().double()[ok].sum(), ok.double().sum()])
            raw_ok = result.valid.cpu() & use
            raw = sum(result.weights.get(n, 1.0) * result.per_component[n].cpu().double() for n in result.per_component)
            combined_sum += torch.stack([raw[raw_ok].sum(), raw_ok.double().sum()])
            for j in range(len(idx)):
                if len(preview["images"]) < keep_preview and bool(use[j]):
                    preview["images"].append(ro.images[j].float().cpu())
                    preview["prompts"].append(texts[j])
                    preview["rewards"].append(float(raw[j]))
    metrics = {}
    for name in sorted(sums):
        s = all_reduce_(sums[name], "sum")
        metrics[f"eval/{name}"] = float(s[0] / s[1]) if s[1] > 0 else float("nan")
    c = all_reduce_(combined_sum, "sum")
    metrics["eval/reward_mean"] = float(c[0] / c[1]) if c[1] > 0 else float("nan")
    return metrics, preview
