"""On-policy re-scoring, reproducibility and batch-layout independence, sampling modes.

Re-scoring goes through what training runs (precise_fast.train.phases.rescore): the
rollout's transitions (``from_rollout``, a minibatch by ``select``) through ``rescore`` (folded
into rows, scored by the rollout layer's ``score_transitions``) and the loss rows' ratios.
"""

import pytest
import torch

from precise_fast.models import PromptEncoder, apply_lora, load_pipeline, unpack_latents
from precise_fast.rollout import INIT_NOISE_STEP, RolloutEngine, group_seeds
from precise_fast.sde import philox_normal
from precise_fast.train.grpo.transitions import from_rollout
from precise_fast.train.phases.rescore import rescore, transition_losses

STEPS, SIZE = 5, 64


@pytest.fixture(scope="module")
def embeds(tiny_pipe):
    return PromptEncoder(tiny_pipe)(["a cat", "a dog", "a boat", "a castle"])


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)


# ----------------------------------------------------------------------------- on-policy


def _rescore(transformer, rollout, step, rows=None, *, guard=False):
    """``Score`` of step ``step`` of ``rollout`` (the rows ``rows`` of it) the way training
    scores it; ``guard`` passes the stored mean and returns the new one, as the guard ratio does."""
    batch = from_rollout(rollout, [step])
    if rows is not None:
        batch = batch.select(rows)
    _, score = rescore(transformer, batch, torch.tensor([0]), guard_mean=guard, return_mean=guard)
    return score


@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "cps", "dance_grpo", "dance_precise"])
def test_rescoring_a_rollout_gives_ratio_exactly_one(tiny_pipe, embeds, kind):
    engine = RolloutEngine(tiny_pipe, kind=kind, num_steps=STEPS, height=SIZE, width=SIZE)
    rollout = engine.sample(embeds, seeds=[5, 6, 7, 8], decode=False)
    with torch.no_grad():
        for k in range(STEPS):
            _, log_prob, mean, bias = _rescore(tiny_pipe.transformer, rollout, k, guard=True)
            ratio = torch.exp(log_prob - rollout.log_probs[:, k])
            assert torch.equal(ratio, torch.ones_like(ratio)), f"step {k}: ratio {ratio.tolist()}"
            assert torch.equal(mean, rollout.means[:, k])
            assert torch.equal(bias, torch.zeros_like(bias))
            # The loss rows' ratios, plain and GRPO-Guard's, are exactly 1 too.
            batch = from_rollout(rollout, [k])
            batch.advantages = torch.ones(4, 1)
            for ratio_kind in ("plain", "guard"):
                losses = transition_losses(tiny_pipe.transformer, batch, [0], clip_range=0.2, ratio_kind=ratio_kind)
                assert torch.equal(losses.ratio, torch.ones(4)), f"step {k}, {ratio_kind}: {losses.ratio.tolist()}"


def test_on_policy_with_a_trainable_lora_and_shuffled_minibatches(tiny_dir, embeds):
    pipe = load_pipeline(tiny_dir)
    params = apply_lora(pipe.transformer, rank=2, alpha=2)
    with torch.no_grad():
        for p in params:  # a policy that has already moved away from the base
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(p.shape))))
    engine = RolloutEngine(pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    rollout = engine.sample(embeds, seeds=[5, 6, 7, 8], mode="window", window=(0, 3), decode=False)
    for k in range(3):
        # Grad mode on, as in training; the full batch in a shuffled order is still exact.
        for rows in (None, torch.tensor([3, 1, 0, 2])):
            log_prob = _rescore(pipe.transformer, rollout, k, rows=rows).log_prob
            assert log_prob.requires_grad
            old = rollout.log_probs[:, k] if rows is None else rollout.log_probs[rows, k]
            assert torch.equal(log_prob.detach(), old), f"step {k}, rows {rows}"
        log_prob.sum().backward()
        # A smaller minibatch changes only the float rounding of the batched matmuls (CPU
        # GEMM blocking depends on the row count): the ratio stays within float32 noise.
        part = _rescore(pipe.transformer, rollout, k, rows=[3, 1]).log_prob
        ratio = torch.exp(part.detach() - rollout.log_probs[[3, 1], k])
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


# ----------------------------------------------------------------------------- reproducibility


def test_same_seeds_same_rollout(engine, embeds):
    a = engine.sample(embeds, seeds=[1, 2, 3, 4])
    b = engine.sample(embeds, seeds=[1, 2, 3, 4])
    for name in ("latents", "means", "log_probs", "images"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = engine.sample(embeds, seeds=[1, 2, 3, 5])
    assert torch.equal(c.latents[:3], a.latents[:3])
    assert not torch.allclose(c.latents[3], a.latents[3])


def test_rows_do_not_depend_on_batch_layout(engine, embeds):
    seeds = torch.tensor([10, 20, 30, 40])
    full = engine.sample(embeds, seeds=seeds)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = engine.sample(embeds[perm], seeds=seeds[perm])
    for name in ("latents", "means", "log_probs", "images"):
        assert torch.equal(getattr(permuted, name), getattr(full, name)[perm]), name
    # A different batch size changes only the float rounding of the batched matmuls.
    half = engine.sample(embeds[2:], seeds=seeds[2:])
    for name in ("latents", "means", "images"):
        torch.testing.assert_close(getattr(half, name), getattr(full, name)[2:], rtol=0, atol=1e-5)
    torch.testing.assert_close(half.log_probs, full.log_probs[2:], rtol=1e-5, atol=1e-5)


def test_initial_latent_is_philox_stream_zero_of_the_init_seed(engine, embeds):
    rollout = engine.sample(embeds, seeds=[1, 2, 3, 4], init_seeds=[9, 9, 8, 8], decode=False)
    noise = philox_normal(torch.tensor([9, 9, 8, 8]), INIT_NOISE_STEP, engine.layout.noise_shape(4))
    assert torch.equal(unpack_latents(rollout.latents[:, 0], engine.layout), noise)
    # Same initial latent within a group, different noise afterwards.
    assert torch.equal(rollout.latents[0, 0], rollout.latents[1, 0])
    assert not torch.allclose(rollout.latents[0, 1], rollout.latents[1, 1])


def test_explicit_initial_latents(engine, embeds):
    base = engine.sample(embeds, seeds=[1, 2, 3, 4], decode=False)
    unpacked = unpack_latents(base.latents[:, 0], engine.layout)
    for given in (unpacked, base.latents[:, 0]):
        again = engine.sample(embeds, seeds=[1, 2, 3, 4], init_seeds=[0, 0, 0, 0], initial_latents=given, decode=False)
        assert torch.equal(again.latents, base.latents)
    with pytest.raises(ValueError, match="initial_latents"):
        engine.sample(embeds, seeds=[1, 2, 3, 4], initial_latents=unpacked[:, :, :2])


def test_group_seeds():
    seeds, init = group_seeds([100, 200], 3)
    assert seeds.shape == (6,) and len(set(seeds.tolist())) == 6 and torch.equal(init, seeds)
    _, same = group_seeds([100, 200], 3, same_initial_latent=True)
    assert same.tolist() == [100, 100, 100, 200, 200, 200]
    # A prompt's member seeds do not depend on which other prompts share the batch.
    alone, _ = group_seeds([200], 3)
    assert torch.equal(alone, seeds[3:])


# ----------------------------------------------------------------------------- modes


def test_window_mode_is_stochastic_only_inside(engine, embeds):
    rollout = engine.sample(embeds, seeds=[1, 2, 3, 4], init_seeds=[0, 1, 2, 3], mode="window", window=(2, 4), decode=False)
    inside = torch.tensor([False, False, True, True, False])
    assert torch.equal(rollout.stochastic, inside)
    assert (rollout.log_probs[:, inside] != 0).all() and (rollout.log_probs[:, ~inside] == 0).all()
    assert (rollout.stds[:, inside] > 0).all() and (rollout.stds[:, ~inside] == 0).all()
    # ODE steps do not depend on the seeds: changing them only matters from the window on.
    other = engine.sample(embeds, seeds=[11, 12, 13, 14], init_seeds=[0, 1, 2, 3], mode="window", window=(2, 4), decode=False)
    assert torch.equal(other.latents[:, :3], rollout.latents[:, :3])
    assert not torch.allclose(other.latents[:, 3], rollout.latents[:, 3])


def test_ode_mode_ignores_seeds(engine, embeds):
    a = engine.sample(embeds, seeds=[1, 2, 3, 4], init_seeds=[0, 0, 0, 0], mode="ode", decode=False)
    b = engine.sample(embeds, seeds=[5, 6, 7, 8], init_seeds=[0, 0, 0, 0], mode="ode", decode=False)
    assert torch.equal(a.latents, b.latents)
    assert torch.equal(a.log_probs, torch.zeros_like(a.log_probs))


def test_sampling_errors(engine, embeds, tiny_pipe):
    with pytest.raises(ValueError, match="window"):
        engine.sample(embeds, seeds=[1, 2, 3, 4], mode="window", window=(3, 3))
    with pytest.raises(ValueError, match="window"):
        engine.sample(embeds, seeds=[1, 2, 3, 4], mode="window")
    with pytest.raises(ValueError, match="mode"):
        engine.sample(embeds, seeds=[1, 2, 3, 4], mode="sometimes")
    with pytest.raises(ValueError, match="4 entries"):
        engine.sample(embeds, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="exactly one"):
        engine.sample(seeds=[1])
    with pytest.raises(ValueError, match="integers"):
        engine.sample(embeds, seeds=[0.5, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="cps needs"):
        RolloutEngine(tiny_pipe, kind="cps", eta=1.5, num_steps=STEPS, height=SIZE, width=SIZE)


def test_prompts_are_encoded_through_the_cache(engine, embeds):
    by_text = engine.sample(prompts=["a cat", "a dog", "a boat", "a castle"], seeds=[1, 2, 3, 4], decode=False)
    by_embeds = engine.sample(embeds, seeds=[1, 2, 3, 4], decode=False)
    assert torch.equal(by_text.latents, by_embeds.latents)
    engine.sample(prompts=["a cat"], seeds=[1], decode=False)
    assert engine.prompt_encoder.hits >= 1
