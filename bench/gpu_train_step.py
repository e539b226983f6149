"""One GRPO training update of the real-width FLUX.2 Klein test model in bfloat16: tokens/s and MFU.

Model: the tiny builder's ``klein4b`` preset (FLUX.2 Klein 4B widths, one double and one
single block) with the recipe's LoRA (rank 16 on every attention / MLP projection) and
gradient checkpointing. One update = the trainer's own loss path
(:func:`precise_fast.train.objective.transition_losses`: policy forward, fused score op,
GRPO-Guard clipped ratio) on B = 2 rollouts x 2 trained timesteps (folded into one batch of
4 transitions), backward, AdamW step on the LoRA weights. Transitions come from a real
rollout of the same model at 512x512 (1024 image tokens) with 128 text tokens.

tokens/s counts the transformer's tokens (image + text) per transition per second. MFU =
FLOPs of one update (``torch.utils.flop_counter.FlopCounterMode``: matmuls and attention,
forward, recomputation and backward) / median device time / the GPU's dense bf16 peak.

Run (GPU): ``python bench/gpu_train_step.py --out OUT/gpu_train_step.json``; ``--smoke``
runs the 32-wide tiny model at 64x64 in float32 on the CPU.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import bench_device, bench_pipeline, device_info, parse_args, stats, time_ms, write  # noqa: E402

from precise_fast.models import apply_lora  # noqa: E402
from precise_fast.rollout import RolloutEngine  # noqa: E402
from precise_fast.train.objective import transition_losses  # noqa: E402
from precise_fast.train.transitions import from_rollout  # noqa: E402

LORA_RANK, CLIP_RANGE = 16, 4e-6  # configs/flux2_klein/_base.yaml


def main() -> dict:
    args = parse_args(__doc__, "gpu_train_step.json")
    device = bench_device(args.smoke)
    cuda = device.type == "cuda"
    batch, steps, size, text_len = (2, 20, 512, 128) if not args.smoke else (2, 2, 64, 8)
    cols = [0, 1]
    repeats = args.repeats or (2 if args.smoke else 10)
    pipe, widths, dtype = bench_pipeline(device)
    tr = pipe.transformer
    params = apply_lora(tr, rank=LORA_RANK, alpha=float(LORA_RANK))
    tr.enable_gradient_checkpointing()
    embeds = torch.randn(batch, text_len, tr.config.joint_attention_dim, generator=torch.Generator().manual_seed(0))
    engine = RolloutEngine(pipe, kind="precise", num_steps=steps, height=size, width=size)
    data = from_rollout(engine.sample(embeds.to(device, dtype), seeds=torch.arange(batch) + 1, decode=False), cols)
    data.advantages = torch.randn(batch, len(cols), generator=torch.Generator().manual_seed(1)).to(device)
    optim = torch.optim.AdamW(params, lr=1e-5)

    def update():
        rows = transition_losses(tr, data, range(len(cols)), clip_range=CLIP_RANGE, ratio_kind="guard")
        rows.loss.mean().backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    update()  # warm-up: allocator, kernels, optimiser state
    counter = FlopCounterMode(display=False)
    with counter:
        update()
    flops = counter.get_total_flops()
    r = stats(time_ms(update, device, repeats, warmup=1))
    seconds = r["median_ms"] * 1e-3
    tokens = batch * len(cols) * (engine.layout.seq_len + text_len)
    gpu = device_info(device)
    peak = gpu["bf16_peak_tflops"]
    r.update({
        "tokens_per_update": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "flops_per_update": flops,
        "achieved_tflops": round(flops / seconds / 1e12, 2),
        "mfu_pct": None if not peak else round(100 * flops / seconds / (peak * 1e12), 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    })
    return write(args.out, "one GRPO update, real-width FLUX.2 Klein test model", device, args.smoke, {"update": r},
                 gpu=gpu, config={"widths": widths, "dtype": str(dtype), "rollouts": batch, "trained_timesteps": cols,
                                  "size": size, "text_tokens": text_len, "image_tokens": engine.layout.seq_len,
                                  "lora_rank": LORA_RANK, "gradient_checkpointing": True,
                                  "attention_backend": getattr(tr, "precise_fast_attention_backend", None),
                                  "lora_params": sum(p.numel() for p in params),
                                  "transformer_params": sum(p.numel() for p in tr.parameters())})


if __name__ == "__main__":
    main()
