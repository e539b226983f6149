"""Backend-agnostic checks of the fused step against the reference (used per (device, backend)).

Each check builds its inputs seeded on CPU, moves them to the case's device, runs
``sample_step`` / ``score_step`` on the backend under test there, and compares the results
(brought back to CPU) with the eager float32 reference and the float64 truth by the flash
rule (fused_cases.assert_flash).
"""

from __future__ import annotations

import torch

from .device_backends import to
from .fused_cases import (
    EPS,
    assert_flash,
    input_condition,
    mean_condition,
    latents,
    non_contiguous,
    reference_sample,
    reference_score32,
    reference_score64,
    sample_inputs,
)
from precise_fast.sde import philox_normal, reference_step, sample_step, score_step


def _score64(x64, v64, prev, sigma, next_sigma, std, kind, old_mean=None):
    """float64 score (log_prob, mean, bias) as a differentiable function of float64 x, v."""
    s, n, d = (t.to(torch.float64) for t in (sigma, next_sigma, std))
    out = reference_step(x64, v64, s, n, d, kind=kind, prev_sample=prev.to(torch.float64))
    bias = None
    if old_mean is not None:
        bias = ((out.mean - old_mean.to(torch.float64)) ** 2).reshape(x64.shape[0], -1).mean(1)
    return out.log_prob, out.mean, bias


def _on(device: str, t, strided: bool = False):
    """``t`` on ``device``, laid out non-contiguously there when ``strided``."""
    if t is None:
        return None
    t = t.to(device)
    return non_contiguous(t) if strided else t


def _cpu(*tensors):
    return tuple(None if t is None else t.cpu() for t in tensors)


def check_sample(case, kind: str, shape, dtype, *, strided: bool = False, explicit_noise: bool = False, seed: int = 0):
    device, backend = case
    x, v, sigma, next_sigma, std = sample_inputs(kind, shape, dtype, seed)
    batch = shape[0]
    seeds = torch.arange(batch, dtype=torch.int64) * 7919 + 12345 + seed
    step = 3 + seed
    z = philox_normal(seeds, step, shape)
    rows = to(device, sigma, next_sigma, std)
    kwargs = {"noise": _on(device, z, strided)} if explicit_noise else {"seeds": seeds.to(device), "step_index": step}
    prev, log_prob, mean = _cpu(*sample_step(
        _on(device, x, strided), _on(device, v, strided), *rows,
        kind=kind, return_mean=True, backend=backend, **kwargs,
    ))
    assert prev.dtype == dtype and prev.shape == x.shape
    assert log_prob.dtype == torch.float32 and log_prob.shape == (batch,)
    assert mean.dtype == torch.float32 and mean.shape == x.shape

    prev_e, _, mean_e = reference_sample(x, v, sigma, next_sigma, std, kind, z)
    lp64, mean64, _ = reference_score64(x, v, prev, sigma, next_sigma, std, kind)
    lp32, _, _ = reference_score32(x, v, prev, sigma, next_sigma, std, kind)
    mean_floor = mean_condition(x, v, sigma, next_sigma, std, kind)
    assert_flash(f"{backend} sample mean", mean, mean_e, mean64, floor=mean_floor)
    # The unrounded sample in float64 is the truth of prev_sample; rounding it to x.dtype
    # is one of the roundings the rule allows for, the noise's few ulp another.
    sd64 = std.to(torch.float64).view((batch,) + (1,) * (len(shape) - 1))
    noise64 = z.to(torch.float64)
    prev64 = mean64 if kind == "ode" else mean64 + sd64 * noise64
    noise_floor = 0.0 if kind == "ode" else 8 * EPS[torch.float32] * (sd64 * noise64).abs()
    assert_flash(f"{backend} prev_sample", prev, prev_e, prev64, out_dtype=dtype, floor=mean_floor + noise_floor)
    # The log-prob of the sample as stored (rounded to x.dtype): truth and eager score `prev`.
    lp_floor = input_condition(lambda xx, vv: _score64(xx, vv, prev, sigma, next_sigma, std, kind)[0], x, v)
    assert_flash(f"{backend} sample log_prob", log_prob, lp32, lp64, floor=lp_floor)
    # Contract: re-scoring the stored sample gives the identical log-prob.
    lp_again = score_step(*to(device, x, v, prev), *rows, kind=kind, backend=backend)[0].cpu()
    assert torch.equal(lp_again, log_prob), f"re-scoring changed the log-prob: {lp_again} vs {log_prob}"
    # Without return_mean the mean is not materialised.
    _, _, no_mean = sample_step(*to(device, x, v), *rows, kind=kind, backend=backend, **kwargs)
    assert no_mean is None


def _score_case(kind, shape, dtype, seed):
    x, v, sigma, next_sigma, std = sample_inputs(kind, shape, dtype, seed)
    z = latents(shape, torch.float32, seed + 2)
    prev, _, mean_e = reference_sample(x, v, sigma, next_sigma, std, kind, z)
    # An old policy's mean near the current one, as in GRPO-Guard.
    old_mean = (mean_e + 0.01 * latents(shape, torch.float32, seed + 3)).to(torch.float32)
    return x, v, prev, sigma, next_sigma, std, old_mean


def check_score(case, kind: str, shape, dtype, *, strided: bool = False, with_old: bool = True, seed: int = 0):
    device, backend = case
    x, v, prev, sigma, next_sigma, std, old_mean = _score_case(kind, shape, dtype, seed)
    old = old_mean if with_old else None
    rows = to(device, sigma, next_sigma, std)
    log_prob, mean, bias = _cpu(*score_step(
        _on(device, x, strided), _on(device, v, strided), _on(device, prev, strided), *rows,
        kind=kind, old_mean=_on(device, old, strided), return_mean=True, backend=backend,
    ))
    lp64, mean64, bias64 = reference_score64(x, v, prev, sigma, next_sigma, std, kind, old)
    lp32, mean32, bias32 = reference_score32(x, v, prev, sigma, next_sigma, std, kind, old)
    lp_floor = input_condition(lambda xx, vv: _score64(xx, vv, prev, sigma, next_sigma, std, kind)[0], x, v)
    assert_flash(f"{backend} score log_prob", log_prob, lp32, lp64, floor=lp_floor)
    assert_flash(f"{backend} score mean", mean, mean32, mean64, floor=mean_condition(x, v, sigma, next_sigma, std, kind))
    if with_old:
        bias_floor = input_condition(lambda xx, vv: _score64(xx, vv, prev, sigma, next_sigma, std, kind, old)[2], x, v)
        assert_flash(f"{backend} guard_bias", bias, bias32, bias64, floor=bias_floor)
    else:
        assert bias is None
    lp_only, no_mean, no_bias = score_step(*to(device, x, v, prev), *rows, kind=kind, backend=backend)
    assert no_mean is None and no_bias is None
    assert torch.equal(lp_only.cpu(), log_prob), "log_prob must not depend on which extra outputs were asked for"


def check_sample_out(case, kind: str, shape, dtype, *, return_mean: bool = True, explicit_noise: bool = False):
    """``out=`` buffers (slices of a step-major buffer) get exactly the functional results."""
    device, backend = case
    x, v, sigma, next_sigma, std = to(device, *sample_inputs(kind, shape, dtype, 5))
    batch = shape[0]
    seeds = (torch.arange(batch, dtype=torch.int64) + 99).to(device)
    noise = latents(shape, torch.float32, 6).to(device) if explicit_noise else None
    kw = {"noise": noise} if explicit_noise else {"seeds": seeds, "step_index": 2}
    want = sample_step(x, v, sigma, next_sigma, std, kind=kind, return_mean=return_mean, backend=backend, **kw)
    # Step-major rollout buffers, poisoned so that a value not written shows.
    latents_buf = torch.full((3,) + tuple(shape), float("nan"), dtype=dtype, device=device)
    log_probs_buf = torch.full((3, batch), float("nan"), device=device)
    means_buf = torch.full((3,) + tuple(shape), float("nan"), device=device)
    out = (latents_buf[1], log_probs_buf[1], means_buf[1] if return_mean else None)
    got = sample_step(x, v, sigma, next_sigma, std, kind=kind, return_mean=return_mean, backend=backend, out=out, **kw)
    assert got[0] is out[0] and got[1] is out[1] and got[2] is out[2]
    assert torch.equal(latents_buf[1], want[0]) and torch.equal(log_probs_buf[1], want[1])
    if return_mean:
        assert torch.equal(means_buf[1], want[2])
    else:
        assert want[2] is None and means_buf.isnan().all()
    for buf in (latents_buf, log_probs_buf, means_buf):  # the other steps are untouched
        assert buf[0].isnan().all() and buf[2].isnan().all()


def check_grad(case, kind: str, shape, dtype, *, need_x: bool, with_old: bool, use_mean: bool, seed: int = 0):
    """Gradients w.r.t. v (and x, old_mean) of a loss mixing every output, vs autograd of the reference."""
    device, backend = case
    x, v, prev, sigma, next_sigma, std, old_mean = _score_case(kind, shape, dtype, seed)
    batch = shape[0]
    g = torch.Generator().manual_seed(seed + 11)
    w_lp = torch.randn(batch, generator=g, dtype=torch.float64)
    w_b = torch.randn(batch, generator=g, dtype=torch.float64)
    w_m = torch.randn(shape, generator=g, dtype=torch.float64)

    def run(xx, vv, pp, oo, fn):
        lp, mean, bias = fn(xx, vv, pp, oo)
        loss = (w_lp.to(lp.device, lp.dtype) * lp).sum()
        if with_old:
            loss = loss + (w_b.to(bias.device, bias.dtype) * bias).sum()
        if use_mean:
            loss = loss + (w_m.to(mean.device, mean.dtype) * mean).sum()
        inputs = [vv] + ([xx] if need_x else []) + ([oo] if with_old else [])
        return _cpu(*torch.autograd.grad(loss, inputs, allow_unused=True))

    rows = to(device, sigma, next_sigma, std)

    def fused(xx, vv, pp, oo):
        return score_step(xx, vv, pp, *rows, kind=kind, old_mean=oo, return_mean=use_mean, backend=backend)

    def reference(dt):
        s, n, d = (t.to(dt) for t in (sigma, next_sigma, std))

        def fn(xx, vv, pp, oo):
            out = reference_step(xx, vv, s, n, d, kind=kind, prev_sample=pp)
            bias = None
            if oo is not None:
                bias = ((out.mean - oo.to(out.mean.dtype)) ** 2).reshape(batch, -1).mean(1)
            return out.log_prob, out.mean, bias

        return fn

    def leaves(dt=None, dev="cpu"):
        conv = (lambda t: t.to(dev, dt)) if dt is not None else (lambda t: t.to(dev))
        xx = conv(x).detach().requires_grad_(need_x)
        vv = conv(v).detach().requires_grad_(True)
        oo = conv(old_mean).detach().requires_grad_(True) if with_old else None
        return xx, vv, conv(prev), oo

    got = run(*leaves(dev=device), fused)
    eager = run(*leaves(), reference(torch.float32))
    truth = run(*leaves(torch.float64), reference(torch.float64))
    names = ["grad_v"] + (["grad_x"] if need_x else []) + (["grad_old_mean"] if with_old else [])
    dtypes = [v.dtype] + ([x.dtype] if need_x else []) + ([torch.float32] if with_old else [])
    # Floors: the gradients are c * (a_lp (prev - mean) + a_b (mean - old) + w_m), so a
    # float32 error in the mean moves them by c (|a_lp| + |a_b|) per unit.
    from precise_fast.sde import mean_coefficients

    c_x, c_v = (c.view((batch,) + (1,) * (len(shape) - 1)) for c in mean_coefficients(*(t.to(torch.float64) for t in (sigma, next_sigma, std)), kind))
    m_elems = x[0].numel()
    row = (batch,) + (1,) * (len(shape) - 1)
    a_lp = 0.0 if kind == "ode" else (w_lp / (std.to(torch.float64) ** 2 * m_elems)).view(row)
    a_b = (2.0 * w_b / m_elems).view(row) if with_old else 0.0
    sens = mean_condition(x, v, sigma, next_sigma, std, kind) * (abs(a_lp) + abs(a_b) if not isinstance(a_lp, float) else abs(a_b))
    if isinstance(a_lp, float) and isinstance(a_b, float):
        sens = torch.zeros_like(sens)
    floors = [c_v.abs() * sens] + ([c_x.abs() * sens] if need_x else []) + (
        [mean_condition(x, v, sigma, next_sigma, std, kind) * abs(a_b)] if with_old else []
    )
    for name, a, e, t, dt, fl in zip(names, got, eager, truth, dtypes, floors):
        if t is None:  # ode without mean/bias terms: the loss does not depend on it
            assert a is None or not a.abs().any(), f"{name} should be zero"
            continue
        if e is None:
            e = torch.zeros_like(t, dtype=torch.float32)
        assert a is not None, f"{backend}: {name} missing"
        assert a.dtype == dt, f"{name}: dtype {a.dtype}, expected {dt}"
        assert_flash(f"{backend} {name}", a, e, t, out_dtype=dt, floor=fl + 4 * EPS[torch.float32] * t.abs())


def check_mixed_dtypes(case, kind: str) -> None:
    """Each latent tensor in its own dtype (fp32 latents, bf16 model output, fp16 old mean)."""
    device, backend = case
    shape = (2, 1031)
    x = latents(shape, torch.float32, 21)
    v = latents(shape, torch.bfloat16, 22)
    z = latents(shape, torch.float16, 23)
    from .fused_cases import step_rows

    sigma, next_sigma, std = step_rows(kind, 2, first_step=3)
    rows = to(device, sigma, next_sigma, std)
    prev, lp, mean = _cpu(*sample_step(*to(device, x, v), *rows, kind=kind, noise=z.to(device), return_mean=True,
                                       backend=backend))
    ref = reference_step(x, v, sigma, next_sigma, std, kind=kind, noise=z)
    assert prev.dtype == torch.float32
    torch.testing.assert_close(mean, ref.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prev, ref.prev_sample, rtol=1e-5, atol=1e-6)
    lp_ref = reference_step(x, v, sigma, next_sigma, std, kind=kind, prev_sample=prev).log_prob
    torch.testing.assert_close(lp, lp_ref, rtol=1e-4, atol=1e-4)
    old = (ref.mean + 0.02).to(torch.float16).to(device).requires_grad_(True)
    vv = v.clone().to(device).requires_grad_(True)
    lp2, _, bias = score_step(x.to(device), vv, prev.to(torch.bfloat16).to(device), *rows, kind=kind, old_mean=old,
                              backend=backend)
    (lp2.sum() + bias.sum()).backward()
    g_v, g_old = vv.grad.cpu(), old.grad.cpu()
    lp2, bias = lp2.detach().cpu(), bias.detach().cpu()
    v_ref = v.clone().requires_grad_(True)
    old_ref = old.detach().cpu().requires_grad_(True)
    out = reference_step(x, v_ref, sigma, next_sigma, std, kind=kind, prev_sample=prev.to(torch.bfloat16))
    bias_ref = ((out.mean - old_ref.float()) ** 2).reshape(2, -1).mean(1)
    (out.log_prob.sum() + bias_ref.sum()).backward()
    assert g_v.dtype == torch.bfloat16 and g_old.dtype == torch.float16
    torch.testing.assert_close(lp2, out.log_prob.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bias, bias_ref.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(g_v.float(), v_ref.grad.float(), rtol=2e-2, atol=1e-6)
    torch.testing.assert_close(g_old.float(), old_ref.grad.float(), rtol=2e-3, atol=1e-7)
