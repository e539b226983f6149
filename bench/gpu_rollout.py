"""Rollout of the real-width FLUX.2 Klein test model on the GPU: CUDA graph vs eager.

Model: the tiny builder's ``klein4b`` preset (FLUX.2 Klein 4B widths: 24 heads x 128, 128
latent channels, 7680-wide text features; one double and one single block), bfloat16.
Workload: B = 4 images, 20 steps of ``precise``, 512x512 (1024 image tokens), 128 text
tokens, prompt embeddings -> final latents (decode excluded: the VAE is not what a graph
speeds up). Both engines sample the same seeds; the graphed result must match eager.
Reports ms per rollout, images/s and the graph's speedup.

Run (GPU): ``python bench/gpu_rollout.py --out OUT/gpu_rollout.json``; ``--smoke`` runs
the 32-wide tiny model, 2 steps at 64x64, eager only, on the CPU.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import bench_device, bench_pipeline, device_info, parse_args, stats, time_ms, write  # noqa: E402

from precise_fast.rollout import RolloutEngine  # noqa: E402


def main() -> dict:
    args = parse_args(__doc__, "gpu_rollout.json")
    device = bench_device(args.smoke)
    cuda = device.type == "cuda"
    batch, steps, size, text_len = (4, 20, 512, 128) if not args.smoke else (2, 2, 64, 8)
    repeats = args.repeats or (3 if args.smoke else 10)
    pipe, widths, dtype = bench_pipeline(device)
    width = pipe.transformer.config.joint_attention_dim
    embeds = torch.randn(batch, text_len, width, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    seeds = torch.arange(batch) + 1000
    engines = {"eager": RolloutEngine(pipe, kind="precise", num_steps=steps, height=size, width=size, cuda_graph=False)}
    if cuda:
        engines["cuda_graph"] = RolloutEngine(pipe, kind="precise", num_steps=steps, height=size, width=size,
                                              cuda_graph=True)
    outs = {name: e.sample(embeds, seeds=seeds, decode=False) for name, e in engines.items()}
    results = {}
    for name, engine in engines.items():
        r = stats(time_ms(lambda engine=engine: engine.sample(embeds, seeds=seeds, decode=False), device, repeats))
        r["images_per_s"] = round(batch / (r["median_ms"] * 1e-3), 2)
        r["ms_per_step"] = round(r["median_ms"] / steps, 3)
        results[name] = r
    extra = {}
    if "cuda_graph" in outs:
        a, b = outs["cuda_graph"].latents, outs["eager"].latents
        extra["graph_max_abs_diff_vs_eager"] = float((a.float() - b.float()).abs().max())
        extra["graph_speedup"] = round(results["eager"]["median_ms"] / results["cuda_graph"]["median_ms"], 3)
        torch.testing.assert_close(a, b, rtol=0, atol=5e-2)  # same kernels; the exact gap is reported above
    return write(args.out, "rollout, real-width FLUX.2 Klein test model, CUDA graph vs eager", device, args.smoke,
                 results, gpu=device_info(device), **extra,
                 config={"widths": widths, "dtype": str(dtype), "batch": batch, "steps": steps, "size": size,
                         "text_tokens": text_len, "image_tokens": engines["eager"].layout.seq_len})


if __name__ == "__main__":
    main()
