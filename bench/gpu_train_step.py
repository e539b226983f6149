"""One GRPO-Guard update of the recipe's LoRA at FLUX.2 Klein 4B's real size on the GPU: the
timestep-batched update against the paper's per-timestep loop. Seconds per update, MFU, peak memory.

Model: the real-size transformer with random weights in bfloat16 (bench/gpu_timing.py
``bench_pipeline``), the recipe's LoRA (rank 16, alpha 16, Gaussian init, the paper's targets)
and gradient checkpointing (configs/flux2_klein/_base.yaml). **One update** = one minibatch of
the recipe's schedule: 2 samples x 19 trained timesteps (``timestep_fraction`` 0.99 of 20 steps),
the GRPO-Guard loss through the trainer's own path (:func:`precise_fast.train.phases.rescore.
transition_losses`: policy forward, fused score op with the old mean, clipped normalised ratio,
clip_range 4e-6), backward into the LoRA weights, one AdamW step (lr 8e-5). (The recipe
accumulates 8 minibatches per optimizer step; the step is the cheap part.) Transitions come from
a real rollout of the same model: 2 images, 20 steps of ``precise``, 512x512, 128 random text tokens.

- ``timestep_batched``: the 19 timesteps folded into one forward/backward of 38 rows
  (``train.timesteps_per_forward`` = all of them);
- ``per_timestep_loop``: the paper's loop (Tencent-Hunyuan/Precise precise_sde/train/
  rl_trainer.py): one forward/backward of the 2 rows per timestep, each loss / 19.

**MFU** = model FLOPs / seconds / dense bf16 peak, model FLOPs = ``transformer_forward_flops`` +
``transformer_backward_flops`` (precise_fast/models/flops.py) at 1024 image + 128 text tokens,
38 rows, LoRA rank 16 on the paper's targets: the gradient checkpointing's recomputed forward
is not counted. Peak memory: ``torch.cuda.max_memory_allocated`` over the variant's own calls.
Each variant: one warm-up (allocator, kernels, optimizer state), then up to 3 timed updates
while they fit the time cap (default 58 s, start-up, model build and the rollout included).

Run (GPU): ``python bench/gpu_train_step.py --out OUT/gpu_train_step.json``; ``--smoke`` runs
the tiny model (2 samples x 2 timesteps, 64x64) in float32 on the CPU.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import Clock, bench_device, bench_pipeline, device_info, measure, mfu_pct, parse_args, write  # noqa: E402

from precise_fast.models import apply_lora  # noqa: E402
from precise_fast.models.flops import transformer_backward_flops, transformer_forward_flops  # noqa: E402
from precise_fast.rollout import RolloutEngine  # noqa: E402
from precise_fast.train.phases.rescore import transition_losses  # noqa: E402
from precise_fast.train.grpo.transitions import from_rollout  # noqa: E402

KIND, LORA_RANK, LORA_TARGETS, CLIP_RANGE, LR = "precise", 16, "paper", 4e-6, 8e-5  # configs/flux2_klein/_base.yaml
TIME_CAP_S = 58.0
MFU_FORMULA = ("(transformer_forward_flops + transformer_backward_flops)(config, image_tokens, text_tokens, rows, "
               "lora_rank=16, lora_targets='paper') / seconds / dense bf16 peak (precise_fast/models/flops.py; "
               "the checkpointing recompute not counted)")


def main() -> dict:
    args = parse_args(__doc__, "gpu_train_step.json", TIME_CAP_S)
    clock = Clock(args.time_cap)
    device = bench_device(args.smoke)
    samples, steps, size, text_len = (2, 3, 64, 8) if args.smoke else (2, 20, 512, 128)
    cols = list(range(max(1, int(steps * 0.99))))  # algorithm.timestep_fraction 0.99
    gpu = device_info(device)
    pipe, model = bench_pipeline(device)
    tr = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(samples, text_len, tr.config.joint_attention_dim, generator=gen).to(device, tr.dtype)
    engine = RolloutEngine(pipe, kind=KIND, num_steps=steps, height=size, width=size, cuda_graph=False)
    data = from_rollout(engine.sample(embeds, seeds=torch.arange(samples) + 1, decode=False), cols)
    data.advantages = torch.randn(samples, len(cols), generator=gen).to(device)
    params = apply_lora(tr, rank=LORA_RANK, alpha=float(LORA_RANK), targets=LORA_TARGETS)
    tr.enable_gradient_checkpointing()
    tr.train()
    optim = torch.optim.AdamW(params, lr=LR)
    rows = samples * len(cols)
    image_tokens = engine.layout.seq_len
    flops = (transformer_forward_flops(tr.config, image_tokens, text_len, rows, lora_rank=LORA_RANK, lora_targets=LORA_TARGETS)
             + transformer_backward_flops(tr.config, image_tokens, text_len, rows, lora_rank=LORA_RANK,
                                          lora_targets=LORA_TARGETS))

    def loss(columns):
        return transition_losses(tr, data, columns, clip_range=CLIP_RANGE, ratio_kind="guard").loss.mean()

    def batched():
        loss(range(len(cols))).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    def per_timestep():
        for c in range(len(cols)):
            (loss([c]) / len(cols)).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    results, skipped = {}, []

    def report():
        return write(args.out, "one GRPO-Guard update of the recipe's LoRA, FLUX.2 Klein 4B real size: "
                     "timestep-batched vs per-timestep loop", args.smoke, gpu, results, skipped=skipped,
                     mfu_formula=MFU_FORMULA, model=model, seconds=round(clock.used(), 1),
                     config={"samples": samples, "trained_timesteps": len(cols), "rows": rows, "size": size,
                             "image_tokens": image_tokens, "text_tokens": text_len, "kind": KIND,
                             "lora_rank": LORA_RANK, "lora_targets": LORA_TARGETS, "gradient_checkpointing": True,
                             "clip_range": CLIP_RANGE, "lr": LR, "transformer_dtype": str(tr.dtype),
                             "attention_backend": getattr(tr, "precise_fast_attention_backend", None),
                             "lora_params": sum(p.numel() for p in params),
                             "transformer_params": sum(p.numel() for p in tr.parameters()),
                             "flops_per_update": flops})

    per_update = None
    for name, fn, later in (("timestep_batched", batched, 1.5), ("per_timestep_loop", per_timestep, 0.0)):
        try:
            r = measure(fn, device, clock, reserve_s=later * (per_update or 0.0), est_s=per_update)
        except torch.cuda.OutOfMemoryError as exc:  # the batched update needs the most memory: say so
            optim.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            skipped.append(f"{name} (out of memory: {str(exc).splitlines()[0]})")
            continue
        if r is None:
            skipped.append(f"{name} (time cap)")
            continue
        seconds = r["median_ms"] / 1e3
        per_update = per_update or seconds
        r.update(seconds_per_update=round(seconds, 4), transitions_per_s=round(rows / seconds, 2),
                 mfu_pct=mfu_pct(flops, seconds, gpu), achieved_tflops=round(flops / seconds / 1e12, 2))
        results[name] = r
        report()
    if len(results) == 2:
        results["per_timestep_loop"]["speedup_of_batched"] = round(
            results["per_timestep_loop"]["median_ms"] / results["timestep_batched"]["median_ms"], 3)
    out = report()
    print(f"[gpu_train_step] " + ", ".join(f"{k} {v['seconds_per_update']} s/update" for k, v in results.items())
          + f"; {clock.used():.0f} s")
    return out


if __name__ == "__main__":
    main()
