"""Capture safety: fullgraph compilation of the step (the CPU proxy), graph replay plumbing,
and the real CUDA graph where a GPU exists."""

import contextlib
import itertools
from pathlib import Path

import pytest
import torch

from precise_fast.models import PromptEncoder
from precise_fast.rollout import RolloutEngine, denoise_step, sample_g2rpo
from precise_fast.rollout.engine import _Buffers
from precise_fast.sde.ops import native_available

STEPS, SIZE = 4, 64

needs_fused_op = pytest.mark.skipif(
    not native_available(), reason="the fused C++ op (precise_fast._C) is not built; the reference step synchronises"
)


@pytest.fixture
def one_thread():
    """Hundreds of tiny transformer calls: on a shared 2-core machine two intra-op threads
    spin against other processes' load and run ~20x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.gpu
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


def _counting_capture(engine, monkeypatch, log=None):
    """Stand-in for the CUDA graph (replay = rerun the captured loop) that counts captures."""
    captures = []

    def capture(run):
        run()
        captures.append(run)
        if log is not None:
            log.append("capture")
        return type("Replayer", (), {"replay": staticmethod(run)})()

    engine.cuda_graph = True
    monkeypatch.setattr(engine, "_capture", capture)
    return captures


def test_default_g2rpo_plan_set_stays_captured(tiny_pipe, embeds, monkeypatch, one_thread):
    """Issue 12 item 3: G2RPO's default steps x granularities (precise_fast/train/config.py,
    after bcmi/Granular-GRPO's branching steps) give 1 + K + K x n_g plans per batch, more
    than a fixed 16-graph cache; the default cache is sized to the plan set, so the second
    batch replays every graph and captures none."""
    from precise_fast.train.config import AlgorithmConfig, SamplerConfig

    a, n = AlgorithmConfig(), SamplerConfig().num_steps
    steps, grans = a.g2rpo_steps, a.g2rpo_granularities
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=n, height=SIZE, width=SIZE)
    captures = _counting_capture(engine, monkeypatch)
    one = embeds[:1, :8]  # 8 text tokens: ~200 transformer calls per batch here
    kwargs = dict(init_seeds=[5], member_seeds=[[1, 2]], steps=steps, granularities=grans, decode=False)
    first = sample_g2rpo(engine, one, **kwargs)
    plans = 1 + len(steps) + len(steps) * len(grans)
    assert plans > 16 and len(captures) == plans == len(engine._graphs)
    second = sample_g2rpo(engine, one, **{**kwargs, "member_seeds": [[3, 4]]})
    assert len(captures) == plans, "the second G2RPO batch must replay every plan's graph"
    assert not torch.equal(first.samples, second.samples)
    eager = RolloutEngine(tiny_pipe, kind="precise", num_steps=n, height=SIZE, width=SIZE)
    want = sample_g2rpo(eager, one, **{**kwargs, "member_seeds": [[3, 4]]})
    assert torch.equal(second.final_latents, want.final_latents) and torch.equal(second.log_probs, want.log_probs)
    assert engine.graph_cache_bound() == plans


def _stand_in_cuda_graphs(monkeypatch, log, graph_kwargs, pools):
    """torch.cuda's stream and graph objects stood in for (no GPU here): ``log`` records
    "stream" (a new stream made), "capture" and "replay"; ``graph_kwargs`` what each capture got;
    ``pools`` yields the ids ``graph_pool_handle`` hands out."""

    class FakeStream:
        def __init__(self, *args, made=True, **kwargs):
            if made:
                log.append("stream")

        def wait_stream(self, other):
            pass

    class FakeGraph:
        def replay(self):
            log.append("replay")

    @contextlib.contextmanager
    def fake_graph(graph, **kwargs):
        graph_kwargs.append(kwargs)
        log.append("capture")
        yield

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream(made=False))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: next(pools))
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)


def test_capture_is_thread_local_and_drains_first(tiny_pipe, monkeypatch):
    """Issue 12 item 4: the capture uses ``capture_error_mode="thread_local"`` (the reward
    worker's side-stream work is not the capture's business) and runs ``before_capture``
    (the trainer drains the reward worker there) before its warm-up; replays never call it.
    No GPU here: torch.cuda's stream and graph objects are stood in for."""
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    log, graph_kwargs = [], []
    _stand_in_cuda_graphs(monkeypatch, log, graph_kwargs, pools=iter(["pool"]))
    engine.cuda_graph = True
    engine.before_capture = lambda: log.append("drain")
    plan = engine.plans.trajectory(("precise",) * STEPS)
    embeds = torch.zeros(1, 8, tiny_pipe.transformer.config.joint_attention_dim)
    start = torch.zeros(engine.layout.packed_shape(1))
    for _ in range(2):
        engine.run_plan(plan, embeds, torch.tensor([1]), start)
    assert graph_kwargs == [{"pool": "pool", "capture_error_mode": "thread_local"}]
    assert log == ["drain", "stream", "capture", "replay", "replay"]


def test_graphs_share_a_pool_while_one_lives_and_one_warm_up_stream_serves_every_capture(tiny_pipe, monkeypatch):
    """Graphs captured while another lives share its memory pool; once none lives (evicted, or
    ``reset_graphs``) the next capture takes a new pool: torch cannot free a pool that keeps
    blocks a capture allocated for good (cuBLAS's workspace for the capture stream), and
    capturing into it again fails its allocator's assert. The warm-up stream is made once:
    cuBLAS keeps a workspace for every stream it ran on."""
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, max_cached_graphs=2)
    log, graph_kwargs = [], []
    _stand_in_cuda_graphs(monkeypatch, log, graph_kwargs, pools=itertools.count())
    engine.cuda_graph = True
    embeds = torch.zeros(1, 8, tiny_pipe.transformer.config.joint_attention_dim)
    start = torch.zeros(engine.layout.packed_shape(1))
    plans = [engine.plans.trajectory(kinds) for kinds in
             (("precise",) * STEPS, ("ode",) * STEPS, ("precise",) + ("ode",) * (STEPS - 1))]

    def capture_pools(*picks, bound=2):
        engine.max_cached_graphs = bound
        graph_kwargs.clear()
        for i in picks:
            engine.run_plan(plans[i], embeds, torch.tensor([1]), start)
        return [k["pool"] for k in graph_kwargs]

    assert capture_pools(0, 1, 2) == [0, 0, 0]  # the third evicts the first; the second lives on
    engine.reset_graphs()
    assert capture_pools(0, 1) == [1, 1]
    assert capture_pools(2, 0, bound=1) == [2, 3]  # a bound of one evicts the only graph first
    assert log.count("stream") == 1


def test_sampling_phase_drains_rewards_before_a_capture(tiny_pipe, tmp_path, monkeypatch, one_thread):
    """The trainer's sampling loop (precise_fast/train/phases/sample.py) submits batch b's
    rewards, then samples batch b + 1: any capture there must wait for the worker."""
    import threading
    import time

    from precise_fast.rewards import RewardExecutor, build_reward
    from precise_fast.train.config import load_config
    from precise_fast.train.phases.prompt_groups import GroupSampler
    from precise_fast.train.phases.trajectories import Rollouts
    from precise_fast.train.phases.sample import SampleSettings, TimedReward, sample_epoch

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml", [
        f"run.output_dir={tmp_path}", "sampler.num_steps=2", "sampler.batch_size=2", "sampler.images_per_prompt=2",
        "sampler.num_batches_per_epoch=3", "model.max_text_len=8",
        "train.gradient_accumulation_steps=1"])  # sampling only; the paper schedule wants gas | batches
    rollouts = Rollouts(tiny_pipe, cfg)
    engine = rollouts.engine
    submitted, at_capture = [], []
    jpeg = build_reward("jpeg_incompressibility")
    release = threading.Event()

    def slow_reward(images, prompts, meta):
        release.wait(2.0)  # still running when the next batch starts sampling
        return jpeg(images, prompts, meta)

    real_capture = _counting_capture(engine, monkeypatch)
    inner = engine._capture

    def capture(run):
        at_capture.append([f.done() for f in submitted])
        return inner(run)

    monkeypatch.setattr(engine, "_capture", capture)
    sample = rollouts.sample
    monkeypatch.setattr(rollouts, "sample", lambda *a, **k: (engine.reset_graphs(), sample(*a, **k))[1])
    sampler = GroupSampler(4, group_size=2, batch_size=2, num_batches=3, world_size=1, rank=0, seed=0)
    _, batches, _ = sampler.next_epoch()
    timed = TimedReward(slow_reward)
    with RewardExecutor(timed, mode="thread", max_pending=4) as executor:
        submit = executor.submit

        def tracked(*a, **k):
            future = submit(*a, **k)
            submitted.append(future)
            threading.Timer(0.3, release.set).start()
            return future

        monkeypatch.setattr(executor, "submit", tracked)
        sample_epoch(rollouts, executor, timed, batches, prompts=["a cat", "a dog", "a bird", "a cow"],
                     metadata=[{}] * 4, settings=SampleSettings.from_config(cfg), epoch_key=0)
    assert len(real_capture) == 3 and [len(s) for s in at_capture] == [0, 1, 2]
    assert all(all(done) for done in at_capture), "a capture ran while reward work was pending"


def test_steps_write_into_step_major_buffers(tiny_pipe, embeds, monkeypatch):
    """Issue 12 item 7: each step reads a contiguous latent slice and the fused op writes its
    results into the step-major buffers' slices (``out=``), nothing copied after; callers
    still get batch-major (B, N + 1, S, C) views."""
    import precise_fast.rollout.engine as engine_mod

    calls = []
    real = engine_mod.sample_step

    def recording(x, *args, out=None, **kwargs):
        calls.append((x.is_contiguous(), x.data_ptr(), None if out is None else [t.data_ptr() for t in out]))
        return real(x, *args, out=out, **kwargs)

    monkeypatch.setattr(engine_mod, "sample_step", recording)
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE)
    ro = engine.sample(embeds, seeds=[1, 2], decode=False)
    assert ro.latents.shape == (2, STEPS + 1, *engine.layout.packed_shape(2)[1:])
    step_major = ro.latents.transpose(0, 1)
    assert step_major.is_contiguous() and ro.means.transpose(0, 1).is_contiguous()
    assert len(calls) == STEPS
    for j, (contiguous, x_ptr, out) in enumerate(calls):
        assert contiguous and x_ptr == step_major[j].data_ptr()
        want = [step_major[j + 1].data_ptr(), ro.log_probs[:, j].data_ptr(), ro.means[:, j].data_ptr()]
        assert out == want, f"step {j} did not write into the rollout buffers"
    # Values: tests/rollout/test_equivalence.py holds the engine to the plain per-row loop.


def test_rollout_attention_backend_is_installed_only_while_sampling(fresh_pipe, embeds, monkeypatch):
    """``attention_backend=`` samples with the rollout-only choice (e.g. flash-attn 3, which
    has no backward in diffusers) and gives the trained policy its own backend back; a graph
    captured under one backend is never replayed under another."""
    from precise_fast.models import attention as attention_mod

    tr = fresh_pipe.transformer
    # As on an H100 with both flash-attn packages; installs are recorded, the math stays SDPA.
    monkeypatch.setattr(attention_mod, "_why_not_flash", lambda version, device, dtype, use: (
        "forward-only" if use == "training" and f"flash{version}" in attention_mod.FORWARD_ONLY else None))
    installed, seen = [], []
    monkeypatch.setattr(tr, "set_attention_backend", installed.append)
    tr.precise_fast_attention_backend = "flash2"
    engine = RolloutEngine(fresh_pipe, kind="precise", num_steps=STEPS, height=SIZE, width=SIZE, attention_backend="auto")
    captures = _counting_capture(engine, monkeypatch)
    inner = engine._capture

    def capture(run):
        seen.append(tr.precise_fast_attention_backend)
        return inner(run)

    monkeypatch.setattr(engine, "_capture", capture)
    engine.sample(embeds, seeds=[1, 2], decode=False)
    assert seen == ["flash3"] and installed == ["_flash_3", "flash"]
    assert tr.precise_fast_attention_backend == "flash2"
    engine.attention_backend = "sdpa"
    engine.sample(embeds, seeds=[1, 2], decode=False)
    assert len(captures) == 2 and seen == ["flash3", "sdpa"], "a flash3 graph must not replay for an sdpa rollout"
