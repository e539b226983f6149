"""LoRA on the recipe's targets, its round trip into stock diffusers, and full fine-tuning."""

import pytest
import torch
from diffusers import Flux2KleinPipeline

from precise_fast.models import (
    apply_lora,
    enable_full_finetune,
    latent_ids,
    latent_layout,
    load_lora,
    load_pipeline,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
    lora_target_modules,
    predict_velocity,
    save_lora,
    text_ids,
    unpack_latents,
)
from precise_fast.rollout import RolloutEngine

# The paper's set (precise_sde/train/adapters.py of Tencent-Hunyuan/Precise): no single-block attn.to_out.
EXPECTED_TARGETS = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.attn.add_q_proj",
    "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.attn.to_add_out",
    "transformer_blocks.0.ff.linear_in",
    "transformer_blocks.0.ff.linear_out",
    "transformer_blocks.0.ff_context.linear_in",
    "transformer_blocks.0.ff_context.linear_out",
    "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
    "single_transformer_blocks.1.attn.to_qkv_mlp_proj",
]
# The `paper_plus_single_out` option adds the single-stream output Linear.
EXPECTED_TARGETS_PLUS = EXPECTED_TARGETS[:-2] + [
    "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
    "single_transformer_blocks.0.attn.to_out",
    "single_transformer_blocks.1.attn.to_qkv_mlp_proj",
    "single_transformer_blocks.1.attn.to_out",
]


def _velocity(pipe, seed=0, batch=2):
    layout = latent_layout(pipe, 64, 64)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(layout.packed_shape(batch), generator=gen)
    e = torch.randn(batch, 16, pipe.transformer.config.joint_attention_dim, generator=gen)
    t = torch.rand(batch, generator=gen)
    return predict_velocity(pipe.transformer, x, t, e, text_ids(batch, 16), latent_ids(layout, batch))


def _train_a_bit(params, seed=3):
    # Stand-in for training: move every LoRA weight (B starts at 0 under Gaussian init).
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def test_targets_are_the_recipes(fresh_pipe):
    assert lora_target_modules(fresh_pipe.transformer) == EXPECTED_TARGETS
    assert lora_target_modules(fresh_pipe.transformer, "paper_plus_single_out") == EXPECTED_TARGETS_PLUS
    with pytest.raises(ValueError, match="unknown LoRA target set"):
        lora_target_modules(fresh_pipe.transformer, "all")


def test_gaussian_init_keeps_outputs_and_trains_only_lora(fresh_pipe):
    with torch.no_grad():
        base = _velocity(fresh_pipe)
    params = apply_lora(fresh_pipe.transformer, rank=4, alpha=4, init="gaussian")
    assert len(params) == 2 * len(EXPECTED_TARGETS)
    trainable = {n for n, p in fresh_pipe.transformer.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in fresh_pipe.transformer.named_parameters() if "lora_" in n}
    a_weights = [p for n, p in fresh_pipe.transformer.named_parameters() if "lora_A" in n]
    assert all(p.abs().sum() > 0 for p in a_weights)  # Gaussian A, zero B
    with torch.no_grad():
        torch.testing.assert_close(_velocity(fresh_pipe), base, rtol=0, atol=0)
    # Gradients reach the LoRA weights through the shared forward.
    _velocity(fresh_pipe).square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_lora_round_trip_into_stock_diffusers(tiny_dir, tmp_path):
    ours = load_pipeline(tiny_dir)
    params = apply_lora(ours.transformer, rank=4, alpha=8)
    _train_a_bit(params)
    path = save_lora(ours, tmp_path / "lora")
    assert (path / "pytorch_lora_weights.safetensors").is_file()

    stock = Flux2KleinPipeline.from_pretrained(tiny_dir, local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    with torch.no_grad():
        before = _velocity(stock)
    stock.load_lora_weights(str(path))
    with torch.no_grad():
        mine, theirs = _velocity(ours), _velocity(stock)
    assert (mine - before).abs().max() > 1e-3, "the LoRA must change the model for this test to mean anything"
    torch.testing.assert_close(theirs, mine, rtol=0, atol=0)

    # Whole images: our ODE rollout vs the stock pipeline's own __call__ from the same start.
    engine = RolloutEngine(ours, kind="ode", num_steps=4, height=64, width=64)
    embeds = torch.randn(2, 16, ours.transformer.config.joint_attention_dim, generator=torch.Generator().manual_seed(5))
    rollout = engine.sample(embeds, seeds=[11, 12])
    images = stock(
        prompt_embeds=embeds, latents=unpack_latents(rollout.latents[:, 0], engine.layout), height=64, width=64,
        num_inference_steps=4, guidance_scale=1.0, output_type="pt",
    ).images
    torch.testing.assert_close(images, rollout.images, rtol=0, atol=2e-5)


def test_save_with_an_ema_state_dict(tiny_dir, tmp_path):
    ours = load_pipeline(tiny_dir)
    apply_lora(ours.transformer, rank=2, alpha=2)
    live = lora_state_dict(ours.transformer)
    ema = {k: torch.full_like(v, 0.01) for k, v in live.items()}
    save_lora(ours.transformer, tmp_path / "ema", state_dict=ema)
    other = load_lora(load_pipeline(tiny_dir), tmp_path / "ema", trainable=True)
    loaded = lora_state_dict(other.transformer)
    assert loaded.keys() == ema.keys()
    for k in ema:
        torch.testing.assert_close(loaded[k], ema[k])
    assert all(p.requires_grad for p in lora_parameters(other.transformer))
    with pytest.raises(ValueError, match="does not match the adapter"):
        save_lora(ours.transformer, tmp_path / "bad", state_dict={"x": torch.zeros(1)})


def test_lora_disabled_runs_the_base_model(fresh_pipe):
    with torch.no_grad():
        base = _velocity(fresh_pipe)
        _train_a_bit(apply_lora(fresh_pipe.transformer, rank=2, alpha=2))
        adapted = _velocity(fresh_pipe)
        with lora_disabled(fresh_pipe.transformer):
            torch.testing.assert_close(_velocity(fresh_pipe), base, rtol=0, atol=0)
        torch.testing.assert_close(_velocity(fresh_pipe), adapted, rtol=0, atol=0)


def test_full_finetune(fresh_pipe):
    params = enable_full_finetune(fresh_pipe.transformer)
    assert len(params) == len(list(fresh_pipe.transformer.parameters()))
    assert all(p.requires_grad for p in params)


def test_full_finetune_refuses_a_lora_model(fresh_pipe):
    apply_lora(fresh_pipe.transformer, rank=2, alpha=2)
    with pytest.raises(ValueError, match="carries a LoRA adapter"):
        enable_full_finetune(fresh_pipe.transformer)


def test_save_without_adapter_is_an_error(fresh_pipe, tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapter"):
        save_lora(fresh_pipe, tmp_path / "none")
