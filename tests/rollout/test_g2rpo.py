"""G2RPO singular stochastic sampling against its definition."""

import pytest
import torch

from precise_fast.models import PromptEncoder, predict_velocity
from precise_fast.rollout import RolloutEngine, granular_path, sample_g2rpo, score_transitions

STEPS, SIZE = 6, 64
INIT = [21, 22]
MEMBERS = [[1, 2, 3], [4, 5, 6]]


@pytest.fixture(scope="module")
def engine(tiny_pipe):
    return RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)


@pytest.fixture(scope="module")
def embeds(tiny_pipe):
    return PromptEncoder(tiny_pipe)(["a cat", "a bowl of fruit"])


@pytest.fixture(scope="module")
def result(engine, embeds):
    return sample_g2rpo(engine, embeds, init_seeds=INIT, member_seeds=MEMBERS, steps=[0, 2, STEPS - 1], granularities=(1, 2))


def test_shapes(result, engine):
    s, c = engine.layout.seq_len, engine.layout.channels
    assert result.samples.shape == (2, 3, 3, s, c)
    assert result.means.shape == (2, 3, 3, s, c)
    assert result.log_probs.shape == (2, 3, 3)
    assert result.final_latents.shape == (2, 3, 3, 2, s, c)
    assert result.images.shape == (2, 3, 3, 2, 3, SIZE, SIZE)
    assert result.anchor.kinds == ("ode",) * STEPS


def test_granularity_one_is_a_one_step_sde_window(result, engine, embeds):
    # Member m of prompt p at step k == a rollout that is ODE except for step k, started
    # from the prompt's initial latent with the member's seed.
    for ki, k in enumerate(result.steps):
        for p in range(2):
            window = engine.sample(
                embeds[p : p + 1].expand(3, -1, -1), seeds=MEMBERS[p], init_seeds=[INIT[p]] * 3,
                mode="window", window=(k, k + 1), decode=False,
            )
            torch.testing.assert_close(result.samples[p, ki], window.latents[:, k + 1], rtol=0, atol=1e-5)
            torch.testing.assert_close(result.log_probs[p, ki], window.log_probs[:, k], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(result.final_latents[p, ki, :, 0], window.latents[:, -1], rtol=0, atol=1e-5)


def test_coarse_completion_skips_sigmas(result, engine, tiny_pipe):
    sched = engine.schedule
    ki, k = 1, result.steps[1]
    path = granular_path(k + 1, STEPS, 2)
    assert path == [3, 4, 6]  # its authors' path: one fine ODE step 3 -> 4, then stride 2 from 4
    rows = result.step_rows(ki)
    x = result.samples[:, ki].reshape(6, *result.samples.shape[3:])
    with torch.no_grad():
        for a, b in zip(path, path[1:]):
            t = sched.timesteps[a].expand(6)
            v = predict_velocity(tiny_pipe.transformer, x, t, rows.prompt_embeds, rows.text_ids, rows.latent_ids)
            x = x + (sched.sigmas[b] - sched.sigmas[a]) * v.float()
    torch.testing.assert_close(result.final_latents[:, ki, :, 1].reshape(6, *x.shape[1:]), x, rtol=0, atol=1e-5)


def test_last_step_branch_needs_no_completion(result):
    ki = result.steps.index(STEPS - 1)
    for gi in range(2):
        assert torch.equal(result.final_latents[:, ki, :, gi], result.samples[:, ki])


def test_step_rows_rescore_on_policy(result, tiny_pipe):
    """The branching steps' transitions re-scored through the one re-scoring path (rollout/scoring.py)."""
    for ki in range(len(result.steps)):
        with torch.no_grad():
            score = score_transitions(tiny_pipe.transformer, result.step_rows(ki))
        torch.testing.assert_close(score.log_prob, result.log_probs[:, ki].reshape(-1), rtol=1e-6, atol=1e-6)


def test_g2rpo_errors(engine, embeds, tiny_pipe):
    with pytest.raises(ValueError, match="steps"):
        sample_g2rpo(engine, embeds, init_seeds=INIT, member_seeds=MEMBERS, steps=[STEPS])
    with pytest.raises(ValueError, match="granularities"):
        sample_g2rpo(engine, embeds, init_seeds=INIT, member_seeds=MEMBERS, steps=[1], granularities=(0,))
    with pytest.raises(ValueError, match="member_seeds"):
        sample_g2rpo(engine, embeds, init_seeds=INIT, member_seeds=[1, 2], steps=[1])
    ode = RolloutEngine(tiny_pipe, kind="ode", num_steps=STEPS, height=SIZE, width=SIZE)
    with pytest.raises(ValueError, match="stochastic kind"):
        sample_g2rpo(ode, embeds, init_seeds=INIT, member_seeds=MEMBERS, steps=[1])
