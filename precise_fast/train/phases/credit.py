"""From raw rewards to what each rank trains on: gather, normalise, advantages, drop, balance.

1. Gather every rank's raw per-component rewards, validity and group ids (all ranks then
   hold the global batch and compute identical statistics; no rank is special).
2. Normalise each component over the global batch ignoring invalid samples, combine with
   the weights (``precise_fast.rewards.normalize_rewards``; invalid -> sentinel -10).
3. Per-group advantages (GRPO) or per-(step, granularity) ones summed (G2RPO).
   Groups (``advantage.group_by``): by prompt (the paper's per-prompt stat tracker pools
   every sample of a prompt in the epoch), or by drawn group. ``images_per_prompt: 1`` has no
   groups: the whole global batch is one (the paper turns its tracker off and normalises
   globally, precise_sde/train/rl_trainer.py).
4. Keep this rank's rows whose advantage is non-zero somewhere, then
   - ``train.update_schedule: paper`` (:func:`paper_rows`): pad them with randomly chosen
     zero-advantage samples of this rank to a multiple of ``num_batches_per_epoch``, as the
     paper does; if any rank kept nothing the epoch trains nothing (the paper skips it);
   - ``fixed_size`` (:func:`balanced_rows`): pad every rank to the same row count with
     weight-0 copies (ZeRO needs equal backward counts; see phases/update.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...rewards import combine_rewards, normalize_rewards
from ..config import AdvantageConfig, Config, paper_schedule
from ..grpo.advantages import g2rpo_advantages, grpo_advantages, keep_mask
from ..grpo.transitions import Transitions
from ..policy.distributed import all_gather_cat, all_reduce_
from ..state.rng import Stream, stream_generator



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


@dataclass(frozen=True)
class CreditSettings:
    """What the credit phase reads of a run config (built once per run: :meth:`from_config`)."""

    seed: int  # the padding draw's stream is keyed by it
    normalize: bool  # reward.normalize: per-component normalisation over the global batch
    advantage: AdvantageConfig  # eps, clip, grouping, global std, dropping zero advantages
    g2rpo: bool  # G2RPO's per-(step, granularity) advantages instead of GRPO's
    g2rpo_paper_zscore: bool  # G2RPO's own z-score (unbiased std, eps 1e-8)
    images_per_prompt: int
    paper_schedule: bool  # pad kept rows to a multiple of num_batches (the paper) or balance ranks
    num_batches: int

    @classmethod
    def from_config(cls, cfg: Config) -> CreditSettings:
        a = cfg.algorithm
        return cls(seed=cfg.run.seed, normalize=cfg.reward.normalize, advantage=cfg.advantage, g2rpo=a.name == "g2rpo",
                   g2rpo_paper_zscore=a.g2rpo_zscore == "paper", images_per_prompt=cfg.sampler.images_per_prompt,
                   paper_schedule=paper_schedule(cfg), num_batches=cfg.sampler.num_batches_per_epoch)


def assign_credit(rollouts, *, weights: dict[str, float], settings: CreditSettings, rank: int, num_steps: int) -> Credit:
    comps = {k: all_gather_cat(v) for k, v in sorted(rollouts.rewards.items())}
    valids = {k: all_gather_cat(v) for k, v in sorted(rollouts.valid.items())}
    groups = all_gather_cat(rollouts.group_ids)
    prompt_index = all_gather_cat(rollouts.prompt_index)
    shape = next(iter(comps.values())).shape
    if settings.normalize:
        combined, valid = normalize_rewards(_flat(comps), weights, _flat(valids))
    else:
        combined, valid = combine_rewards(_flat(comps), weights, _flat(valids), normalize=False)
    raw, _ = combine_rewards(_flat(comps), weights, _flat(valids), normalize=False)
    combined, valid, raw = combined.reshape(shape), valid.reshape(shape), raw.reshape(shape)
    a = settings.advantage
    if settings.g2rpo:
        paper = settings.g2rpo_paper_zscore
        adv = g2rpo_advantages(combined, valid, groups, eps=1e-8 if paper else a.eps, clip=a.clip, unbiased=paper)
    else:
        if settings.images_per_prompt == 1:
            groups = torch.zeros_like(groups)
        elif a.group_by == "prompt":
            groups = prompt_index
        adv = grpo_advantages(combined, valid, groups, eps=a.eps, clip=a.clip, global_std=a.global_std)
        adv = adv.unsqueeze(1).expand(-1, num_steps)
    adv = adv.contiguous()
    keep = keep_mask(adv) if a.drop_zero else torch.ones(adv.shape[0], dtype=torch.bool)
    n = rollouts.group_ids.shape[0]
    mine = slice(rank * n, (rank + 1) * n)
    return Credit(
        advantages=adv[mine], keep=keep[mine], global_raw=raw, global_valid=valid,
        global_components=comps, global_component_valid=valids, global_advantages=adv,
        global_keep=keep, global_prompt_index=prompt_index,
    )


def paper_rows(transitions: Transitions, credit: Credit, *, num_batches: int, generator: torch.Generator) -> Transitions | None:
    """This rank's kept rows plus randomly chosen zero-advantage ones up to a multiple of
    ``num_batches`` (Tencent-Hunyuan/Precise rl_trainer.py, the mask padding before "rebatch
    for training"); every row has weight 1: the padding is real samples whose zero advantage
    still counts in each minibatch's mean. None when some rank kept nothing."""
    keep = credit.keep.clone()
    fewest = -int(all_reduce_(torch.tensor([-int(keep.sum())], dtype=torch.int64), "max"))
    if fewest == 0:
        return None
    short = (-int(keep.sum())) % num_batches
    if short:
        dropped = (~keep).nonzero().flatten()
        if len(dropped) >= short:  # always true when a rank's samples are a multiple of num_batches
            keep[dropped[torch.randperm(len(dropped), generator=generator)[:short]]] = True
    rows = keep.nonzero().flatten()
    data = transitions.select(rows)
    data.advantages = credit.advantages[rows].to(data.x.device)
    data.weight = torch.ones(len(rows), dtype=torch.float32, device=data.x.device)
    return data


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


def epoch_rows(transitions: Transitions, credit: Credit, *, settings: CreditSettings, epoch_key: int, rank: int) -> Transitions | None:
    """What this rank trains on this epoch, under the run's ``train.update_schedule``."""
    if settings.paper_schedule:
        gen = stream_generator(settings.seed, Stream.PADDING, epoch_key, rank)
        return paper_rows(transitions, credit, num_batches=settings.num_batches, generator=gen)
    return balanced_rows(transitions, credit)
