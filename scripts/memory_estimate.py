"""Per-GPU memory of the FLUX.2 Klein 4B recipe's update phase, estimated without a GPU.

    python scripts/memory_estimate.py [--gpus 8] [--rows 2] [--markdown] [--json OUT]

Where each number comes from:

- parameters: counted on the meta device from the real configs (diffusers'
  ``Flux2Transformer2DModel`` with :data:`precise_fast.models.flops.KLEIN_4B_TRANSFORMER_CONFIG`,
  transformers' ``Qwen3ForCausalLM`` with Qwen3-4B's config, diffusers' ``AutoencoderKLFlux2``
  defaults), the LoRA by our own ``apply_lora`` with the recipe's rank and targets;
- states: the recipe keeps float32 weights (``model.dtype: float32`` under bf16 autocast),
  so a trained parameter costs 4 (weight) + 4 (gradient) + 8 (AdamW moments) + 4 (the EMA)
  bytes; ZeRO-1 partitions the moments over the GPUs, ZeRO-2 also the gradients, ZeRO-3 also
  the weights (frozen ones too: DeepSpeed partitions every parameter of the engine's module)
  and the EMA (train/policy/ema.py keeps a partitioned EMA under ZeRO-3);
- activations: measured, not modelled. One double-stream and one single-stream block at the
  4B widths (3072 wide, 24 heads x 128, MLP 9216) run forward under bf16 autocast on the CPU
  while ``torch.autograd.graph.saved_tensors_hooks`` records every tensor autograd keeps for
  the backward (parameters excluded, shared storages counted once), at two token counts; the
  bytes are linear in the tokens (SDPA keeps no L x L matrix), so two points give the per-token
  cost and a third checks it. With ``gradient_checkpointing`` (the recipe) a block keeps only
  its inputs (measured the same way) and one block at a time is recomputed in full during the
  backward.

What it leaves out (so the real peak is higher): the CUDA context and allocator slack
(~1-3 GB), the reward models (e.g. PickScore's ViT-H-14, ~1B parameters), the rollout
phase's VAE decode, and under ZeRO-3 the whole transformer, which the rollouts gather
(train/policy/zero.py: one gather per rollout). An estimate until scripts/gpu_check.sh
measures the real peak on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.utils.checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precise_fast.models.flops import KLEIN_4B_TRANSFORMER_CONFIG  # noqa: E402

GIB = 1024**3
# Qwen3-4B (the text encoder of FLUX.2 Klein 4B; Qwen/Qwen3-4B config.json).
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
TEXT_TOKENS = 128  # the recipe's model.max_text_len
PIXELS_PER_TOKEN = 16  # the VAE downsamples by 8, the transformer packs 2 x 2 latents per token
STATE_BYTES = {"weight": 4, "grad": 4, "adam": 8, "ema": 4}  # float32 masters (model.dtype: float32)


def count(module: torch.nn.Module, *, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def parameter_counts(lora_rank: int, lora_targets: str) -> dict[str, int]:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from precise_fast.models import apply_lora

    with init_empty_weights():
        transformer = Flux2Transformer2DModel(**KLEIN_4B_TRANSFORMER_CONFIG)
        text = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))
        vae = AutoencoderKLFlux2()
    text.tie_weights()  # Qwen3-4B's lm_head is its embedding (tie_word_embeddings); inside the context it does not tie
    out = {"transformer": count(transformer), "text_encoder": count(text), "vae": count(vae)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*meta parameter.*")
        apply_lora(transformer, rank=lora_rank, alpha=float(lora_rank), targets=lora_targets)
    out["lora"] = count(transformer, trainable=True)
    return out


def _saved_bytes(run) -> int:
    """Bytes autograd saves for the backward while ``run()`` runs forward (no parameters; one count per storage)."""
    seen: dict[int, int] = {}
    params: set[int] = set()

    def pack(t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter) or t.untyped_storage().data_ptr() in params:
            return t
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    def measure():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return run(params)

    measure()
    return sum(seen.values())


def block_activation_bytes(kind: str, finetune: str, checkpointing: bool, image_tokens: int, text_tokens: int,
                           lora_rank: int, lora_targets: str) -> int:
    """Saved bytes of one row through one block of the 4B widths (``kind``: double or single)."""
    from diffusers import Flux2Transformer2DModel

    from precise_fast.models import apply_lora

    config = dict(KLEIN_4B_TRANSFORMER_CONFIG, num_layers=1 if kind == "double" else 0,
                  num_single_layers=1 if kind == "single" else 0)
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**config)
    if finetune == "lora" and kind != "none":
        apply_lora(model, rank=lora_rank, alpha=float(lora_rank), targets=lora_targets)
    elif finetune == "lora":
        model.requires_grad_(False)  # no block: nothing of a LoRA run needs a gradient here
    if checkpointing:
        # diffusers checkpoints each block non-reentrantly, which keeps the block's inputs alive
        # in the recompute closure, out of reach of the hooks; the reentrant form keeps the same
        # inputs through save_for_backward, where the hooks count them.
        model.enable_gradient_checkpointing(
            lambda block, *args: torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=True))
    model.train()
    n, t, c = image_tokens, text_tokens, config["in_channels"]
    hidden = torch.randn(1, n, c)
    context = torch.randn(1, t, config["joint_attention_dim"])
    img_ids = torch.zeros(n, 4)
    img_ids[:, 1] = torch.arange(n) // 32
    img_ids[:, 2] = torch.arange(n) % 32
    txt_ids = torch.zeros(t, 4)
    txt_ids[:, 3] = torch.arange(t)

    def run(params: set[int]):
        params.update(p.untyped_storage().data_ptr() for p in model.parameters())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(hidden_states=hidden, encoder_hidden_states=context, timestep=torch.tensor([0.5]),
                         img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]

    return _saved_bytes(run)


def activation_model(finetune: str, lora_rank: int, lora_targets: str) -> dict:
    """One row's saved bytes as ``fixed + per_token * tokens`` for the embedders and output
    (``none``: a model without blocks), one double and one single block (each minus ``none``),
    all without checkpointing; and, with checkpointing, what a block keeps (its inputs).
    ``fixed`` is mostly the bf16 copies of the weights that autocast saves for the backward:
    once per forward, whatever the rows. Fitted on two token counts, checked on a third (1%)."""
    points = [(64, 32), (128, 64), (192, 64)]

    def fit(own: list[int], kind: str) -> dict:
        (n0, t0), (n1, t1), (n2, t2) = points
        slope = (own[1] - own[0]) / ((n1 + t1) - (n0 + t0))
        fixed = own[0] - slope * (n0 + t0)
        if abs(fixed + slope * (n2 + t2) - own[2]) > 0.01 * own[2] + 4096:
            raise RuntimeError(f"{kind}: saved bytes not linear in the tokens: {own} at {points}")
        return {"fixed": fixed, "per_token": slope}

    out = {"full": {}, "checkpointed": {}}
    # A block keeps the same inputs under checkpointing whatever is trained; measured with every
    # weight trained (a LoRA block's inputs need no gradient, and the reentrant form that the
    # hooks can see would then keep nothing).
    for mode, train, ckpt in (("full", finetune, False), ("checkpointed", "full", True)):
        measured = {kind: [block_activation_bytes(kind, train, ckpt, n, t, lora_rank, lora_targets) for n, t in points]
                    for kind in ("none", "double", "single")}
        out[mode]["none"] = fit(measured["none"], "none")
        for kind in ("double", "single"):
            out[mode][kind] = fit([m - z for m, z in zip(measured[kind], measured["none"])], kind)
    if finetune == "lora":
        out["checkpointed"]["none"] = out["full"]["none"]  # frozen embedders: the same (nothing) either way
    return out


def estimate(counts: dict, acts: dict, *, finetune: str, zero: int, pixels: int, rows: int, gpus: int) -> dict:
    """GiB per GPU, by part, for the update phase (gradient checkpointing on, as in the recipe)."""
    tokens = (pixels // PIXELS_PER_TOKEN) ** 2 + TEXT_TOKENS
    trained = counts["lora"] if finetune == "lora" else counts["transformer"]
    frozen = counts["transformer"] if finetune == "lora" else 0  # the LoRA wraps the frozen base
    split = lambda n, stage: n / gpus if zero >= stage else n  # noqa: E731
    parts = {
        "transformer weights": split((frozen + trained) * STATE_BYTES["weight"], 3),
        "gradients": split(trained * STATE_BYTES["grad"], 2),
        "AdamW moments": split(trained * STATE_BYTES["adam"], 1),
        "EMA": split(trained * STATE_BYTES["ema"], 3),
        "text encoder (bf16)": counts["text_encoder"] * 2,
        "VAE (float32)": counts["vae"] * 4,
    }
    blocks = {"double": KLEIN_4B_TRANSFORMER_CONFIG["num_layers"], "single": KLEIN_4B_TRANSFORMER_CONFIG["num_single_layers"]}
    full, ckpt = acts["full"], acts["checkpointed"]
    rows_tokens = rows * tokens
    # Kept through the forward: the embedders' and output's activations, and every block's inputs ...
    kept = full["none"]["fixed"] + full["none"]["per_token"] * rows_tokens
    kept += sum(n * (ckpt[k]["fixed"] + ckpt[k]["per_token"] * rows_tokens) for k, n in blocks.items())
    # ... plus, in the backward, one block recomputed with everything it saves.
    recompute = max(full[k]["fixed"] + full[k]["per_token"] * rows_tokens for k in blocks)
    parts["activations"] = kept + recompute
    gib = {k: v / GIB for k, v in parts.items()}
    gib["total"] = sum(gib.values())
    return {"tokens": tokens, "parts_gib": gib}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=8, help="GPUs sharing the ZeRO partitions (default 8, the paper's)")
    p.add_argument("--rows", type=int, default=2, help="rows per forward of the update (default 2: the recipe's "
                   "sampler.batch_size at train.timesteps_per_forward 1)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-targets", default="paper")
    p.add_argument("--json", help="write everything measured here")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = p.parse_args(argv)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    counts = parameter_counts(args.lora_rank, args.lora_targets)
    acts = {f: activation_model(f, args.lora_rank, args.lora_targets) for f in ("lora", "full")}
    rows = []
    for finetune in ("lora", "full"):
        for pixels in (512, 1024):
            for zero in (0, 2, 3):
                e = estimate(counts, acts[finetune], finetune=finetune, zero=zero, pixels=pixels, rows=args.rows,
                             gpus=args.gpus)
                rows.append({"finetune": finetune, "pixels": pixels, "zero": zero, **e})
    if args.json:
        Path(args.json).write_text(json.dumps({"parameters": counts, "activations_bytes": acts, "rows": rows,
                                               "gpus": args.gpus, "rows_per_forward": args.rows}, indent=1))
    names = list(rows[0]["parts_gib"])
    if args.markdown:
        print("| fine-tune | px | ZeRO | " + " | ".join(names) + " |")
        print("|" + "---|" * (3 + len(names)))
        for r in rows:
            print(f"| {r['finetune']} | {r['pixels']} | {r['zero']} | "
                  + " | ".join(f"{r['parts_gib'][n]:.1f}" for n in names) + " |")
    else:
        print(json.dumps({"parameters": counts}, indent=1))
        for r in rows:
            print(r["finetune"], r["pixels"], f"ZeRO-{r['zero']}", f"{r['parts_gib']['total']:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
