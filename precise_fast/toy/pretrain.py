"""Pretrain the shapes world's tiny FLUX.2 Klein: the VAE, then the transformer by flow matching.

    python -m precise_fast.toy.pretrain --overwrite   # rebuilds the shipped precise_fast/toy/model

(38 min on one core of a shared 2-core AMD EPYC, 1 min of it the VAE; the shipped files
came from exactly this command with torch 2.14.1 on one thread. Base quality of the result:
toy GenEval score 0.253 on the 62 held-out prompts x 2 seeds, ODE, 10 steps.)

The architecture is the tiny builder's (:func:`precise_fast.models.tiny.build_tiny_components`:
``Flux2KleinPipeline``, a Qwen3 text encoder, ``AutoencoderKLFlux2``) with the sizes below; the
text encoder stays at its random initialisation (its hidden states still tell prompts apart,
and the transformer learns to read them).

1. VAE: L1 reconstruction of world images (shape pixels weighted up) plus a small KL term, on
   posterior samples (so the decoder tolerates latents near, not exactly on, the data).
2. Latent statistics: the VAE's BatchNorm running mean / variance are set to the per-channel
   statistics of the patchified posterior means, the normalisation the pipeline undoes
   before decoding (:func:`precise_fast.models.decode_latents`).
3. Transformer: rectified flow on the normalised packed latents, ``x_t = (1 - s) x_0 + s n``,
   target velocity ``n - x_0`` (FLUX's convention, the one the samplers integrate: shared/
   SAMPLERS.md), ``s`` half uniform and half logit-normal, conditioned on the pipeline's own
   prompt embeddings (:class:`precise_fast.models.PromptEncoder`), through the same forward
   the rollouts use (:func:`precise_fast.models.predict_velocity`). An EMA of the weights is
   what gets saved.
4. Scheduler: linear sigmas without FLUX.2's dynamic shift (:func:`toy_scheduler`).

Deterministic in ``--seed`` on one machine with the same thread count and torch version
(every random draw comes from seeded generators; nothing runs in parallel processes).
The whole world (all prompts) is the pretraining data; the RL prompt sets split it into
disjoint train / held-out prompts.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..models import (
    TINY_TEXT_LAYERS,
    LatentLayout,
    PromptEncoder,
    latent_ids,
    pack_latents,
    predict_velocity,
    text_ids,
)
from ..models.tiny import TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG, build_tiny_components, build_tiny_pipeline
from . import world

TOY_MAX_TEXT_LEN = 32  # the longest world prompt is 27 tokens with the chat template
MODEL_DIR = Path(__file__).resolve().parent / "model"
MARKER_NAME = "precise_fast_toy.json"

# The tiny builder's architecture, wider (4 heads x 32 = 128 channels) and with one more
# double-stream block. Measured on the held-out prompts (ODE, 2 seeds) after 2000 steps of
# this recipe: the 32-wide builder size drew blobs of mixed colours, these widths recognisable
# squares, circles and triangles (loss 0.22 against 0.31).
TOY_TRANSFORMER_CONFIG = {
    **TINY_TRANSFORMER_CONFIG,
    "num_layers": 2,
    "num_single_layers": 2,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "axes_dims_rope": (8, 8, 8, 8),  # sums to attention_head_dim
}

# Two levels: the VAE downsamples by 2, so 32x32 images give 16x16 latents and 8x8 = 64 tokens.
TOY_VAE_CONFIG = {
    **TINY_VAE_CONFIG,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (16, 16),
    "sample_size": world.IMAGE_SIZE,
    "mid_block_add_attention": False,
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    seed: int = 0
    num_images: int = 8192  # world samples drawn once and reused by both stages
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 3e-3
    kl_weight: float = 1e-3
    foreground_weight: float = 5.0
    steps: int = 6000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    threads: int = 1  # the shipped model was built with one thread (bitwise results depend on it)


def world_images(recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, H, W) in [-1, 1], prompt indices (N,)) over :func:`world.all_prompts`."""
    records = world.all_prompts()
    index = {r["prompt"]: i for i, r in enumerate(records)}
    images, prompts = [], []
    for i in range(recipe.num_images):
        image, prompt, _ = world.sample(recipe.seed * 1_000_003 + i, records)
        images.append(image)
        prompts.append(index[prompt])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.tensor(prompts)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr, leave=False)


def _lr_at(step: int, recipe_steps: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 10%: a short run ends on small, averaging steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe_steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))



def _set_lr(opt, base_lr: float, step: int, steps: int, warmup: int) -> None:
    for group in opt.param_groups:
        group["lr"] = base_lr * _lr_at(step, steps, warmup)

def train_vae(vae, images: torch.Tensor, recipe: Recipe, progress: bool = True) -> list[float]:
    gen = torch.Generator().manual_seed(recipe.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    vae.train()
    losses = []
    bar = _bar(recipe.vae_steps, "VAE", progress)
    for step in range(recipe.vae_steps):
        _set_lr(opt, recipe.vae_lr, step, recipe.vae_steps, recipe.warmup)
        idx = torch.randint(len(images), (recipe.vae_batch,), generator=gen)
        x = images[idx]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        # Shapes cover a small part of the canvas: weight their pixels up, or the colours
        # (what the reward checks) are learned last.
        weight = 1.0 + (recipe.foreground_weight - 1.0) * (x < 0.99).any(dim=1, keepdim=True).float()
        loss = ((recon - x).abs() * weight).mean() + recipe.kl_weight * dist.kl().mean() / z[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    vae.eval()
    return losses


@torch.no_grad()
def packed_latents(vae, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Patchified posterior means (N, 4C, h/2, w/2), before normalisation."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline

    parts = [Flux2KleinPipeline._patchify_latents(vae.encode(x).latent_dist.mode()) for x in images.split(chunk)]
    return torch.cat(parts)


@torch.no_grad()
def set_latent_statistics(vae, latents: torch.Tensor) -> None:
    """The BatchNorm running statistics the pipeline normalises packed latents with."""
    vae.bn.running_mean.copy_(latents.mean(dim=(0, 2, 3)))
    vae.bn.running_var.copy_(latents.var(dim=(0, 2, 3), unbiased=False))


def normalize(vae, latents: torch.Tensor) -> torch.Tensor:
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return (latents - mean) / std


def sample_sigmas(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Half uniform, half logit-normal(0, 1): every noise level seen, the middle ones most."""
    uniform = torch.rand(batch, generator=gen)
    logit = torch.sigmoid(torch.randn(batch, generator=gen))
    pick = torch.rand(batch, generator=gen) < 0.5
    return torch.where(pick, uniform, logit).clamp(1e-3, 1.0)


def train_transformer(transformer, x0: torch.Tensor, embeds: torch.Tensor, prompt_index: torch.Tensor,
                      recipe: Recipe, progress: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """Flow matching on packed normalised latents ``x0`` (N, S, C); returns (EMA copy, losses)."""
    gen = torch.Generator().manual_seed(recipe.seed + 23)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=recipe.lr, weight_decay=0.0)
    rows = int(math.isqrt(x0.shape[1]))  # square images: a rows x rows token grid
    layout = LatentLayout(height=world.IMAGE_SIZE, width=world.IMAGE_SIZE, channels=x0.shape[2], rows=rows, cols=rows)
    img_ids = latent_ids(layout, recipe.batch)
    txt_ids = text_ids(recipe.batch, embeds.shape[1])
    transformer.train()
    losses = []
    bar = _bar(recipe.steps, "transformer", progress)
    for step in range(recipe.steps):
        _set_lr(opt, recipe.lr, step, recipe.steps, recipe.warmup)
        idx = torch.randint(len(x0), (recipe.batch,), generator=gen)
        clean = x0[idx]
        noise = torch.randn(clean.shape, generator=gen)
        sigma = sample_sigmas(recipe.batch, gen)
        noisy = (1 - sigma.view(-1, 1, 1)) * clean + sigma.view(-1, 1, 1) * noise
        v = predict_velocity(transformer, noisy, sigma, embeds[prompt_index[idx]], txt_ids, img_ids)
        loss = ((v.float() - (noise - clean)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(recipe.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), transformer.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    bar.close()
    return ema.eval(), losses


def toy_scheduler(scheduler):
    """The world's schedule: linear sigmas, no dynamic shift.

    FLUX.2's shift rule (diffusers ``compute_empirical_mu``) was fit to 256..4300 tokens; at
    this world's 64 it gives mu = 1.9, i.e. sigmas 1, 0.98, 0.96, ... whose last step jumps
    from 0.43 to 0, which a tiny model can only fill with a blur. The transformer trains on
    uniform noise levels, so linear steps are the matching schedule. (Measured on 48 held-out
    prompts, ODE, 10 steps: mean toy reward 0.08 shifted, 0.22 linear.)
    """
    return type(scheduler).from_config(scheduler.config, use_dynamic_shifting=False, shift=1.0)


def pretrain(out_dir: str | Path, recipe: Recipe = Recipe(), *, overwrite: bool = False, progress: bool = True) -> Path:
    """Build, train and save the world's pipeline to ``out_dir``; returns the folder."""
    from diffusers import Flux2KleinPipeline

    torch.set_num_threads(recipe.threads)
    started = time.perf_counter()
    records = world.all_prompts()
    corpus = "\n".join(r["prompt"] for r in records) + "\n"
    components = build_tiny_components(recipe.seed, transformer_config=TOY_TRANSFORMER_CONFIG,
                                       vae_config=TOY_VAE_CONFIG, extra_corpus=corpus * 4)
    components["scheduler"] = toy_scheduler(components["scheduler"])
    pipe = Flux2KleinPipeline(is_distilled=False, **components)
    torch.manual_seed(recipe.seed)
    images, prompt_index = world_images(recipe)
    vae_losses = train_vae(pipe.vae, images, recipe, progress)
    latents = packed_latents(pipe.vae, images)
    set_latent_statistics(pipe.vae, latents)
    x0 = pack_latents(normalize(pipe.vae, latents))
    encoder = PromptEncoder(pipe, max_length=TOY_MAX_TEXT_LEN, layers=TINY_TEXT_LAYERS, dtype=torch.float32)
    embeds = torch.cat([encoder.encode_uncached([r["prompt"]]) for r in records])
    ema, losses = train_transformer(pipe.transformer, x0, embeds, prompt_index, recipe, progress)
    components["transformer"] = ema
    marker = {
        "world": "shapes",
        "recipe": dataclasses.asdict(recipe),
        "max_text_len": TOY_MAX_TEXT_LEN,
        "text_layers": list(TINY_TEXT_LAYERS),
        "image_size": world.IMAGE_SIZE,
        "final_vae_loss": float(np.mean(vae_losses[-50:])),
        "final_flow_loss": float(np.mean(losses[-200:])),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    out = build_tiny_pipeline(out_dir, recipe.seed, overwrite=overwrite, components=components, marker=marker)
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=1) + "\n")
    (out / "precise_fast_tiny.json").unlink(missing_ok=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(MODEL_DIR), help="output folder (default: the shipped model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    for field in dataclasses.fields(Recipe):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    out = pretrain(args.out, recipe, overwrite=args.overwrite)
    info = json.loads((out / MARKER_NAME).read_text())
    print(f"wrote {out} in {info['train_seconds']} s (VAE loss {info['final_vae_loss']:.4f}, "
          f"flow loss {info['final_flow_loss']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
