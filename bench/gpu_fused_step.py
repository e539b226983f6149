"""Fused sampler step on the GPU (C++ CUDA kernel, Triton) against eager PyTorch and
``torch.compile`` of the plain math: device time per call, GB/s, share of HBM.

Workload: B = 16 rows x 131072 elements (FLUX.2 Klein's 512x512 latent, 128 x 32 x 32), kind
``precise``, bfloat16 and float32 latents. Modes: ``sample`` (the rollout step with its mean,
noise drawn in the kernel; the plain math draws ``torch.randn``), ``score_fwd`` (log-prob of a
stored sample) and ``score_fwd_bwd`` (plus d log-prob / d v by ``torch.autograd.grad``, nothing
accumulated into ``.grad``). The plain math (:func:`plain_sample`, :func:`plain_score`) is the
step's affine form with the per-row coefficients of ``reference.mean_coefficients`` computed
once outside, and no argument checks, so ``torch.compile`` compiles only the math.

Timing (bench/gpu_timing.py ``graph_ms_per_call``): each case rotates over enough input sets
that one pass moves at least 4x the GPU's L2 (H100: 50 MB), so every call reads HBM, not the
cache; the pass is one CUDA graph replayed back to back between events; 5 timings, median.
Traffic is the minimum each mode must move, every tensor read or written once: sample x, v ->
prev (latent dtype) + mean (float32); score x, v, prev; fwd+bwd adds x, v, prev -> grad_v.
GB/s = bytes / median time; ``hbm_pct`` over the datasheet peak, ``copy_pct`` over the
measured device-to-device copy.

Run (GPU): ``python bench/gpu_fused_step.py --out OUT/gpu_fused_step.json`` (about 48 s, most
of it compiling); ``--smoke`` runs 2 x 4096 bf16 on the CPU (C++ kernel, ``aot_eager`` compile).
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import Clock, bench_device, device_info, graph_ms_per_call, parse_args, stats, write  # noqa: E402

from precise_fast.sde import DEFAULT_ETA, flux2_sigmas, noise_std, resolve_backend, sample_step, score_step  # noqa: E402
from precise_fast.sde.reference import mean_coefficients  # noqa: E402

KIND = "precise"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("sample", "score_fwd", "score_fwd_bwd")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
TIME_CAP_S = 48.0
COMPILE_COST_S = 12.0  # a compile started with less left than this would overrun the cap
FIRST_COMPILE_COST_S = 20.0  # the first one also starts inductor's workers, on a machine's cold caches


def _log_prob(prev, mean, sd):
    d = prev.float() - mean
    return -(d * d).mean(dim=1) / (2 * sd[:, 0] ** 2) - torch.log(sd[:, 0]) - HALF_LOG_2PI


def plain_sample(x, v, cx, cv, sd):
    """``(prev, log_prob, mean)`` of the sample step in plain PyTorch; ``cx``, ``cv``, ``sd`` are (B, 1)."""
    mean = cx * x.float() + cv * v.float()
    prev = (mean + sd * torch.randn(x.shape, device=x.device)).to(x.dtype)
    return prev, _log_prob(prev, mean, sd), mean


def plain_score(x, v, prev, cx, cv, sd):
    """The log-prob of ``prev`` in plain PyTorch."""
    return _log_prob(prev, cx * x.float() + cv * v.float(), sd)


def _traffic(mode: str, elements: int, dtype: torch.dtype) -> int:
    latent = torch.empty((), dtype=dtype).element_size()
    if mode == "sample":
        return elements * (3 * latent + 4)
    return elements * latent * (3 if mode == "score_fwd" else 7)


def _input_sets(count, batch, elements, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    sigmas = flux2_sigmas(20, 1024)
    std = noise_std(sigmas, KIND, DEFAULT_ETA[KIND])
    rows = torch.arange(batch) % 19
    s, s_next, sd = (t[rows].to(device=device, dtype=torch.float32).contiguous() for t in (sigmas, sigmas[1:], std))
    cx, cv = (c.to(torch.float32).view(batch, 1).contiguous() for c in mean_coefficients(s, s_next, sd, KIND))
    seeds = torch.arange(batch, dtype=torch.int64, device=device) + 7
    step = torch.full((batch,), 3, dtype=torch.int64, device=device)
    sets = []
    for _ in range(count):
        x, v = (torch.randn(batch, elements, generator=gen, device=device).to(dtype) for _ in range(2))
        prev = sample_step(x, v, s, s_next, sd, kind=KIND, seeds=seeds, step_index=step)[0]
        sets.append(dict(x=x, v=v, vg=v.clone().requires_grad_(True), prev=prev))
    return sets, dict(s=s, s_next=s_next, sd=sd, cx=cx, cv=cv, sd_col=sd.view(batch, 1), seeds=seeds, step=step)


def _fused_calls(mode, backend, sets, r):
    def one(t):
        if mode == "sample":
            return lambda: sample_step(t["x"], t["v"], r["s"], r["s_next"], r["sd"], kind=KIND, seeds=r["seeds"],
                                       step_index=r["step"], return_mean=True, backend=backend)
        if mode == "score_fwd":
            return lambda: score_step(t["x"], t["v"], t["prev"], r["s"], r["s_next"], r["sd"], kind=KIND,
                                      backend=backend)[0]
        return lambda: torch.autograd.grad(score_step(t["x"], t["vg"], t["prev"], r["s"], r["s_next"], r["sd"],
                                                      kind=KIND, backend=backend)[0].sum(), t["vg"])[0]

    return [one(t) for t in sets]


def _plain_calls(mode, sample_fn, score_fn, sets, r):
    def one(t):
        if mode == "sample":
            return lambda: sample_fn(t["x"], t["v"], r["cx"], r["cv"], r["sd_col"])
        if mode == "score_fwd":
            return lambda: score_fn(t["x"], t["v"], t["prev"], r["cx"], r["cv"], r["sd_col"])
        return lambda: torch.autograd.grad(score_fn(t["x"], t["vg"], t["prev"], r["cx"], r["cv"], r["sd_col"]).sum(),
                                           t["vg"])[0]

    return [one(t) for t in sets]


def _check_same_function(sets, r, fused):
    """The plain math computes the step the kernels compute (so the comparison is fair)."""
    t = sets[0]
    want = plain_score(t["x"], t["v"], t["prev"], r["cx"], r["cv"], r["sd_col"])
    for b in fused:
        got = score_step(t["x"], t["v"], t["prev"], r["s"], r["s_next"], r["sd"], kind=KIND, backend=b)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def main() -> dict:
    args = parse_args(__doc__, "gpu_fused_step.json", TIME_CAP_S)
    clock = Clock(args.time_cap)
    device = bench_device(args.smoke)
    cuda = device.type == "cuda"
    batch, elements = (2, 4096) if args.smoke else (16, 131072)
    gpu = device_info(device)
    l2 = gpu.get("l2_bytes") or 0
    fused = []
    probe = torch.empty(1, device=device)
    for b in ("cuda", "triton") if cuda else ("cpu",):
        try:
            if resolve_backend(b, probe) == b:
                fused.append(b)
        except RuntimeError as exc:
            print(f"[gpu_fused_step] backend {b} unavailable: {exc}")
    compile_backend = "inductor" if cuda else "aot_eager"
    torch._dynamo.config.recompile_limit = 64  # dtypes x grad or not, one function each
    compiled_sample = torch.compile(plain_sample, backend=compile_backend)
    compiled_score = torch.compile(plain_score, backend=compile_backend)
    results, speedups, skipped, config = {}, {}, [], {}
    compiled_before = False

    def report():
        return write(args.out, "fused sampler step vs eager vs torch.compile of the plain math", args.smoke, gpu, results,
                     speedups=speedups, skipped=skipped, config=config, seconds=round(clock.used(), 1))

    for dname, dtype in list(DTYPES.items())[: 1 if args.smoke else None]:
        for mode in MODES:
            traffic = _traffic(mode, batch * elements, dtype)
            # Enough input sets that one pass moves >= 4x L2: every call streams from HBM.
            count = max(2, math.ceil(4 * l2 / traffic)) if l2 else 2
            sets, rows = _input_sets(count, batch, elements, dtype, device)
            if mode == "score_fwd":
                _check_same_function(sets, rows, fused)
            config[f"{dname}/{mode}"] = {"input_sets": count, "bytes_per_call": traffic, "bytes_per_pass": count * traffic}
            impls = {b: _fused_calls(mode, b, sets, rows) for b in fused}
            impls["eager"] = _plain_calls(mode, plain_sample, plain_score, sets, rows)
            impls["compiled"] = _plain_calls(mode, compiled_sample, compiled_score, sets, rows)
            for impl, calls in impls.items():
                key = f"{dname}/{mode}/{impl}"
                compile_cost = COMPILE_COST_S if compiled_before else FIRST_COMPILE_COST_S
                if clock.left() < (compile_cost if impl == "compiled" else 2.0):
                    skipped.append(f"{key} (time cap)")
                    continue
                ms, method = graph_ms_per_call(calls, device)
                compiled_before = compiled_before or impl == "compiled"
                r = {**stats(ms), "timing": method}
                r["gbs"] = round(traffic / (r["median_ms"] * 1e-3) / 1e9, 1)
                if gpu.get("hbm_peak_gbs"):
                    r["hbm_pct"] = round(100 * r["gbs"] / gpu["hbm_peak_gbs"], 1)
                if gpu.get("measured_copy_gbs"):
                    r["copy_pct"] = round(100 * r["gbs"] / gpu["measured_copy_gbs"], 1)
                results[key] = r
                report()
            for b in fused:
                for other in ("eager", "compiled"):
                    mine, theirs = results.get(f"{dname}/{mode}/{b}"), results.get(f"{dname}/{mode}/{other}")
                    if mine and theirs:
                        speedups[f"{dname}/{mode}/{b} vs {other}"] = round(theirs["median_ms"] / mine["median_ms"], 2)
            del sets, impls
    config.update(batch=batch, elements=elements, kind=KIND, fused_backends=fused, compile_backend=compile_backend,
                  bytes_rule="minimum traffic: sample x, v, prev (latent) + mean (fp32); score_fwd x, v, prev; "
                             "score_fwd_bwd 7 latent tensors")
    out = report()
    print(f"[gpu_fused_step] {len(results)} cases, {len(skipped)} skipped, {clock.used():.0f} s")
    return out


if __name__ == "__main__":
    main()
