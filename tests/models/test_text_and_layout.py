"""Prompt encoding (and its cache's staleness rules), latent layout, the forward and decoding."""

import pytest
import torch

from precise_fast.models import (
    PromptEncoder,
    decode_latents,
    latent_ids,
    latent_layout,
    pack_latents,
    predict_velocity,
    text_ids,
    unpack_latents,
)

PROMPTS = ["a photo of a cat", "a red sports car", "a photo of a cat", "an owl at dawn"]


def test_encoder_equals_the_pipeline_encoding(tiny_pipe):
    enc = PromptEncoder(tiny_pipe, max_length=128, layers=(9, 18, 27))
    ours = enc(PROMPTS)
    theirs, ids = tiny_pipe.encode_prompt(PROMPTS, max_sequence_length=128, text_encoder_out_layers=(9, 18, 27))
    assert ours.shape == (4, 128, enc.embed_dim) == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert torch.equal(text_ids(4, 128), ids)
    # The duplicate prompt was encoded once.
    assert (enc.misses, enc.hits) == (3, 1)
    assert torch.equal(ours[0], ours[2])


def test_cache_hits_return_identical_rows(tiny_pipe):
    enc = PromptEncoder(tiny_pipe)
    first = enc(PROMPTS[:2])
    second = enc(list(reversed(PROMPTS[:2])))
    assert enc.misses == 2 and enc.hits == 2
    assert torch.equal(second, first.flip(0))


def test_cache_is_dropped_after_an_in_place_weight_change(fresh_pipe):
    enc = PromptEncoder(fresh_pipe)
    before = enc(PROMPTS[:1])
    with torch.no_grad():
        fresh_pipe.text_encoder.model.layers[3].mlp.down_proj.weight.mul_(1.5)
    after = enc(PROMPTS[:1])
    assert enc.misses == 2, "the stale entry was served"
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, enc.encode_uncached(PROMPTS[:1]), rtol=0, atol=0)


def test_cache_is_dropped_after_load_state_dict_and_replacement(fresh_pipe, tiny_pipe):
    enc = PromptEncoder(fresh_pipe)
    enc(PROMPTS[:1])
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in tiny_pipe.text_encoder.state_dict().items()}
    fresh_pipe.text_encoder.load_state_dict(state)
    enc(PROMPTS[:1])
    assert enc.misses == 2
    fresh_pipe.text_encoder = tiny_pipe.text_encoder  # a different module object
    swapped = enc(PROMPTS[:1])
    assert enc.misses == 3
    torch.testing.assert_close(swapped, PromptEncoder(tiny_pipe)(PROMPTS[:1]), rtol=0, atol=0)


def test_cache_is_dropped_after_replacing_param_data(fresh_pipe):
    enc = PromptEncoder(fresh_pipe)
    enc(PROMPTS[:1])
    w = fresh_pipe.text_encoder.model.norm.weight
    w.data = w.data * 2  # a new storage, the version counter untouched
    enc(PROMPTS[:1])
    assert enc.misses == 2


def test_encoder_validates_layers(tiny_pipe):
    with pytest.raises(ValueError, match="layers"):
        PromptEncoder(tiny_pipe, layers=(9, 18, 99))
    with pytest.raises(TypeError):
        PromptEncoder(tiny_pipe)([1, 2])


def test_lru_bound(tiny_pipe):
    enc = PromptEncoder(tiny_pipe, cache_size=2)
    enc(["a", "b", "c"])
    assert len(enc._cache) == 2
    enc(["c"])
    assert enc.hits == 1


# ----------------------------------------------------------------------------- latent layout


@pytest.mark.parametrize("hw", [(64, 64), (64, 48), (32, 80)])
def test_layout_matches_the_pipelines_packing(tiny_pipe, hw):
    height, width = hw
    layout = latent_layout(tiny_pipe, height, width)
    noise = torch.randn(layout.noise_shape(3), generator=torch.Generator().manual_seed(0))
    packed, ids = tiny_pipe.prepare_latents(3, layout.channels // 4, height, width, torch.float32, "cpu", None, noise)
    assert torch.equal(pack_latents(noise), packed)
    assert torch.equal(latent_ids(layout, 3), ids)
    assert torch.equal(unpack_latents(packed, layout), noise)
    assert torch.equal(tiny_pipe._unpack_latents_with_ids(packed, ids, layout.rows, layout.cols), noise)


def test_layout_rejects_sizes_the_pipeline_would_silently_resize(tiny_pipe):
    with pytest.raises(ValueError, match="multiples of 16"):
        latent_layout(tiny_pipe, 60, 64)


def test_decode_matches_the_pipeline_path(tiny_pipe):
    layout = latent_layout(tiny_pipe, 64, 48)
    packed = torch.randn(layout.packed_shape(2), generator=torch.Generator().manual_seed(1))
    ids = latent_ids(layout, 2)
    x = tiny_pipe._unpack_latents_with_ids(packed, ids, layout.rows, layout.cols)
    bn_mean = tiny_pipe.vae.bn.running_mean.view(1, -1, 1, 1)
    bn_std = torch.sqrt(tiny_pipe.vae.bn.running_var.view(1, -1, 1, 1) + tiny_pipe.vae.config.batch_norm_eps)
    x = tiny_pipe._unpatchify_latents(x * bn_std + bn_mean)
    with torch.no_grad():
        expected = tiny_pipe.image_processor.postprocess(tiny_pipe.vae.decode(x, return_dict=False)[0], output_type="pt")
        ours = decode_latents(tiny_pipe, packed, layout)
        chunked = decode_latents(tiny_pipe, packed, layout, chunk=1)
    assert ours.shape == (2, 3, 64, 48) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    # Batched convolutions round differently per batch size: agreement to float32 rounding.
    torch.testing.assert_close(chunked, expected, rtol=0, atol=1e-5)


def test_predict_velocity_is_the_pipelines_transformer_call(tiny_pipe):
    layout = latent_layout(tiny_pipe, 64, 64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(layout.packed_shape(2), generator=gen)
    embeds = torch.randn(2, 128, tiny_pipe.transformer.config.joint_attention_dim, generator=gen)
    t = tiny_pipe.scheduler.timesteps[:1] if len(tiny_pipe.scheduler.timesteps) else torch.tensor([870.0])
    timestep = t.expand(2).to(torch.float32)
    with torch.no_grad():
        expected = tiny_pipe.transformer(
            hidden_states=x, timestep=timestep / 1000, guidance=None, encoder_hidden_states=embeds,
            txt_ids=tiny_pipe._prepare_text_ids(embeds), img_ids=tiny_pipe._prepare_latent_ids(unpack_latents(x, layout)),
            return_dict=False,
        )[0]
        ours = predict_velocity(tiny_pipe.transformer, x, timestep / 1000, embeds, text_ids(2, 128), latent_ids(layout, 2))
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
