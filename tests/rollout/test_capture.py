"""Capture safety: fullgraph compilation of the step (the CPU proxy), graph replay plumbing,
and the real CUDA graph where a GPU exists."""

import pytest
import torch

from precise_fast.models import PromptEncoder
from precise_fast.rollout import RolloutEngine, denoise_step
from precise_fast.rollout.engine import _Buffers
from precise_fast.sde.ops import native_available

STEPS, SIZE = 4, 64

needs_fused_op = pytest.mark.skipif(
    not native_available(), reason="the fused C++ op (precise_fast._C) is not built; the reference step synchronises"
)


@pytest.fixture(scope="module")
def embeds(tiny_pipe):
    return PromptEncoder(tiny_pipe)(["a cat", "a dog"])


def _plan_and_buffers(engine, embeds, kinds):
    plan = engine.plans.trajectory(kinds)
    bufs = _Buffers(2, plan, engine.layout, embeds.shape[1], embeds.shape[2], embeds.dtype, torch.float32, engine.device)
    bufs.prompt_embeds.copy_(embeds)
    bufs.seeds.copy_(torch.tensor([3, 4]))
    bufs.latents[:, 0].normal_(generator=torch.Generator().manual_seed(0))
    return plan, bufs


@needs_fused_op
@pytest.mark.parametrize("kind", ["precise", "ode"])
def test_step_function_compiles_with_fullgraph(tiny_pipe, embeds, kind):
    torch._dynamo.reset()
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    plan, bufs = _plan_and_buffers(engine, embeds, (kind,) * STEPS)
    args = (
        tiny_pipe.transformer, bufs.latents[:, 0], plan.timestep[0].expand(2), plan.sigma[0].expand(2),
        plan.next_sigma[0].expand(2), plan.std[0].expand(2), bufs.prompt_embeds, bufs.text_ids, bufs.latent_ids,
        bufs.seeds, plan.noise_step[0],
    )
    # fullgraph=True raises on any graph break: a host sync (.item(), a data-dependent
    # branch) inside the transformer or the fused op would fail here.
    compiled = torch.compile(denoise_step, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got, want = compiled(*args, kind=kind), denoise_step(*args, kind=kind)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@needs_fused_op
def test_whole_step_loop_compiles_with_fullgraph(tiny_pipe, embeds):
    torch._dynamo.reset()
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    kinds = ("precise", "ode", "precise", "ode")
    plan, bufs = _plan_and_buffers(engine, embeds, kinds)
    _, eager = _plan_and_buffers(engine, embeds, kinds)
    with torch.no_grad():
        torch.compile(lambda: engine._run_plan(plan, bufs), fullgraph=True, backend="aot_eager")()
        engine._run_plan(plan, eager)
    for name in ("latents", "means", "log_probs"):
        assert torch.equal(getattr(bufs, name), getattr(eager, name)), name


@needs_fused_op
def test_engine_with_a_compiled_step_matches_eager(tiny_pipe, embeds):
    torch._dynamo.reset()
    compiled = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, compile_step="aot_eager")
    eager = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    a = compiled.sample(embeds, seeds=[1, 2], mode="window", window=(1, 3), decode=False)
    b = eager.sample(embeds, seeds=[1, 2], mode="window", window=(1, 3), decode=False)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)


def test_graph_replay_plumbing_with_a_stand_in_capture(tiny_pipe, embeds, monkeypatch):
    # No GPU here: stand in for the CUDA graph with "replay = rerun the captured loop" to
    # check the static-buffer protocol (inputs copied in, outputs copied out, one capture per shape).
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    reference = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    captures = []

    class Replayer:
        def __init__(self, run):
            run()  # the warm-up / capture run
            self.replay = run
            captures.append(self)

    engine.cuda_graph = True
    monkeypatch.setattr(engine, "_capture", Replayer)
    first = engine.sample(embeds, seeds=[1, 2])
    kept = first.latents.clone()
    second = engine.sample(embeds.flip(0), seeds=[7, 8])
    assert len(captures) == 1, "a second rollout of the same shape must replay, not recapture"
    assert torch.equal(first.latents, kept), "outputs must not alias the static buffers"
    for got, seeds, emb in ((first, [1, 2], embeds), (second, [7, 8], embeds.flip(0))):
        want = reference.sample(emb, seeds=seeds)
        for name in ("latents", "means", "log_probs", "images"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
    engine.sample(embeds, seeds=[1, 2], mode="ode")
    engine.sample(embeds[:1], seeds=[1])
    assert len(captures) == 3


def test_adapter_switches_and_cache_bound_recapture(fresh_pipe, embeds, monkeypatch):
    from precise_fast.models import apply_lora, lora_disabled

    params = apply_lora(fresh_pipe.transformer, rank=2, alpha=2)
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
    engine = RolloutEngine(fresh_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, max_cached_graphs=2)
    eager = RolloutEngine(fresh_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    captures = []

    def capture(run):
        run()
        captures.append(run)
        return type("Replayer", (), {"replay": staticmethod(run)})()

    engine.cuda_graph = True
    monkeypatch.setattr(engine, "_capture", capture)
    adapted = engine.sample(embeds, seeds=[1, 2], decode=False)
    with lora_disabled(fresh_pipe.transformer):
        base = engine.sample(embeds, seeds=[1, 2], decode=False)
        assert torch.equal(base.latents, eager.sample(embeds, seeds=[1, 2], decode=False).latents)
    assert len(captures) == 2, "disabling the adapter must not replay the adapted graph"
    assert not torch.allclose(adapted.latents[:, -1], base.latents[:, -1])
    # An in-place weight update is seen by the existing graph (no recapture, new values).
    with torch.no_grad():
        for p in params:
            p.mul_(2)
    moved = engine.sample(embeds, seeds=[1, 2], decode=False)
    assert len(captures) == 2
    assert torch.equal(moved.latents, eager.sample(embeds, seeds=[1, 2], decode=False).latents)
    engine.sample(embeds, seeds=[1, 2], mode="ode", decode=False)
    assert len(engine._graphs) == 2, "max_cached_graphs bounds the cache"


def test_cuda_graph_needs_cuda(tiny_pipe):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda_graph=True needs the pipeline on CUDA"):
        RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_graph_matches_eager(tiny_dir):
    from precise_fast.models import load_pipeline

    pipe = load_pipeline(tiny_dir, device="cuda")
    embeds = PromptEncoder(pipe)(["a cat", "a dog"])
    graphed = RolloutEngine(pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=True)
    eager = RolloutEngine(pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, cuda_graph=False)
    for seeds in ([1, 2], [3, 4]):
        a, b = graphed.sample(embeds, seeds=seeds), eager.sample(embeds, seeds=seeds)
        for name in ("latents", "means", "log_probs", "images"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-5)
    assert len(graphed._graphs) == 1
