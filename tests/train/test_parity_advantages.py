"""GRPO advantages as the paper computes them, on small cases written out by hand.

Encodes Tencent-Hunyuan/Precise precise_sde/core/stat_tracking.py (PerPromptStatTracker: per
prompt *text*, population std + 1e-4, ``global_std`` option, invalid -> 0) and
precise_sde/train/rl_trainer.py (``num_image_per_prompt == 1`` turns per-prompt tracking off:
``(r - mean) / (std + 1e-4)`` over the whole gathered batch).
"""

from types import SimpleNamespace

import numpy as np
import torch

from precise_fast.train.config import load_config
from precise_fast.train.phases.credit import CreditSettings, assign_credit

from .conftest import TINY_CONFIG


def _paper_tracker(prompts, rewards, global_std=False):
    prompts, rewards = np.array(prompts), np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    for p in np.unique(prompts):
        sel = prompts == p
        mean = rewards[sel].mean()
        std = (rewards.std() if global_std else rewards[sel].std()) + 1e-4
        out[sel] = (rewards[sel] - mean) / std
    return np.clip(out, -5, 5)  # the paper clamps to adv_clip_max inside the loss


def _rollouts(rewards, group_ids, prompt_index):
    n = len(rewards)
    return SimpleNamespace(rewards={"r": torch.tensor(rewards)}, valid={"r": torch.ones(n, dtype=torch.bool)},
                           group_ids=torch.tensor(group_ids), prompt_index=torch.tensor(prompt_index))


def _cfg(*overrides):
    return load_config(TINY_CONFIG, ["reward.normalize=false", *overrides])


def _adv(cfg, ro):
    return assign_credit(ro, weights={"r": 1.0}, settings=CreditSettings.from_config(cfg), rank=0, num_steps=2).advantages[:, 0].double().numpy()


# Prompt 7 was drawn twice this epoch (two groups of 2): the paper pools it into one group of 4.
REWARDS = [1.0, 3.0, 2.0, 6.0, 0.5, 4.0]
GROUPS = [0, 0, 1, 1, 2, 2]
PROMPTS = [7, 7, 7, 7, 9, 9]


def test_groups_pool_every_sample_of_a_prompt_by_default():
    got = _adv(_cfg("sampler.images_per_prompt=2"), _rollouts(REWARDS, GROUPS, PROMPTS))
    np.testing.assert_allclose(got, _paper_tracker(PROMPTS, REWARDS), rtol=1e-5)
    by_draw = _adv(_cfg("sampler.images_per_prompt=2", "advantage.group_by=draw"), _rollouts(REWARDS, GROUPS, PROMPTS))
    np.testing.assert_allclose(by_draw, _paper_tracker(GROUPS, REWARDS), rtol=1e-5)


def test_global_std_option():
    cfg = _cfg("sampler.images_per_prompt=2", "advantage.global_std=true")
    got = _adv(cfg, _rollouts(REWARDS, GROUPS, PROMPTS))
    np.testing.assert_allclose(got, _paper_tracker(PROMPTS, REWARDS, global_std=True), rtol=1e-5)


def test_one_image_per_prompt_normalises_globally_instead_of_dropping_everything():
    rewards = [1.0, 3.5, 2.0, 6.0]
    cfg = _cfg("sampler.images_per_prompt=1")
    credit = assign_credit(_rollouts(rewards, [0, 1, 2, 3], [4, 5, 6, 8]), weights={"r": 1.0}, settings=CreditSettings.from_config(cfg), rank=0, num_steps=2)
    r = np.array(rewards)
    np.testing.assert_allclose(credit.advantages[:, 0].double().numpy(), (r - r.mean()) / (r.std() + 1e-4), rtol=1e-5)
    assert bool(credit.keep.all())
