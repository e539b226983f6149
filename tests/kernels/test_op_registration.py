"""The custom-op boundary on every (device, backend) pair: opcheck of every op,
torch.compile(fullgraph=True), the registration shipped for GPU, launch options, dispatch,
fallback and clear errors on bad input."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import precise_fast.sde.api as api
import precise_fast.sde.ops as ops
from precise_fast.sde.api import resolve_backend
from precise_fast.sde.arguments import check_grid_rows
from precise_fast.sde.kinds import FAMILY
from .device_backends import ALL, CPU_CPP, CUDA_CPP, TRITON
from .fused_cases import latents, step_rows
from precise_fast.sde import sample_step, score_step, step

needs_cpu = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)


def _op_args(shape=(2, 37), dtype=torch.float32, kind="precise", grad=False, device="cpu"):
    x, v = latents(shape, dtype, 0), latents(shape, dtype, 1)
    prev = latents(shape, dtype, 2)
    old = latents(shape, torch.float32, 3)
    sigma, next_sigma, std = step_rows(kind, shape[0], first_step=2)
    seeds = torch.tensor([11, 12][: shape[0]], dtype=torch.int64)
    step_index = torch.tensor([4, 5][: shape[0]], dtype=torch.int64)
    out = tuple(t.to(device) for t in (x, v, prev, old, sigma, next_sigma, std, seeds, step_index))
    if grad:
        for t in (out[0], out[1], out[3]):
            t.requires_grad_(True)
    return out


def _ops(backend: str):
    """(sample, sample_out, score, backward, normals) ops of a fused backend."""
    if backend == "triton":
        from precise_fast.kernels import fused_step as fs

        return (fs.triton_sample_step, fs.triton_sample_step_out, fs.triton_score_step,
                fs.triton_score_step_backward, fs.triton_philox_normal)
    lib = torch.ops.precise_fast
    return (lib.sample_step.default, lib.sample_step_out.default, lib.score_step.default,
            lib.score_step_backward.default, lib.philox_normal.default)


@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "ode"])
@pytest.mark.parametrize("case", ALL)
def test_opcheck_every_op(case, kind):
    device, backend = case
    sample, sample_out, score, backward, normals = _ops(backend)
    x, v, prev, old, sigma, next_sigma, std, seeds, steps = _op_args(kind=kind, device=device)
    noise = latents(x.shape, torch.float32, 9).to(device)
    torch.library.opcheck(sample, (x, v, sigma, next_sigma, std, seeds, steps, None, FAMILY[kind], True))
    torch.library.opcheck(sample, (x, v, sigma, next_sigma, std, None, None, noise, FAMILY[kind], False))
    buffers = lambda mean: (torch.empty_like(x), x.new_empty(x.shape[0]), torch.empty_like(noise) if mean else None)  # noqa: E731
    torch.library.opcheck(sample_out, (x, v, sigma, next_sigma, std, seeds, steps, None, FAMILY[kind], *buffers(True)))
    torch.library.opcheck(sample_out, (x, v, sigma, next_sigma, std, None, None, noise, FAMILY[kind], *buffers(False)))
    torch.library.opcheck(score, (x, v, prev, sigma, next_sigma, std, old, FAMILY[kind], True))
    torch.library.opcheck(score, (x, v, prev, sigma, next_sigma, std, None, FAMILY[kind], False))
    xg, vg, _, oldg, *_ = _op_args(kind=kind, grad=True, device=device)
    torch.library.opcheck(score, (xg, vg, prev, sigma, next_sigma, std, oldg, FAMILY[kind], True))
    torch.library.opcheck(score, (x, vg, prev, sigma, next_sigma, std, None, FAMILY[kind], False))
    g = torch.randn(x.shape[0]).to(device)
    grad_mean = torch.randn(x.shape).to(device)
    torch.library.opcheck(backward, (g, grad_mean, g, x, v, prev, sigma, next_sigma, std, old, FAMILY[kind], True, True))
    torch.library.opcheck(backward, (g, None, None, x, v, prev, sigma, next_sigma, std, None, FAMILY[kind], False, False))
    torch.library.opcheck(normals, (seeds, steps, 1031))


@needs_triton
def test_triton_ops_use_the_triton_op_registration_shipped_for_gpu():
    """One registration on every host: ``triton_op``, whose fake kernel is the launcher itself
    (on a GPU host Inductor then traces into the kernels). CPU CI runs this same path; only
    the interpreter keeps the op opaque under functionalization (its kernels are Python)."""
    from torch._library.triton import triton_ops_to_kernels

    from precise_fast.kernels import fused_step as fs

    for op in (fs.triton_sample_step, fs.triton_sample_step_out, fs.triton_score_step,
               fs.triton_score_step_backward, fs.triton_philox_normal):
        assert op._qualname in triton_ops_to_kernels, f"{op._qualname} is not registered by torch.library.triton_op"
        assert op._abstract_fn.__module__ == fs.__name__, f"{op._qualname}: its fake kernel is not its launcher"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("precise_fast::triton_score_step", "Autograd")


@needs_triton
def test_every_triton_launch_disables_fp_fusion(monkeypatch):
    """Issue 12 #5: no FMA contraction in any Triton launch (bitwise equal to the C++ kernels)."""
    from precise_fast.kernels import fused_step as fs

    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((self.kernel, kwargs))
                return self.kernel[grid](*args, **kwargs)

            return launch

    real = fs.wrap_triton
    monkeypatch.setattr(fs, "wrap_triton", lambda kernel: Recorder(real(kernel)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, v, prev, old, sigma, next_sigma, std, seeds, steps = _op_args(device=device)
    vg = v.clone().requires_grad_(True)
    sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, backend="triton")
    lp, _, bias = score_step(x, vg, prev, sigma, next_sigma, std, kind="precise", old_mean=old, backend="triton")
    (lp.sum() + bias.sum()).backward()
    fs.triton_philox_normal(seeds, steps, 64)
    kernels = {k for k, _ in launches}
    assert {fs._sample_kernel, fs._score_kernel, fs._finalize_kernel, fs._backward_kernel, fs._normals_kernel} <= kernels
    assert all(kw.get("enable_fp_fusion") is False for _, kw in launches), launches


@pytest.mark.parametrize("case", [CUDA_CPP] + TRITON)
def test_grid_row_limit_is_a_clear_error(case):
    """Issue 12 #8: rows sit on grid dimension y (at most 65535) in the CUDA and Triton kernels."""
    device, backend = case
    rows = 65536
    x = torch.zeros(rows, 1, device=device)
    s, n, sd = (torch.full((rows,), value, device=device) for value in (0.5, 0.4, 0.1))
    seeds = torch.zeros(rows, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="at most 65535 rows per call"):
        sample_step(x, x, s, n, sd, kind="precise", seeds=seeds, backend=backend)
    with pytest.raises(ValueError, match="at most 65535 rows per call"):
        score_step(x, x, x, s, n, sd, kind="precise", backend=backend)
    check_grid_rows(backend, 65535)  # the limit itself is allowed
    if backend == "triton":  # the raw op asserts the invariant too, before any launch
        from precise_fast.kernels import fused_step as fs

        with pytest.raises(RuntimeError, match="65535"):
            fs.triton_score_step(x, x, x, s, n, sd, None, FAMILY["precise"], False)


@pytest.mark.parametrize("case", [CPU_CPP, CUDA_CPP] + TRITON)
def test_torch_compile_fullgraph(case):
    """sample (into out= buffers too) + score + GRPO-Guard bias + backward through the op, one graph."""
    device, backend = case
    torch._dynamo.reset()
    x, v, _, old, sigma, next_sigma, std, seeds, steps = _op_args(shape=(2, 3, 41), device=device)

    def rollout_and_score(x, v, old, steps):
        prev, lp_sample, mean = sample_step(
            x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, step_index=steps, return_mean=True,
            backend=backend,
        )
        buf = (torch.empty_like(x), x.new_empty(x.shape[0]), torch.empty_like(mean))
        sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, step_index=steps, backend=backend,
                    out=buf)
        lp, _, bias = score_step(x, v, prev, sigma, next_sigma, std, kind="precise", old_mean=old, backend=backend)
        return prev, lp_sample, mean, lp, bias, *buf

    compiled = torch.compile(rollout_and_score, fullgraph=True)
    vg = v.clone().requires_grad_(True)
    out_c = compiled(x, vg, old, steps)
    out_e = rollout_and_score(x, v.clone().requires_grad_(True), old, steps)
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(out_c[5], out_c[0], rtol=0, atol=0)  # the out= buffers hold the same step
    torch.testing.assert_close(out_c[7], out_c[2], rtol=0, atol=0)
    # The step index is a tensor: advancing it gives new noise without recompiling.
    prev2 = compiled(x, vg, old, steps + 1)[0]
    assert not torch.equal(prev2, out_c[0])
    (out_c[3].sum() + out_c[4].sum()).backward()
    v_ref = v.clone().requires_grad_(True)
    lp, _, bias = score_step(x, v_ref, out_e[0], sigma, next_sigma, std, kind="precise", old_mean=old, backend=backend)
    (lp.sum() + bias.sum()).backward()
    torch.testing.assert_close(vg.grad, v_ref.grad, rtol=0, atol=0)


# ----------------------------------------------------------------------------- dispatch


@needs_cpu
def test_auto_picks_cpu_kernel_and_step_keeps_its_contract():
    x, v, prev, _, sigma, next_sigma, std, seeds, _ = _op_args()
    assert resolve_backend("auto", x) == "cpu"
    assert resolve_backend("auto", x.double()) == "reference"
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
    monkeypatch.setattr(api, "_warned_fallback", set())
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


@pytest.mark.parametrize("case", ALL)
def test_bad_inputs_raise_clear_errors(case):
    device, backend = case
    x, v, prev, old, sigma, next_sigma, std, seeds, _ = _op_args(device=device)
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
        call(sigma=torch.ones(5, device=device), seeds=seeds)
    with pytest.raises(ValueError, match="seeds"):
        call(seeds=torch.tensor([1, 2, 3], device=device))
    with pytest.raises(TypeError, match="seeds must hold integers"):
        call(seeds=torch.tensor([1.0, 2.0], device=device))
    with pytest.raises(ValueError, match="not a sampler kind"):
        call(kind="ddim", seeds=seeds)
    with pytest.raises(ValueError, match="old_mean has shape"):
        score_step(x, v, prev, sigma, next_sigma, std, kind="precise", old_mean=old[:1], backend=backend)
    with pytest.raises(ValueError, match="non-empty"):
        score_step(x[:0], v[:0], prev[:0], sigma[:0], next_sigma[:0], std[:0], kind="precise", backend=backend)
    lp_buf, mean_buf = x.new_empty(x.shape[0]), torch.empty_like(x, dtype=torch.float32)
    with pytest.raises(ValueError, match="out prev_sample must be torch.float32 of shape"):
        call(seeds=seeds, out=(torch.empty_like(x, dtype=torch.bfloat16), lp_buf, None))
    with pytest.raises(ValueError, match="out log_prob must be contiguous"):
        call(seeds=seeds, out=(torch.empty_like(x), torch.empty(2, 2, device=device)[:, 0], None))
    with pytest.raises(ValueError, match="out mean must be torch.float32 of shape"):
        call(seeds=seeds, out=(torch.empty_like(x), lp_buf, mean_buf[:1]))
    with pytest.raises(ValueError, match="return_mean=True needs a mean buffer"):
        call(seeds=seeds, return_mean=True, out=(torch.empty_like(x), lp_buf, None))
    with pytest.raises(TypeError, match="out must be a tuple"):
        call(seeds=seeds, out=torch.empty_like(x))


@needs_cpu
def test_raw_native_ops_reject_bad_input_without_crashing():
    x, v, prev, old, sigma, next_sigma, std, seeds, steps = _op_args()
    lib = torch.ops.precise_fast
    PRECISE = FAMILY["precise"]
    with pytest.raises(ValueError, match="exactly one of seeds"):
        lib.sample_step(x, v, sigma, next_sigma, std, None, None, None, PRECISE, False)
    with pytest.raises(ValueError, match="std must have shape"):
        lib.sample_step(x, v, sigma, next_sigma, std[:1], seeds, steps, None, PRECISE, False)
    with pytest.raises(TypeError, match="must be float32, bfloat16 or float16"):
        lib.score_step(x.double(), v, prev, sigma, next_sigma, std, None, PRECISE, False)
    for family in (-1, 3):  # the families of kinds.FAMILY are 0, 1 and 2
        with pytest.raises(ValueError, match=f"family={family} is not a sampler family"):
            lib.score_step(x, v, prev, sigma, next_sigma, std, None, family, False)
    with pytest.raises(TypeError, match="integer tensor"):
        lib.sample_step(x, v, sigma, next_sigma, std, seeds.float(), steps, None, PRECISE, False)
    with pytest.raises(ValueError, match="grad_guard_bias needs old_mean"):
        lib.score_step_backward(torch.ones(2), None, torch.ones(2), x, v, prev, sigma, next_sigma, std, None,
                                PRECISE, False, False)
    with pytest.raises(ValueError, match="row_elems must be positive"):
        lib.philox_normal(seeds, steps, 0)
    with pytest.raises(ValueError, match="prev_sample out buffer must be contiguous"):
        lib.sample_step_out(x, v, sigma, next_sigma, std, seeds, steps, None, PRECISE, x.t().contiguous().t()[:, :1],
                            torch.empty(2), None)
    with pytest.raises(ValueError, match="log_prob out buffer"):
        lib.sample_step_out(x, v, sigma, next_sigma, std, seeds, steps, None, PRECISE, torch.empty_like(x),
                            torch.empty(3), None)
