"""Pretrain the shapes world's tiny FLUX.2 Klein: the VAE, then the transformer by flow matching.

    python -m precise_fast.toy.pretrain --overwrite   # rebuilds the shipped precise_fast/toy/model
    python -m precise_fast.toy.pretrain --overwrite --stage1 DIR   # stage 2 only, from DIR

(About 2 h 10 min on a 2-core machine: stage 1 123 min on a shared 2-core AMD EPYC, 2.5 of
them the VAE; stage 2 3 min 15 s on a 2-core AMD EPYC. The shipped files came from this recipe
with torch 2.14.1 on two threads, run as stage 1 alone (``--washout-steps 0``, kept in
bench/results/toy_stage1_20k) and then ``--stage1`` from that folder (stage 2 built 2026-12-04
on the AMD EPYC), which gives the one-shot command's bits on one machine
(tests/toy/test_pretrain.py). Across CPUs the last bits may differ: torch picks its SIMD
kernels per CPU. Base quality of the result: toy GenEval score 0.235 on the 62 held-out
prompts x 4 seeds, the main job's eval items (0.241 in its 2-rank eval); 0.414 after stage 1
alone. 37% of the base's eval images show nothing the detector finds (washed out), and the
rest score 0.373 (``quality.nothing_detected``).)

The architecture is the tiny builder's (:func:`precise_fast.models.tiny.build_tiny_components`:
``Flux2KleinPipeline``, a Qwen3 text encoder, ``AutoencoderKLFlux2``) with the sizes below; the
text encoder stays at its random initialisation (its hidden states still tell prompts apart,
and the transformer learns to read them).

1. VAE: L1 reconstruction of world images (shape pixels weighted up) plus a small KL term, on
   posterior samples (so the decoder tolerates latents near, not exactly on, the data).
2. Latent statistics: the VAE's BatchNorm running mean / variance are set to the per-channel
   statistics of the patchified posterior means, the normalisation the pipeline undoes
   before decoding (:func:`precise_fast.models.decode_latents`).
3. Transformer, stage 1: rectified flow on the normalised packed latents,
   ``x_t = (1 - s) x_0 + s n``, target velocity ``n - x_0`` (FLUX's convention, the one the
   samplers integrate: shared/SAMPLERS.md), ``s`` half uniform and half logit-normal,
   conditioned on the pipeline's own prompt embeddings (:class:`precise_fast.models.PromptEncoder`),
   through the same forward the rollouts use (:func:`precise_fast.models.predict_velocity`).
   An EMA of the weights is what stage 2 starts from.
4. Transformer, stage 2 ("washed-out photos"): the same loss, continued from stage 1's EMA at a
   lower lr, on the same images of which ``washout_fraction`` are washed out (objects blended
   ``washout_level`` of the way to the white background, too pale for the detector). Why:
   measured with ``bench/gradient_snr.py`` (docs/SAMPLER_STUDY.md), a model that only draws
   vivid shapes gives the GRPO gradient too little signal to learn within the main job's
   budget: its failures (wrong counts, hybrid shapes, swapped colours) each need their own
   prompt-specific change. Washed-out samples are a failure *by choice* that every prompt
   shares, as real pretraining sets mix good and poor photos; GRPO on GenEval learns to
   avoid it within a few epochs, as it learns to avoid blur or clutter at scale.
5. Scheduler: linear sigmas without FLUX.2's dynamic shift (:func:`toy_scheduler`).

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
from ..rewards.shapes import world

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
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_lr: float = 3e-3
    kl_weight: float = 1e-3
    foreground_weight: float = 5.0
    steps: int = 20000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    threads: int = 2  # the shipped model was built with two threads (bitwise results depend on it)
    # Stage 2 (0 steps: none): flow matching continues from stage 1's EMA weights on the same
    # images, of which a fraction ``washout_fraction`` is washed out (objects blended
    # ``washout_level`` of the way to the background, too pale for the detector): the world
    # model then fails by *choice*, one choice shared by every prompt. See the module docstring.
    # Half the images at a low lr (measured 2026-12-04, docs/SAMPLER_STUDY.md): against 0.3 at
    # 3e-4, the one-rank stand-ins of the main job rose +0.158 +- 0.024 over 5 seeds instead
    # of +0.103 +- 0.036; stage 2 costs the drawn images' composition less at a low lr.
    washout_steps: int = 1000
    washout_fraction: float = 0.5
    washout_level: float = 0.6
    washout_lr: float = 3e-5


STAGE2_FIELDS = ("washout_steps", "washout_fraction", "washout_level", "washout_lr")


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


def washed_out(image: np.ndarray, fraction: float) -> np.ndarray:
    """``image`` with every non-background pixel moved ``fraction`` of the way to the background."""
    background = np.array(world.BACKGROUND, dtype=np.float64)
    out = image.astype(np.float64)
    objects = (image != background.astype(np.uint8)).any(axis=-1)
    out[objects] = (1 - fraction) * out[objects] + fraction * background
    return np.rint(out).astype(np.uint8)


def washed_image_tensor(image: torch.Tensor, fraction: float) -> torch.Tensor:
    """:func:`washed_out` of one (3, H, W) image in [-1, 1], in the same range."""
    pixels = ((image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return torch.from_numpy(washed_out(pixels, fraction)).permute(2, 0, 1).float() / 127.5 - 1.0


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
                      recipe: Recipe, progress: bool = True, *, x0_pale: torch.Tensor | None = None
                      ) -> tuple[torch.nn.Module, list[float]]:
    """Flow matching on packed normalised latents ``x0`` (N, S, C); returns (EMA copy, losses).

    Stage 1 without ``x0_pale``; stage 2 (``recipe.washout_*``) with it: each drawn image is
    replaced by its washed-out latents with probability ``recipe.washout_fraction``.
    """
    stage2 = x0_pale is not None
    steps, lr = (recipe.washout_steps, recipe.washout_lr) if stage2 else (recipe.steps, recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed + (29 if stage2 else 23))
    transformer.requires_grad_(True)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.0)
    rows = int(math.isqrt(x0.shape[1]))  # square images: a rows x rows token grid
    layout = LatentLayout(height=world.IMAGE_SIZE, width=world.IMAGE_SIZE, channels=x0.shape[2], rows=rows, cols=rows)
    img_ids = latent_ids(layout, recipe.batch)
    txt_ids = text_ids(recipe.batch, embeds.shape[1])
    transformer.train()
    losses = []
    bar = _bar(steps, "transformer (washout)" if stage2 else "transformer", progress)
    for step in range(steps):
        _set_lr(opt, lr, step, steps, recipe.warmup)
        idx = torch.randint(len(x0), (recipe.batch,), generator=gen)
        clean = x0[idx]
        if stage2:
            pale = torch.rand(recipe.batch, generator=gen) < recipe.washout_fraction
            clean = torch.where(pale.view(-1, 1, 1), x0_pale[idx], clean)
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


def _stage1_recipe(recipe: Recipe) -> dict:
    return {k: v for k, v in dataclasses.asdict(recipe).items() if k not in STAGE2_FIELDS}


def fresh_components(recipe: Recipe) -> dict:
    """The untrained world pipeline's components (the tiny builder at the world's sizes)."""
    records = world.all_prompts()
    corpus = "\n".join(r["prompt"] for r in records) + "\n"
    components = build_tiny_components(recipe.seed, transformer_config=TOY_TRANSFORMER_CONFIG,
                                       vae_config=TOY_VAE_CONFIG, extra_corpus=corpus * 4)
    components["scheduler"] = toy_scheduler(components["scheduler"])
    return components


def load_stage1(folder: str | Path, recipe: Recipe) -> tuple[dict, dict]:
    """(components, marker) of a stage-1 build of ``recipe`` saved in ``folder``; refuses another recipe's.

    Fresh components with the trained VAE and transformer weights loaded into them (rather
    than ``from_pretrained``, which records the folder and the tokenizer's state in the
    configs), so the saved result is file for file the one-shot build's.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    marker_path = folder / MARKER_NAME
    if not marker_path.is_file():
        raise FileNotFoundError(f"{folder} is not a shapes-world build (no {MARKER_NAME})")
    marker = json.loads(marker_path.read_text())
    if marker.get("stage2") is not None or _stage1_recipe(Recipe(**marker["recipe"])) != _stage1_recipe(recipe):
        raise ValueError(f"{folder} is not stage 1 of this recipe: its marker says {marker['recipe']}")
    components = fresh_components(recipe)
    for name in ("transformer", "vae"):
        components[name].load_state_dict(load_file(str(folder / name / "diffusion_pytorch_model.safetensors")))
    return components, marker


def train_stage1(pipe, images: torch.Tensor, prompt_index: torch.Tensor, embeds: torch.Tensor, recipe: Recipe,
                 progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Stage 1 on ``pipe`` (fresh components): the VAE, its latent statistics, then the
    transformer on vivid images only; returns (the transformer's EMA, the build marker)."""
    vae_losses = train_vae(pipe.vae, images, recipe, progress)
    latents = packed_latents(pipe.vae, images)
    set_latent_statistics(pipe.vae, latents)
    x0 = pack_latents(normalize(pipe.vae, latents))
    ema, losses = train_transformer(pipe.transformer, x0, embeds, prompt_index, recipe, progress)
    marker = {
        "world": "shapes",
        "recipe": dataclasses.asdict(recipe),
        "max_text_len": TOY_MAX_TEXT_LEN,
        "text_layers": list(TINY_TEXT_LAYERS),
        "image_size": world.IMAGE_SIZE,
        "final_vae_loss": float(np.mean(vae_losses[-50:])),
        "final_flow_loss": float(np.mean(losses[-200:])),
        "stage2": None,
    }
    return ema, marker


def pretrain(out_dir: str | Path, recipe: Recipe = Recipe(), *, overwrite: bool = False, progress: bool = True,
             stage1: str | Path | None = None) -> Path:
    """Build, train and save the world's pipeline to ``out_dir``; returns the folder.

    ``stage1``: a folder holding stage 1 of this same recipe (built with ``washout_steps=0``);
    its weights are loaded instead of retrained, which gives the same bits as one full run
    (saved float32 weights round-trip exactly; every stage seeds its own generators).
    """
    from diffusers import Flux2KleinPipeline

    torch.set_num_threads(recipe.threads)
    started = time.perf_counter()
    records = world.all_prompts()
    components, marker = (fresh_components(recipe), None) if stage1 is None else load_stage1(stage1, recipe)
    pipe = Flux2KleinPipeline(is_distilled=False, **components)
    torch.manual_seed(recipe.seed)
    images, prompt_index = world_images(recipe)
    # The text encoder never trains and draws no random numbers: its embeddings are the same
    # before and after stage 1.
    encoder = PromptEncoder(pipe, max_length=TOY_MAX_TEXT_LEN, layers=TINY_TEXT_LAYERS, dtype=torch.float32)
    embeds = torch.cat([encoder.encode_uncached([r["prompt"]]) for r in records])
    if marker is None:
        components["transformer"], marker = train_stage1(pipe, images, prompt_index, embeds, recipe, progress)
    else:
        marker = {**marker, "recipe": dataclasses.asdict(recipe)}
        started -= marker["train_seconds"]
    if recipe.washout_steps > 0:
        # The VAE is in eval mode after stage 1, so these are stage 1's latents, bit for bit.
        x0 = pack_latents(normalize(pipe.vae, packed_latents(pipe.vae, images)))
        pale = torch.stack([washed_image_tensor(im, recipe.washout_level) for im in images])
        x0_pale = pack_latents(normalize(pipe.vae, packed_latents(pipe.vae, pale)))
        components["transformer"], losses = train_transformer(components["transformer"], x0, embeds, prompt_index,
                                                              recipe, progress, x0_pale=x0_pale)
        marker["stage2"] = {"final_flow_loss": float(np.mean(losses[-200:]))}
    marker["train_seconds"] = round(time.perf_counter() - started, 1)
    out = build_tiny_pipeline(out_dir, recipe.seed, overwrite=overwrite, components=components, marker=marker)
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=1) + "\n")
    (out / "precise_fast_tiny.json").unlink(missing_ok=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(MODEL_DIR), help="output folder (default: the shipped model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--stage1", default=None, help="a folder with stage 1 of this recipe (--washout-steps 0): only stage 2 runs")
    for field in dataclasses.fields(Recipe):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    out = pretrain(args.out, recipe, overwrite=args.overwrite, stage1=args.stage1)
    info = json.loads((out / MARKER_NAME).read_text())
    print(f"wrote {out} in {info['train_seconds']} s (VAE loss {info['final_vae_loss']:.4f}, "
          f"flow loss {info['final_flow_loss']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
