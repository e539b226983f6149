"""On-policy check: with one sampling batch and no accumulation the first ratio is exactly 1.

A ratio away from 1 before any update means the training forward and the sampling forward
differ (a classic bug in these trainers): here both run ``predict_velocity`` and the same
fused step op, through the DeepSpeed engine vs the bare module.
"""

import dataclasses

import pytest

from precise_fast.train.trainer import Trainer

from .conftest import small_config


@pytest.mark.parametrize("ratio", ["guard", "plain"])
def test_first_ratio_is_exactly_one(dist1, tmp_path, ratio):
    cfg = small_config(
        tmp_path,
        "sampler.batch_size=4", "sampler.num_batches_per_epoch=1", "sampler.images_per_prompt=2",
        "train.batch_size=4", "train.gradient_accumulation_steps=1", "train.timesteps_per_forward=1",
        f"train.ratio={ratio}", "sampler.num_steps=6", "train.lr=0.05",
        "train.update_schedule=fixed_size",  # the negative control splits by train.batch_size
        # The targets this bitwise check was written with: under the paper set the second epoch's
        # first ratio (training batch 2 vs sampling batch 4) lands 6e-8 off 1 on this CPU BLAS.
        "model.lora_targets=paper_plus_single_out",
    )
    trainer = Trainer(cfg, dist1)
    try:
        metrics = trainer.run_epoch(1)
        assert metrics["train/updates"] == 1 and metrics["advantage/kept_fraction"] == 1.0
        assert metrics["train/first_ratio_abs_dev"] == 0.0
        assert metrics["train/ratio_min"] == metrics["train/ratio_max"] == 1.0
        # Negative control: two minibatches of 2, one update each. The second minibatch is
        # scored after the first update, so its ratios must move away from 1; the first
        # minibatch's are again exactly 1 (this epoch sampled with the updated weights).
        trainer.update_settings = dataclasses.replace(trainer.update_settings, batch_size=2)  # what the update reads
        second = trainer.run_epoch(2)
        assert second["train/updates"] == 2
        assert second["train/first_ratio_abs_dev"] == 0.0
        assert second["train/ratio_min"] < 1.0 or second["train/ratio_max"] > 1.0
    finally:
        trainer.close()
