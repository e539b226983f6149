"""The custom-op boundary: opcheck of every op, torch.compile(fullgraph=True), dispatch,
fallback and clear errors on bad input."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import precise_fast.sde.ops as ops
from .fused_cases import latents, step_rows
from precise_fast.sde import sample_step, score_step, step

needs_cpu = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)


def _op_args(shape=(2, 37), dtype=torch.float32, kind="precise", grad=False):
    x, v = latents(shape, dtype, 0), latents(shape, dtype, 1)
    prev = latents(shape, dtype, 2)
    old = latents(shape, torch.float32, 3)
    sigma, next_sigma, std = step_rows(kind, shape[0], first_step=2)
    seeds = torch.tensor([11, 12][: shape[0]], dtype=torch.int64)
    step_index = torch.tensor([4, 5][: shape[0]], dtype=torch.int64)
    if grad:
        v.requires_grad_(True)
        x.requires_grad_(True)
        old.requires_grad_(True)
    return x, v, prev, old, sigma, next_sigma, std, seeds, step_index


def _opcheck_all(sample, score, backward, normals, kind):
    x, v, prev, old, sigma, next_sigma, std, seeds, steps = _op_args(kind=kind)
    torch.library.opcheck(sample, (x, v, sigma, next_sigma, std, seeds, steps, None, kind, True))
    torch.library.opcheck(sample, (x, v, sigma, next_sigma, std, None, None, latents(x.shape, torch.float32, 9), kind, False))
    torch.library.opcheck(score, (x, v, prev, sigma, next_sigma, std, old, kind, True))
    torch.library.opcheck(score, (x, v, prev, sigma, next_sigma, std, None, kind, False))
    xg, vg, _, oldg, *_ = _op_args(kind=kind, grad=True)
    torch.library.opcheck(score, (xg, vg, prev, sigma, next_sigma, std, oldg, kind, True))
    torch.library.opcheck(score, (x, vg, prev, sigma, next_sigma, std, None, kind, False))
    g = torch.randn(x.shape[0])
    torch.library.opcheck(backward, (g, torch.randn(x.shape), g, x, v, prev, sigma, next_sigma, std, old, kind, True, True))
    torch.library.opcheck(backward, (g, None, None, x, v, prev, sigma, next_sigma, std, None, kind, False, False))
    torch.library.opcheck(normals, (seeds, steps, 1031))


@needs_cpu
@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "ode"])
def test_opcheck_native_ops(kind):
    lib = torch.ops.precise_fast
    _opcheck_all(lib.sample_step.default, lib.score_step.default, lib.score_step_backward.default,
                 lib.philox_normal.default, kind)


@needs_triton
def test_opcheck_triton_ops():
    from precise_fast.kernels import fused_step as fs

    _opcheck_all(fs.triton_sample_step, fs.triton_score_step, fs.triton_score_step_backward,
                 fs.triton_philox_normal, "precise")


@needs_cpu
def test_torch_compile_fullgraph_cpu():
    """sample + score + GRPO-Guard bias + backward through the op, compiled as one graph."""
    torch._dynamo.reset()
    x, v, _, old, sigma, next_sigma, std, seeds, steps = _op_args(shape=(2, 3, 41))

    def rollout_and_score(x, v, old, steps):
        prev, lp_sample, mean = sample_step(
            x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, step_index=steps, return_mean=True, backend="cpu"
        )
        lp, _, bias = score_step(x, v, prev, sigma, next_sigma, std, kind="precise", old_mean=old, backend="cpu")
        return prev, lp_sample, mean, lp, bias

    compiled = torch.compile(rollout_and_score, fullgraph=True)
    vg = v.clone().requires_grad_(True)
    out_c = compiled(x, vg, old, steps)
    out_e = rollout_and_score(x, v.clone().requires_grad_(True), old, steps)
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The step index is a tensor: advancing it gives new noise without recompiling.
    prev2 = compiled(x, vg, old, steps + 1)[0]
    assert not torch.equal(prev2, out_c[0])
    (out_c[3].sum() + out_c[4].sum()).backward()
    v_ref = v.clone().requires_grad_(True)
    lp, _, bias = score_step(x, v_ref, out_e[0], sigma, next_sigma, std, kind="precise", old_mean=old, backend="cpu")
    (lp.sum() + bias.sum()).backward()
    torch.testing.assert_close(vg.grad, v_ref.grad, rtol=0, atol=0)


# ----------------------------------------------------------------------------- dispatch


@needs_cpu
def test_auto_picks_cpu_kernel_and_step_keeps_its_contract():
    x, v, prev, _, sigma, next_sigma, std, seeds, _ = _op_args()
    assert ops.resolve_backend("auto", x) == "cpu"
    assert ops.resolve_backend("auto", x.double()) == "reference"
    noise = latents(x.shape, torch.float32, 7)
    fused = step(x, v, sigma, next_sigma, std, kind="precise", noise=noise)
    ref = step(x, v, sigma, next_sigma, std, kind="precise", noise=noise, backend="reference")
    torch.testing.assert_close(fused.prev_sample, ref.prev_sample, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.log_prob, ref.log_prob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.mean, ref.mean, rtol=1e-6, atol=1e-6)
    scored = step(x, v, sigma, next_sigma, std, kind="precise", prev_sample=fused.prev_sample)
    assert torch.equal(scored.log_prob, fused.log_prob) and scored.prev_sample is fused.prev_sample
    # seeds= gives the Philox stream on every backend.
    a = step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, step_index=3, backend="cpu")
    b = step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, step_index=3, backend="reference")
    torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-6, atol=1e-6)
    # generator= keeps drawing torch.randn, as before the fused kernels.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    c = step(x, v, sigma, next_sigma, std, kind="cps", generator=g1, backend="cpu")
    d = step(x, v, sigma, next_sigma, std, kind="cps", generator=g2, backend="reference")
    torch.testing.assert_close(c.prev_sample, d.prev_sample, rtol=1e-6, atol=1e-6)


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    x, v, _, _, sigma, next_sigma, std, seeds, _ = _op_args()
    monkeypatch.setattr(ops, "_native_error", "simulated: not built")
    monkeypatch.setattr(ops, "_warned_fallback", set())
    with pytest.warns(RuntimeWarning, match="falling back to the slow pure-PyTorch reference"):
        out = sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must not warn again
        again = sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds)
    assert torch.equal(out[0], again[0])
    with pytest.raises(RuntimeError, match="needs the C\\+\\+ extension"):
        sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, backend="cpu")


def test_backend_that_cannot_run_here_is_a_clear_error(monkeypatch):
    x, v, _, _, sigma, next_sigma, std, seeds, _ = _op_args()
    with pytest.raises(RuntimeError, match="backend='cuda' runs on CUDA tensors"):
        sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' runs on CUDA tensors"):
        score_step(x, v, x, sigma, next_sigma, std, kind="precise", backend="triton")
    with pytest.raises(ValueError, match="backend='gpu' is not one of"):
        score_step(x, v, x, sigma, next_sigma, std, kind="precise", backend="gpu")


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu), pytest.param("triton", marks=needs_triton)])
def test_bad_inputs_raise_clear_errors(backend):
    x, v, prev, old, sigma, next_sigma, std, seeds, _ = _op_args()
    call = lambda **kw: sample_step(  # noqa: E731
        kw.pop("x", x), kw.pop("v", v), kw.pop("sigma", sigma), next_sigma, std,
        kind=kw.pop("kind", "precise"), backend=backend, **kw
    )
    with pytest.raises(ValueError, match="v has shape"):
        call(v=v[:, :5], seeds=seeds)
    with pytest.raises(TypeError, match="float32, bfloat16 and float16"):
        call(x=x.double(), v=v.double(), seeds=seeds)
    with pytest.raises(TypeError, match="floating"):
        call(x=x.to(torch.int32), v=v.to(torch.int32), seeds=seeds)
    with pytest.raises(ValueError, match="exactly one of seeds"):
        call()
    with pytest.raises(ValueError, match="not both"):
        call(seeds=seeds, noise=x)
    with pytest.raises(ValueError, match="sigma must be"):
        call(sigma=torch.ones(5), seeds=seeds)
    with pytest.raises(ValueError, match="seeds"):
        call(seeds=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="seeds must hold integers"):
        call(seeds=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="not a sampler kind"):
        call(kind="ddim", seeds=seeds)
    with pytest.raises(ValueError, match="old_mean has shape"):
        score_step(x, v, prev, sigma, next_sigma, std, kind="precise", old_mean=old[:1], backend=backend)
    with pytest.raises(ValueError, match="non-empty"):
        score_step(x[:0], v[:0], prev[:0], sigma[:0], next_sigma[:0], std[:0], kind="precise", backend=backend)


@needs_cpu
def test_raw_native_ops_reject_bad_input_without_crashing():
    x, v, prev, old, sigma, next_sigma, std, seeds, steps = _op_args()
    lib = torch.ops.precise_fast
    with pytest.raises(ValueError, match="exactly one of seeds"):
        lib.sample_step(x, v, sigma, next_sigma, std, None, None, None, "precise", False)
    with pytest.raises(ValueError, match="std must have shape"):
        lib.sample_step(x, v, sigma, next_sigma, std[:1], seeds, steps, None, "precise", False)
    with pytest.raises(TypeError, match="must be float32, bfloat16 or float16"):
        lib.score_step(x.double(), v, prev, sigma, next_sigma, std, None, "precise", False)
    with pytest.raises(ValueError, match="not a sampler kind"):
        lib.score_step(x, v, prev, sigma, next_sigma, std, None, "euler", False)
    with pytest.raises(TypeError, match="integer tensor"):
        lib.sample_step(x, v, sigma, next_sigma, std, seeds.float(), steps, None, "precise", False)
    with pytest.raises(ValueError, match="grad_guard_bias needs old_mean"):
        lib.score_step_backward(torch.ones(2), None, torch.ones(2), x, v, prev, sigma, next_sigma, std, None,
                                "precise", False, False)
    with pytest.raises(ValueError, match="row_elems must be positive"):
        lib.philox_normal(seeds, steps, 0)
