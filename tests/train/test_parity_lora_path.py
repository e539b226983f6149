"""``train.lora_path``: a run starts from a saved LoRA (Tencent-Hunyuan/Precise
precise_sde/train/adapters.py, ``PeftModel.from_pretrained(transformer, config.train.lora_path)``),
and its weights are the ones trained (the paper's call leaves them frozen: peft's default
``is_trainable=False``; see docs/PARITY.md)."""

import torch

from precise_fast.models import apply_lora, load_pipeline, lora_state_dict, save_lora
from precise_fast.train.trainer import Trainer

from .conftest import small_config


def test_trainer_starts_from_the_given_lora(dist1, tmp_path, tiny_pipeline_dir):
    cfg0 = small_config(tmp_path)
    src = load_pipeline(tiny_pipeline_dir)
    params = apply_lora(src.transformer, rank=cfg0.model.lora_rank, alpha=cfg0.model.lora_alpha)
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(torch.full_like(p, 0.001 * (i + 1)))
    save_lora(src, tmp_path / "start")
    cfg = small_config(tmp_path, f"train.lora_path={tmp_path / 'start'}")
    trainer = Trainer(cfg, dist1)
    try:
        live = lora_state_dict(trainer.policy.module)
        for k, v in lora_state_dict(src.transformer).items():
            torch.testing.assert_close(live[k], v, rtol=0, atol=0)
        assert all(p.requires_grad for p in trainer.policy.params)
        assert trainer.ema is not None and torch.equal(trainer.ema.shadow[0], trainer.policy.params[0].detach())
    finally:
        trainer.close()
