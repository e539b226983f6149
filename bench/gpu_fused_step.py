"""Fused sampler step on the GPU (CUDA kernel and Triton) vs the eager reference vs
``torch.compile`` of the reference, with achieved bandwidth as a share of HBM peak.

Workload: B = 16 rows x 131072 elements (FLUX.2 Klein's 512x512 latent, 128 x 32 x 32),
bfloat16 and float32 latents, kind ``precise``; modes ``sample`` (the rollout step with its
mean output, noise drawn in the kernel; eager / compiled draw ``torch.randn``),
``score_fwd`` (log-prob of a stored sample) and ``score_fwd_bwd`` (plus the gradient w.r.t.
v). Traffic is the minimum each mode must move, every tensor read or written once: sample
x, v -> prev (latent dtype) + mean (float32); score x, v, prev; backward adds x, v, prev ->
grad_v. GB/s = bytes / median device time; ``hbm_pct`` divides by the datasheet HBM peak.

Run (GPU): ``python bench/gpu_fused_step.py --out OUT/gpu_fused_step.json``;
``--smoke`` runs a tiny size on the CPU backend to check the code path.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import bench_device, device_info, parse_args, stats, time_ms, write  # noqa: E402

from precise_fast.sde import DEFAULT_ETA, flux2_sigmas, noise_std, reference_step, resolve_backend, sample_step, score_step  # noqa: E402

KIND = "precise"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("sample", "score_fwd", "score_fwd_bwd")


def _inputs(batch, elements, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, elements, generator=gen, device=device).to(dtype)
    v = torch.randn(batch, elements, generator=gen, device=device).to(dtype)
    sigmas = flux2_sigmas(20, 1024)
    std = noise_std(sigmas, KIND, DEFAULT_ETA[KIND])
    rows = torch.arange(batch) % 19
    s, s_next, sd = (t[rows].to(device=device, dtype=torch.float32).contiguous() for t in (sigmas, sigmas[1:], std))
    seeds = torch.arange(batch, dtype=torch.int64, device=device) + 7
    prev = sample_step(x, v, s, s_next, sd, kind=KIND, seeds=seeds)[0]
    return x, v, prev, s, s_next, sd, seeds


def _bytes(mode, batch, elements, dtype) -> int:
    n, latent = batch * elements, torch.empty((), dtype=dtype).element_size()
    if mode == "sample":
        return n * (3 * latent + 4)
    return n * latent * (3 if mode == "score_fwd" else 7)


def _reference_score(x, v, prev, s, s_next, sd):
    return reference_step(x, v, s, s_next, sd, kind=KIND, prev_sample=prev).log_prob


def _cases(x, v, prev, s, s_next, sd, seeds, fused_backends, compiled_score):
    """{(mode, impl): callable}."""
    cases = {}
    vg = v.detach().clone().requires_grad_(True)
    for b in fused_backends:
        cases[("sample", b)] = lambda b=b: sample_step(x, v, s, s_next, sd, kind=KIND, seeds=seeds, step_index=3,
                                                       return_mean=True, backend=b)
        cases[("score_fwd", b)] = lambda b=b: score_step(x, v, prev, s, s_next, sd, kind=KIND, backend=b)
        cases[("score_fwd_bwd", b)] = lambda b=b: score_step(x, vg, prev, s, s_next, sd, kind=KIND,
                                                             backend=b)[0].sum().backward()
    cases[("sample", "eager")] = lambda: reference_step(x, v, s, s_next, sd, kind=KIND)
    cases[("score_fwd", "eager")] = lambda: _reference_score(x, v, prev, s, s_next, sd)
    cases[("score_fwd_bwd", "eager")] = lambda: _reference_score(x, vg, prev, s, s_next, sd).sum().backward()
    if compiled_score is not None:
        cases[("score_fwd", "compiled")] = lambda: compiled_score(x, v, prev, s, s_next, sd)
        cases[("score_fwd_bwd", "compiled")] = lambda: compiled_score(x, vg, prev, s, s_next, sd).sum().backward()
        compiled_sample = torch.compile(lambda: reference_step(x, v, s, s_next, sd, kind=KIND))
        cases[("sample", "compiled")] = compiled_sample
    return cases


def main() -> dict:
    args = parse_args(__doc__, "gpu_fused_step.json")
    device = bench_device(args.smoke)
    batch, elements = (2, 4096) if args.smoke else (16, 131072)
    repeats = args.repeats or (3 if args.smoke else 50)
    fused = []
    probe = torch.empty(1, device=device)
    for b in (("cuda", "triton") if device.type == "cuda" else ("cpu",)):
        try:
            if resolve_backend(b, probe) == b:
                fused.append(b)
        except RuntimeError as exc:
            print(f"[gpu_fused_step] backend {b} unavailable: {exc}")
    compiled_score = None
    if not args.smoke:
        torch._dynamo.config.recompile_limit = 64  # 2 dtypes x (grad or not) of one function
        compiled_score = torch.compile(_reference_score)
    gpu = device_info(device)
    results, speedups = {}, {}
    for dname, dtype in DTYPES.items():
        tensors = _inputs(batch, elements, dtype, device)
        for (mode, impl), fn in _cases(*tensors, fused, compiled_score).items():
            r = stats(time_ms(fn, device, repeats, warmup=3))
            gbs = _bytes(mode, batch, elements, dtype) / (r["median_ms"] * 1e-3) / 1e9
            r["gbs"] = round(gbs, 1)
            results[f"{dname}/{mode}/{impl}"] = r
        for mode in MODES:
            for b in fused:
                key = f"{dname}/{mode}/{b}"
                for other in ("eager", "compiled"):
                    ref = results.get(f"{dname}/{mode}/{other}")
                    if ref is not None:
                        speedups[f"{key} vs {other}"] = round(ref["median_ms"] / results[key]["median_ms"], 2)
    peak = gpu["hbm_peak_gbs"]
    if peak:
        for r in results.values():
            r["hbm_pct"] = round(100 * r["gbs"] / peak, 1)
    report = write(args.out, "fused sampler step vs eager vs torch.compile", device, args.smoke, results, gpu=gpu,
                   config={"batch": batch, "elements": elements, "kind": KIND, "fused_backends": fused,
                           "bytes_rule": "sample 3 latent + 1 fp32 tensors; score_fwd 3; score_fwd_bwd 7"},
                   speedups=speedups)
    return report


if __name__ == "__main__":
    main()
