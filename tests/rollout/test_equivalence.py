"""The engine against a plain loop over the stock pipeline's components with the reference step.

Same initial latents, same (Philox) noise: with the reference step backend the engine must
be bit-identical to the plain loop for every kind; with the fused backend (the default)
equal to float32 rounding of the fused kernel.
"""

import numpy as np
import pytest
import torch

from precise_fast.models import latent_layout, unpack_latents
from precise_fast.sde import KINDS, flux2_sigmas
from precise_fast.rollout import RolloutEngine, pipeline_schedule, plain_rollout

STEPS, SIZE = 5, 64
FIELDS = ("latents", "means", "log_probs", "images")


@pytest.fixture(scope="module")
def embeds(tiny_pipe):
    from precise_fast.models import PromptEncoder

    return PromptEncoder(tiny_pipe)(["a photo of a cat", "a red car at night", "three blue birds"])


def _both(pipe, embeds, kind, *, mode="sde", window=None, step_backend="auto", per_row=False):
    engine = RolloutEngine(pipe, kind=kind, num_steps=STEPS, height=SIZE, width=SIZE, step_backend=step_backend)
    seeds = torch.tensor([101, 7, 2**40 + 3])
    ours = engine.sample(embeds, seeds=seeds, mode=mode, window=window)
    plain = plain_rollout(
        pipe, embeds, unpack_latents(ours.latents[:, 0], engine.layout), seeds, kinds=ours.kinds,
        eta=engine.eta, height=SIZE, width=SIZE, per_row=per_row,
    )
    return ours, plain


@pytest.mark.parametrize("kind", KINDS)
def test_reference_backend_is_bit_identical_to_the_plain_loop(tiny_pipe, embeds, kind):
    ours, plain = _both(tiny_pipe, embeds, kind, step_backend="reference")
    for name in FIELDS:
        a, b = getattr(ours, name), plain[name]
        assert a.shape == b.shape, name
        assert torch.equal(a, b), f"{kind}/{name}: max |diff| {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("kind", KINDS)
def test_fused_engine_matches_the_plain_loop(tiny_pipe, embeds, kind):
    ours, plain = _both(tiny_pipe, embeds, kind)
    for name in ("latents", "means", "images"):
        torch.testing.assert_close(getattr(ours, name), plain[name], rtol=0, atol=1e-5, msg=f"{kind}/{name}")
    torch.testing.assert_close(ours.log_probs, plain["log_probs"], rtol=1e-5, atol=1e-5)
    if kind == "ode":
        assert torch.equal(ours.log_probs, torch.zeros_like(ours.log_probs))
    else:
        assert (ours.log_probs != 0).all()


def test_window_mode_matches_the_plain_loop(tiny_pipe, embeds):
    ours, plain = _both(tiny_pipe, embeds, "precise", mode="window", window=(1, 3), step_backend="reference")
    assert ours.kinds == ("ode", "precise", "precise", "ode", "ode")
    for name in FIELDS:
        assert torch.equal(getattr(ours, name), plain[name]), name


def test_per_row_plain_loop_equals_the_batched_one(tiny_pipe, embeds):
    # The benchmark's baseline (one reference step per row) computes the same rollout.
    _, batched = _both(tiny_pipe, embeds, "flow_grpo", step_backend="reference")
    _, per_row = _both(tiny_pipe, embeds, "flow_grpo", step_backend="reference", per_row=True)
    for name in FIELDS:
        torch.testing.assert_close(per_row[name], batched[name], rtol=0, atol=1e-6)


def test_ode_engine_equals_the_stock_pipeline_call(tiny_pipe, embeds):
    engine = RolloutEngine(tiny_pipe, kind="ode", num_steps=STEPS, height=SIZE, width=SIZE)
    ours = engine.sample(embeds, seeds=[1, 2, 3])
    stock = tiny_pipe(
        prompt_embeds=embeds, latents=unpack_latents(ours.latents[:, 0], engine.layout), height=SIZE, width=SIZE,
        num_inference_steps=STEPS, guidance_scale=1.0, output_type="pt",
    ).images
    torch.testing.assert_close(ours.images, stock, rtol=0, atol=1e-5)


def test_schedule_is_the_pipelines(tiny_pipe):
    sched = pipeline_schedule(tiny_pipe, 20, 1024)
    # SAMPLERS.md's FLUX.2 Klein schedule for 512x512 and 20 steps.
    golden = [1.0, 0.992315, 0.983914, 0.974691, 0.964519, 0.953245, 0.940679, 0.926586, 0.910668, 0.892546,
              0.871731, 0.847571, 0.819192, 0.785382, 0.744416, 0.693755, 0.629496, 0.545312, 0.430239, 0.263454, 0.0]
    np.testing.assert_allclose(sched.sigmas.numpy(), golden, atol=1e-6)
    assert torch.equal(sched.sigmas, flux2_sigmas(20, 1024))
    torch.testing.assert_close(sched.timesteps, sched.sigmas[:-1], rtol=0, atol=1e-6)
    layout = latent_layout(tiny_pipe, SIZE, SIZE)
    assert torch.equal(pipeline_schedule(tiny_pipe, STEPS, layout.seq_len).sigmas, flux2_sigmas(STEPS, layout.seq_len))
