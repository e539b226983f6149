"""The plain rollout loop the engine is checked and benchmarked against.

It walks ``Flux2KleinPipeline.__call__`` line for line with the pipeline's own components
and helpers (``encode_prompt``, ``prepare_latents``, ``retrieve_timesteps`` on the
pipeline's scheduler config, the transformer call with ``timestep / 1000``,
``_unpack_latents_with_ids``, the BatchNorm de-normalisation, ``_unpatchify_latents``,
``vae.decode``, ``image_processor.postprocess``), replacing only ``scheduler.step`` with the
specification's ``reference_step`` - optionally one row at a time, as the research
trainers do (Flow-GRPO / DanceGRPO-style per-sample step and log-prob loops).

Noise: the same Philox streams as the engine (``philox_normal(seeds, 1 + i, shape)``), so
"same initial latents and same noise" is meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..sde import noise_std, philox_normal, reference_step
from ..sde.kinds import ODE, STOCHASTIC


@torch.no_grad()
def plain_rollout(
    pipeline,
    prompt_embeds: torch.Tensor,
    initial_latents: torch.Tensor,
    seeds: torch.Tensor,
    *,
    kinds: Sequence[str],
    eta: float,
    height: int,
    width: int,
    per_row: bool = False,
    decode: bool = True,
) -> dict[str, torch.Tensor]:
    """Roll out with the pipeline's components and :func:`reference_step`.

    ``initial_latents`` is (B, C, rows, cols) as the pipeline's ``latents=``; ``kinds`` has
    one sampler kind per step (its length is the step count). Returns ``latents`` (B, N+1,
    S, C), ``means`` (B, N, S, C), ``log_probs`` (B, N) and ``images`` (B, 3, H, W) in [0, 1].
    """
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

    num_steps = len(kinds)
    device = pipeline._execution_device
    batch = prompt_embeds.shape[0]
    prompt_embeds, text_ids = pipeline.encode_prompt(
        prompt=None, prompt_embeds=prompt_embeds, device=device, max_sequence_length=prompt_embeds.shape[1]
    )
    latents, latent_ids = pipeline.prepare_latents(
        batch_size=batch,
        num_latents_channels=pipeline.transformer.config.in_channels // 4,
        height=height,
        width=width,
        dtype=prompt_embeds.dtype,
        device=device,
        generator=None,
        latents=initial_latents,
    )
    scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    mu = compute_empirical_mu(image_seq_len=latents.shape[1], num_steps=num_steps)
    timesteps, _ = retrieve_timesteps(
        scheduler, num_steps, device, sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu
    )
    sigmas = scheduler.sigmas
    stds = {k: noise_std(sigmas, k, eta if k != ODE else 0.0) for k in set(kinds)}

    trajectory, means, log_probs = [latents], [], []
    for i, t in enumerate(timesteps):
        timestep = t.expand(batch).to(latents.dtype)
        noise_pred = pipeline.transformer(
            hidden_states=latents.to(pipeline.transformer.dtype),
            timestep=timestep / 1000,
            guidance=None,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=latent_ids,
            return_dict=False,
        )[0]
        noise_pred = noise_pred[:, : latents.size(1)]
        kind = kinds[i]
        noise = philox_normal(seeds, 1 + i, latents.shape) if kind in STOCHASTIC else None
        step_args = (sigmas[i], sigmas[i + 1], stds[kind][i])
        if per_row:
            outs = [
                reference_step(
                    latents[r : r + 1], noise_pred[r : r + 1], *step_args, kind=kind,
                    noise=None if noise is None else noise[r : r + 1],
                )
                for r in range(batch)
            ]
            prev = torch.cat([o.prev_sample for o in outs])
            log_prob = torch.cat([o.log_prob for o in outs])
            mean = torch.cat([o.mean for o in outs])
        else:
            prev, log_prob, mean = reference_step(latents, noise_pred, *step_args, kind=kind, noise=noise)
        latents = prev
        trajectory.append(latents)
        means.append(mean)
        log_probs.append(log_prob)

    out = dict(
        latents=torch.stack(trajectory, dim=1),
        means=torch.stack(means, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
    )
    if decode:
        vsf = pipeline.vae_scale_factor
        latent_height, latent_width = 2 * (int(height) // (vsf * 2)), 2 * (int(width) // (vsf * 2))
        x = pipeline._unpack_latents_with_ids(latents, latent_ids, latent_height // 2, latent_width // 2)
        bn_mean = pipeline.vae.bn.running_mean.view(1, -1, 1, 1).to(x.device, x.dtype)
        bn_std = torch.sqrt(pipeline.vae.bn.running_var.view(1, -1, 1, 1) + pipeline.vae.config.batch_norm_eps).to(
            x.device, x.dtype
        )
        x = pipeline._unpatchify_latents(x * bn_std + bn_mean)
        image = pipeline.vae.decode(x.to(pipeline.vae.dtype), return_dict=False)[0]
        out["images"] = pipeline.image_processor.postprocess(image, output_type="pt")
    return out
