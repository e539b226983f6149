"""Rollout of FLUX.2 Klein 4B at its real size on the GPU: the engine eager, the engine under a
CUDA graph, and the paper-style per-step loop. Images/s, MFU, peak memory.

Model: the real-size transformer (5 double + 20 single blocks, 24 heads x 128, in_channels 128,
joint_attention_dim 7680) with random weights in bfloat16 (bench/gpu_timing.py
``bench_pipeline``). Workload, the recipe's (configs/flux2_klein/_base.yaml): 16 images at
512x512 (1024 image tokens), 20 steps of ``precise`` (eta 1.5), 128 text tokens of random
prompt embeddings, float32 latents (``sampler.latent_dtype``); prompt embeddings -> final
latents. The VAE decode is left out (the benchmark's VAE is the tiny builder's, not the real one).

- ``engine_eager``: :class:`RolloutEngine` with ``cuda_graph=False``, the fused step op;
- ``engine_cuda_graph``: the same engine, its 20-step loop captured once and replayed;
- ``paper_loop``: :func:`precise_fast.rollout.plain_rollout` with ``per_row=True``: the stock
  pipeline's loop, the transformer batched, then the reference step and its log-prob one image
  at a time, as the research trainers' sampling loops step.

images/s = 16 / median seconds per rollout. **MFU** = model FLOPs / seconds / dense bf16 peak,
model FLOPs = 20 x ``transformer_forward_flops(config, 1024, 128, 16)`` (precise_fast/models/
flops.py: 2mnk per matmul plus attention 4 B H L^2 d; elementwise work and the sampler step not
counted). Peak memory: ``torch.cuda.max_memory_allocated`` over the variant's own calls (the
8 GB of weights included). Each variant: one warm-up (the graph: warm-up and capture), then up
to 2 timed rollouts while they fit the time cap (default 58 s, start-up and model build included).

Run (GPU): ``python bench/gpu_rollout.py --out OUT/gpu_rollout.json``; ``--smoke`` runs the tiny
model (2 images, 2 steps, 64x64) on the CPU, eager and the paper loop (no graph without CUDA).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import Clock, bench_device, bench_pipeline, device_info, measure, mfu_pct, parse_args, write  # noqa: E402

from precise_fast.models import unpack_latents  # noqa: E402
from precise_fast.models.flops import transformer_forward_flops  # noqa: E402
from precise_fast.rollout import RolloutEngine, plain_rollout  # noqa: E402
from precise_fast.rollout.engine import initial_latents  # noqa: E402

KIND = "precise"
TIME_CAP_S = 58.0
MFU_FORMULA = ("steps x transformer_forward_flops(config, image_tokens, text_tokens, batch) / seconds / "
               "dense bf16 peak (precise_fast/models/flops.py: matmuls 2mnk + attention 4 B H L^2 d)")


def main() -> dict:
    args = parse_args(__doc__, "gpu_rollout.json", TIME_CAP_S)
    clock = Clock(args.time_cap)
    device = bench_device(args.smoke)
    cuda = device.type == "cuda"
    batch, steps, size, text_len = (2, 2, 64, 8) if args.smoke else (16, 20, 512, 128)
    gpu = device_info(device)
    pipe, model = bench_pipeline(device)
    tr = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(batch, text_len, tr.config.joint_attention_dim, generator=gen).to(device, tr.dtype)
    seeds = torch.arange(batch, dtype=torch.int64) + 1000
    engine = RolloutEngine(pipe, kind=KIND, num_steps=steps, height=size, width=size, cuda_graph=False)
    layout = engine.layout
    start = unpack_latents(initial_latents(seeds.to(device), layout), layout)
    flops = steps * transformer_forward_flops(tr.config, layout.seq_len, text_len, batch)
    outputs, results, skipped = {}, {}, []
    variants = {"engine_eager": lambda: engine.sample(embeds, seeds=seeds, decode=False).final_latents}
    if cuda:
        graphed = RolloutEngine(pipe, kind=KIND, num_steps=steps, height=size, width=size, cuda_graph=True)
        variants["engine_cuda_graph"] = lambda: graphed.sample(embeds, seeds=seeds, decode=False).final_latents
    else:
        skipped.append("engine_cuda_graph (needs CUDA)")
    variants["paper_loop"] = lambda: plain_rollout(
        pipe, embeds, start, seeds.to(device), kinds=(KIND,) * steps, eta=engine.eta, height=size, width=size,
        per_row=True, decode=False)["latents"][:, -1]
    # What each later variant needs at least, in rollouts: the graph its warm-up + capture and a replay.
    need = {"engine_eager": 0.0, "engine_cuda_graph": 2.2, "paper_loop": 1.2}

    def report():
        return write(args.out, "rollout, FLUX.2 Klein 4B real size: engine eager vs CUDA graph vs paper loop", args.smoke,
                     gpu, results, skipped=skipped, mfu_formula=MFU_FORMULA, model=model, seconds=round(clock.used(), 1),
                     config={"batch": batch, "steps": steps, "size": size, "kind": KIND, "eta": engine.eta,
                             "text_tokens": text_len, "image_tokens": layout.seq_len, "latent_dtype": "float32",
                             "transformer_dtype": str(tr.dtype), "step_backend": engine.step_backend,
                             "attention_backend": getattr(tr, "precise_fast_attention_backend", None),
                             "flops_per_rollout": flops, "decode": False})

    per_rollout = None
    names = list(variants)
    for i, name in enumerate(names):
        later = sum(need[n] for n in names[i + 1:]) * (per_rollout or 0.0)
        fn = variants[name]
        # Two timed rollouts at most, so the later variants keep their share of the cap.
        r = measure(lambda: outputs.__setitem__(name, fn()), device, clock, reserve_s=later, max_repeats=2,
                    warmups=0 if name == "paper_loop" and per_rollout else 1, est_s=per_rollout)
        if r is None:
            skipped.append(f"{name} (time cap)")
            continue
        seconds = r["median_ms"] / 1e3
        per_rollout = per_rollout or seconds
        r.update(images_per_s=round(batch / seconds, 3), mfu_pct=mfu_pct(flops, seconds, gpu),
                 achieved_tflops=round(flops / seconds / 1e12, 1))
        results[name] = r
        if name == "engine_cuda_graph":
            graphed.reset_graphs()  # free the graph's pool before the next variant's peak
        report()
    base = outputs.get("engine_eager")
    for name, out in outputs.items():
        if base is not None and name != "engine_eager":
            results[name]["max_abs_diff_vs_engine_eager"] = float((out.float() - base.float()).abs().max())
            results[name]["speedup_vs_engine_eager"] = round(results["engine_eager"]["median_ms"] / results[name]["median_ms"], 3)
    if base is not None:
        results["engine_eager"]["finite"] = bool(torch.isfinite(base).all())
    out = report()
    rates = ", ".join(f"{k} {v['images_per_s']} img/s" for k, v in results.items())
    print(f"[gpu_rollout] {rates}; {clock.used():.0f} s")
    return out


if __name__ == "__main__":
    main()
