"""A training epoch under the paper's precision (``model.precision: autocast_bf16``).

Encodes Tencent-Hunyuan/Precise precise_sde/train/rl_trainer.py: float32 masters and optimizer
(no bf16 engine), forwards under bf16 autocast in sampling and training alike, float32 reward
models (``dtype=torch.float32`` scorers).
"""

import torch

from precise_fast.train.policy.zero import deepspeed_config
from precise_fast.train.trainer import Trainer

from .conftest import small_config


def test_on_policy_under_bf16_autocast(dist1, tmp_path):
    cfg = small_config(
        tmp_path, "model.precision=autocast_bf16",
        "sampler.batch_size=4", "sampler.num_batches_per_epoch=1", "sampler.images_per_prompt=2",
        "train.gradient_accumulation_steps=1", "train.timesteps_per_forward=1", "sampler.num_steps=6",
    )
    ds = deepspeed_config(cfg)
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]  # float32 master weights and Adam
    trainer = Trainer(cfg, dist1)
    try:
        assert trainer.pipeline.text_encoder.dtype == torch.bfloat16
        assert trainer.pipeline.vae.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in trainer.policy.params)
        metrics = trainer.run_epoch(1)
        assert metrics["train/updates"] == 1
        # Sampling and training forwards both autocast: the first ratio is exactly 1.
        assert metrics["train/first_ratio_abs_dev"] == 0.0
    finally:
        trainer.close()
