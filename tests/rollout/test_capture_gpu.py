"""Real CUDA graphs of the rollout engine beyond the plain trajectory (skipped without a GPU):
G2RPO's plan set captured once and replayed, the capture racing a reward worker on a side
stream, and rollouts sampled with the rollout-only attention backend."""

import threading

import pytest
import torch

from precise_fast.models import PromptEncoder, load_pipeline
from precise_fast.rollout import RolloutEngine, sample_g2rpo
from precise_fast.rollout.plan import granular_path

pytestmark = pytest.mark.gpu

STEPS, SIZE = 6, 64


@pytest.fixture(scope="module")
def cuda_pipe(tiny_dir):
    return load_pipeline(tiny_dir, device="cuda")


def _g2rpo_plans(steps, granularities, num_steps) -> int:
    """Distinct plans of one G2RPO batch: the ODE anchor, one stochastic hop per step, and
    the ODE completions, which coincide where two strides give the same path (at 6 steps,
    k = 4 completes 5 -> 6 for every stride) or none is left (k = N - 1)."""
    paths = {tuple(granular_path(k + 1, num_steps, g)) for k in steps for g in granularities}
    return 1 + len(steps) + sum(len(p) > 1 for p in paths)


def test_g2rpo_graphs_are_reused_and_match_eager(cuda_pipe):
    embeds = PromptEncoder(cuda_pipe)(["a cat"])
    kwargs = dict(init_seeds=[5], steps=[0, 2, 4], granularities=[1, 2], decode=False)
    graphed = RolloutEngine(cuda_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=True)
    eager = RolloutEngine(cuda_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=False)
    sample_g2rpo(graphed, embeds, member_seeds=[[1, 2]], **kwargs)
    captured = len(graphed._graphs)
    assert captured == _g2rpo_plans(kwargs["steps"], kwargs["granularities"], STEPS) == 9
    a = sample_g2rpo(graphed, embeds, member_seeds=[[3, 4]], **kwargs)
    b = sample_g2rpo(eager, embeds, member_seeds=[[3, 4]], **kwargs)
    assert len(graphed._graphs) == captured, "the second batch must replay, not recapture"
    for name in ("samples", "means", "log_probs", "final_latents"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-5)


def test_capture_while_a_reward_worker_runs_on_a_side_stream(cuda_pipe):
    """thread_local capture: CUDA work (allocations, syncs) of another thread on its own
    stream must not invalidate the capture (the default global mode fails here). The worker
    draws from its own generator: the default CUDA generator belongs to the capture (torch
    registers it with every graph), and a draw on it from another thread while a graph is
    captured is an error in any capture mode."""
    stop = threading.Event()
    errors = []

    def worker():
        stream = torch.cuda.Stream()
        gen = torch.Generator(device="cuda").manual_seed(0)
        try:
            while not stop.is_set():
                with torch.cuda.stream(stream):
                    x = torch.randn(256, 256, device="cuda", generator=gen)
                    (x @ x).sum().item()  # a host sync on the other thread
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    embeds = PromptEncoder(cuda_pipe)(["a cat", "a dog"])
    engine = RolloutEngine(cuda_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=True)
    eager = RolloutEngine(cuda_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=False)
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        got = engine.sample(embeds, seeds=[1, 2], decode=False)
    finally:
        stop.set()
        thread.join()
    assert not errors
    want = eager.sample(embeds, seeds=[1, 2], decode=False)
    torch.testing.assert_close(got.latents, want.latents, rtol=0, atol=1e-5)


def test_rollouts_leave_the_default_cuda_generator_alone(cuda_pipe):
    """Nothing in a captured rollout (capture, replay, G2RPO's plan set) draws on the default
    CUDA generator: the noise is Philox keyed by seeds. So the trainer's rollouts never
    collide with another thread's draws on it, and its state is the same as before."""
    embeds = PromptEncoder(cuda_pipe)(["a cat", "a dog"])
    engine = RolloutEngine(cuda_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=True)
    before = torch.cuda.get_rng_state()
    engine.sample(embeds, seeds=[1, 2], decode=False)  # capture
    engine.sample(embeds, seeds=[3, 4], decode=True)  # replay and VAE decode
    sample_g2rpo(engine, embeds[:1], init_seeds=[5], member_seeds=[[1, 2]], steps=[0, 3], granularities=[1, 2])
    torch.cuda.synchronize()
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_rollout_attention_backend_is_switched_around_sampling(tiny_dir):
    pipe = load_pipeline(tiny_dir, dtype=torch.bfloat16, device="cuda")
    trained = pipe.transformer.precise_fast_attention_backend
    embeds = PromptEncoder(pipe)(["a cat", "a dog"])
    fast = RolloutEngine(pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, attention_backend="auto")
    plain = RolloutEngine(pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, attention_backend="sdpa")
    a, b = fast.sample(embeds, seeds=[1, 2]), plain.sample(embeds, seeds=[1, 2])
    assert pipe.transformer.precise_fast_attention_backend == trained
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0.05)
