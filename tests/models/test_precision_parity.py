"""``model.precision: autocast_bf16``: the paper's float32 master weights under bf16 autocast.

Encodes Tencent-Hunyuan/Precise precise_sde/train/rl_trainer.py + precise_sde/train/adapters.py
(accelerate ``mixed_precision="bf16"``: the transformer keeps its float32 weights and its forward
runs under bf16 autocast with float32 outputs; the VAE is moved to float32, the text encoder to
the bf16 inference dtype).
"""

import copy

import pytest
import torch

from precise_fast.models import apply_lora, apply_precision, latent_ids, latent_layout, load_pipeline, text_ids


def _inputs(pipe, batch=2):
    layout = latent_layout(pipe, 64, 64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(layout.packed_shape(batch), generator=gen)
    e = torch.randn(batch, 16, pipe.transformer.config.joint_attention_dim, generator=gen)
    t = torch.rand(batch, generator=gen)
    return dict(hidden_states=x, timestep=t, guidance=None, encoder_hidden_states=e, txt_ids=text_ids(batch, 16),
                img_ids=latent_ids(layout, batch), return_dict=False)


def test_components_and_forward_dtypes(tiny_dir):
    pipe = apply_precision(load_pipeline(tiny_dir), "autocast_bf16")
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    seen = []
    linear = next(m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    inputs = _inputs(pipe)
    with torch.no_grad():
        out = pipe.transformer(**inputs)[0]
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the matmuls run in bf16
    assert out.dtype == torch.float32  # outputs come back in float32, as accelerate's prepare returns them
    reference = load_pipeline(tiny_dir).transformer
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference(**inputs)[0].float()
    with torch.no_grad():
        fp32 = reference(**inputs)[0]
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert (out - fp32).abs().max() > 0  # autocast is really on


def test_lora_masters_stay_float32_and_get_gradients(tiny_dir):
    pipe = load_pipeline(tiny_dir)
    params = apply_lora(pipe.transformer, rank=2, alpha=2)
    apply_precision(pipe, "autocast_bf16")
    pipe.transformer(**_inputs(pipe))[0].square().mean().backward()
    assert all(p.dtype == torch.float32 for p in params)
    assert any(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in params)


def test_bad_precision_setups_are_errors(tiny_dir):
    with pytest.raises(ValueError, match="float32 transformer weights"):
        apply_precision(load_pipeline(tiny_dir, dtype=torch.bfloat16), "autocast_bf16")
    with pytest.raises(ValueError, match="model.precision"):
        apply_precision(load_pipeline(tiny_dir), "fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_rollouts_capture_on_cuda(tiny_dir):
    from precise_fast.rollout import RolloutEngine

    pipe = apply_precision(load_pipeline(tiny_dir, device="cuda"), "autocast_bf16")
    runs = []
    for graph in (False, True):
        engine = RolloutEngine(pipe, kind="precise", num_steps=4, height=64, width=64, max_text_len=16, cuda_graph=graph)
        runs.append(engine.sample(prompts=["a cat", "a dog"], seeds=[1, 2], decode=False))
    eager, captured = runs
    assert eager.latents.dtype == torch.float32
    torch.testing.assert_close(captured.latents, eager.latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(captured.log_probs, eager.log_probs, rtol=1e-5, atol=1e-5)


def test_a_deep_copy_of_an_autocast_transformer_runs_its_own_weights(tiny_dir):
    """The full fine-tune's frozen KL reference is ``copy.deepcopy`` of the wrapped transformer
    (train/policy/build.py): its forward must be the copy's, not the live policy's."""
    pipe = apply_precision(load_pipeline(tiny_dir), "autocast_bf16")
    inputs = _inputs(pipe)
    frozen = copy.deepcopy(pipe.transformer).requires_grad_(False)
    with torch.no_grad():
        before = frozen(**inputs)[0]
        for p in pipe.transformer.parameters():
            p.add_(0.05)  # an update of the policy
        assert not torch.equal(pipe.transformer(**inputs)[0], before)
        torch.testing.assert_close(frozen(**inputs)[0], before, rtol=0, atol=0)
    assert frozen._autocast_dtype == torch.bfloat16 and frozen(**inputs)[0].dtype == torch.float32
