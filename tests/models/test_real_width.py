"""FLUX.2 Klein 4B's real widths on a CPU: the tiny builder's ``klein4b`` preset (24 heads x
128, 128 latent channels, joint_attention_dim 7680 = three Qwen3 layers of hidden 2560, rope
axes (32, 32, 32, 32), theta 2000) with one double and one single block, through the paper's
recipe config (configs/flux2_klein/pickscore_precise.yaml, after Tencent-Hunyuan/Precise
precise_sde/train/rl_trainer.py: LoRA on the attention and MLP projections, evaluation, one
GRPO update). Catches shape bugs the 32-wide tiny model cannot (e.g. a hard-coded 64 or 4
channels, a text width not 3 x hidden)."""

from pathlib import Path

import pytest
import torch

from precise_fast.models import LORA_TARGET_SUFFIXES, apply_lora, load_pipeline
from precise_fast.models.tiny import WIDTHS

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "flux2_klein" / "pickscore_precise.yaml"
KLEIN = WIDTHS["klein4b"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_width_dir():
    from precise_fast.models.tiny import process_tiny_pipeline_path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread never spins against other load
    yield process_tiny_pipeline_path(0, widths="klein4b")
    torch.set_num_threads(threads)


def test_real_widths_load_and_lora_lands_on_every_target(real_width_dir):
    pipe = load_pipeline(real_width_dir)
    tr, te = pipe.transformer, pipe.text_encoder
    c = tr.config
    assert (c.num_attention_heads, c.attention_head_dim, c.in_channels) == (24, 128, 128)
    assert c.joint_attention_dim == 7680 == 3 * te.config.hidden_size
    assert tuple(c.axes_dims_rope) == (32, 32, 32, 32) and c.rope_theta == 2000
    assert pipe.vae.config.latent_channels * 4 == c.in_channels
    apply_lora(tr, rank=4, alpha=4)
    wrapped = {name: m for name, m in tr.named_modules() if hasattr(m, "lora_A")}
    suffixes = {s for s in LORA_TARGET_SUFFIXES if any(n.endswith(s) for n in wrapped)}
    assert {"attn.to_q", "attn.add_k_proj", "attn.to_qkv_mlp_proj", "ff.linear_in", "ff_context.linear_out"} <= suffixes
    inner = 24 * 128
    for name, m in wrapped.items():
        a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
        assert a.shape == (4, m.base_layer.in_features) and b.shape == (m.base_layer.out_features, 4), name
    fused = wrapped["single_transformer_blocks.0.attn.to_qkv_mlp_proj"].base_layer
    mlp = int(inner * c.mlp_ratio)
    assert (fused.in_features, fused.out_features) == (inner, 3 * inner + 2 * mlp)


def test_recipe_config_evaluates_and_applies_one_update(real_width_dir, tmp_path):
    from precise_fast.train.config import load_config
    from precise_fast.train.policy.distributed import init_distributed
    from precise_fast.train.trainer import Trainer

    dist = init_distributed("cpu")
    cfg = load_config(RECIPE, [
        f"run.output_dir={tmp_path / 'run'}", "run.device=cpu", "run.epochs=1", "run.num_threads=1",
        f"model.path={real_width_dir}", "model.dtype=float32", "model.max_text_len=16",
        "sampler.num_steps=2", "sampler.height=64", "sampler.width=64", "sampler.batch_size=2",
        "sampler.num_batches_per_epoch=1", "sampler.images_per_prompt=2",
        "reward.spec=jpeg_incompressibility", "train.gradient_accumulation_steps=1", "train.lr=1e-3",
        "prompts.train=configs/prompts/tiny_train.txt", "prompts.test=configs/prompts/tiny_test.txt",
        # The recipe's eval target, scored by a reward that needs no weights (its sampler fields stay unset:
        # the eval rollout runs the training sampler, as the recipe's does).
        "eval.every=1", "eval.targets=[{name: pickscore, prompts: configs/prompts/tiny_test.txt, "
        "reward: jpeg_incompressibility, num_prompts: 2, batch_size: 2}]",
        "checkpoint.every=0", "log.image_every=0", "log.progress=false",
    ])
    assert cfg.model.gradient_checkpointing and cfg.model.lora_rank == 16  # the recipe's own choices stay
    trainer = Trainer(cfg, dist)
    try:
        assert trainer.pipeline.transformer.config.joint_attention_dim == 7680
        before = [p.detach().clone() for p in trainer.policy.params]
        metrics = trainer.run_epoch(1)
        after = [p.detach() for p in trainer.policy.params]
        evaluated = trainer.run_eval(1)
    finally:
        trainer.close()
    assert metrics["train/applied_updates"] >= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the update changed no LoRA weight"
    assert all(torch.isfinite(p).all() for p in after)
    assert evaluated and all(v == v for v in evaluated.values())
