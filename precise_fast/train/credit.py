"""From raw rewards to what each rank trains on: gather, normalise, advantages, drop, balance.

1. Gather every rank's raw per-component rewards, validity and group ids (all ranks then
   hold the global batch and compute identical statistics; no rank is special).
2. Normalise each component over the global batch ignoring invalid samples, combine with
   the weights (``precise_fast.rewards.normalize_rewards``; invalid -> sentinel -10).
3. Per-group advantages (GRPO) or per-(step, granularity) ones summed (G2RPO).
4. Keep this rank's rows whose advantage is non-zero somewhere; pad every rank to the same
   row count with weight-0 copies (ZeRO needs equal backward counts; see update_phase.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rewards import combine_rewards, normalize_rewards
from .advantages import g2rpo_advantages, grpo_advantages, keep_mask
from .distributed import all_gather_cat, all_reduce_
from .transitions import Transitions


@dataclass
class Credit:
    advantages: torch.Tensor  # (n, T) this rank's rows
    keep: torch.Tensor  # (n,) bool, this rank
    global_raw: torch.Tensor  # (N, ...) combined raw rewards (weights, no normalisation), for logs
    global_valid: torch.Tensor  # (N, ...)
    global_components: dict[str, torch.Tensor]  # raw, (N, ...)
    global_component_valid: dict[str, torch.Tensor]
    global_advantages: torch.Tensor  # (N, T)
    global_keep: torch.Tensor  # (N,)
    global_prompt_index: torch.Tensor  # (N,)


def _flat(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.reshape(-1) for k, v in d.items()}


def assign_credit(rollouts, *, weights: dict[str, float], cfg, rank: int, num_steps: int) -> Credit:
    comps = {k: all_gather_cat(v) for k, v in sorted(rollouts.rewards.items())}
    valids = {k: all_gather_cat(v) for k, v in sorted(rollouts.valid.items())}
    groups = all_gather_cat(rollouts.group_ids)
    prompt_index = all_gather_cat(rollouts.prompt_index)
    shape = next(iter(comps.values())).shape
    if cfg.reward.normalize:
        combined, valid = normalize_rewards(_flat(comps), weights, _flat(valids))
    else:
        combined, valid = combine_rewards(_flat(comps), weights, _flat(valids), normalize=False)
    raw, _ = combine_rewards(_flat(comps), weights, _flat(valids), normalize=False)
    combined, valid, raw = combined.reshape(shape), valid.reshape(shape), raw.reshape(shape)
    a = cfg.advantage
    if cfg.algorithm.name == "g2rpo":
        adv = g2rpo_advantages(combined, valid, groups, eps=a.eps, clip=a.clip)
    else:
        adv = grpo_advantages(combined, valid, groups, eps=a.eps, clip=a.clip).unsqueeze(1).expand(-1, num_steps)
    adv = adv.contiguous()
    keep = keep_mask(adv) if a.drop_zero else torch.ones(adv.shape[0], dtype=torch.bool)
    n = rollouts.group_ids.shape[0]
    mine = slice(rank * n, (rank + 1) * n)
    return Credit(
        advantages=adv[mine], keep=keep[mine], global_raw=raw, global_valid=valid,
        global_components=comps, global_component_valid=valids, global_advantages=adv,
        global_keep=keep, global_prompt_index=prompt_index,
    )


def balanced_rows(transitions: Transitions, credit: Credit) -> Transitions | None:
    """This rank's kept rows, padded with weight-0 copies to the largest count over ranks; None if no rank kept any."""
    kept = credit.keep.nonzero().flatten()
    most = all_reduce_(torch.tensor([len(kept)], dtype=torch.int64), "max")
    most = int(most)
    if most == 0:
        return None
    filler = kept[:1] if len(kept) else torch.zeros(1, dtype=torch.long)
    rows = torch.cat([kept, filler.repeat(most - len(kept))])
    data = transitions.select(rows)
    data.advantages = credit.advantages[rows].to(data.x.device)
    weight = torch.zeros(most, dtype=torch.float32)
    weight[: len(kept)] = 1.0
    data.weight = weight.to(data.x.device)
    return data
