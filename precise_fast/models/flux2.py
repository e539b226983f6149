"""FLUX.2 Klein latent layout, the transformer forward, and VAE decoding, without loops over rows.

These are the pipeline's conventions (diffusers ``Flux2KleinPipeline``), restated batched:

- A latent image is the VAE latent (``latent_channels`` x H/8 x W/8) patchified 2x2, i.e.
  ``in_channels = 4 * latent_channels`` channels on an ``(H/16) x (W/16)`` grid, and packed
  row-major into ``(B, rows * cols, in_channels)`` tokens. Initial noise is drawn in the
  unpacked ``(B, in_channels, rows, cols)`` shape, as ``prepare_latents`` does.
- Image token ids are ``(t=0, h, w, l=0)`` row-major; text token ids ``(0, 0, 0, l)``.
- The transformer's timestep input is the scheduler timestep / 1000 (= sigma up to
  rounding); the model multiplies it by 1000 again internally.
- Decoding: de-normalise with the VAE's BatchNorm running statistics
  (``x * sqrt(var + eps) + mean``), un-patchify, ``vae.decode``, map [-1, 1] to [0, 1].

:func:`predict_velocity` is THE forward of the policy: the rollout engine and the trainer
both call it, so re-scoring a rollout reproduces its log-probs exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentLayout:
    """Geometry of packed latents for images of ``height`` x ``width`` pixels."""

    height: int
    width: int
    channels: int  # packed channels = transformer in_channels = 4 * VAE latent channels
    rows: int  # packed token grid: height / (vae_scale_factor * 2)
    cols: int

    @property
    def seq_len(self) -> int:
        return self.rows * self.cols

    def packed_shape(self, batch: int) -> tuple[int, int, int]:
        return (batch, self.seq_len, self.channels)

    def noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape the pipeline draws initial noise in (before packing)."""
        return (batch, self.channels, self.rows, self.cols)


def latent_layout(pipeline, height: int, width: int) -> LatentLayout:
    """The layout for ``height`` x ``width`` images; both must be multiples of ``vae_scale_factor * 2``.

    (The stock pipeline silently rounds other sizes down; a trainer asking for 500x500 and
    scoring 496x496 images is a bug, so here it is an error.)
    """
    multiple = pipeline.vae_scale_factor * 2
    height, width = int(height), int(width)
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise ValueError(f"height and width must be positive multiples of {multiple}, got {height}x{width}")
    return LatentLayout(
        height=height,
        width=width,
        channels=int(pipeline.transformer.config.in_channels),
        rows=height // multiple,
        cols=width // multiple,
    )


def latent_ids(layout: LatentLayout, batch: int, device=None) -> torch.Tensor:
    """Position ids ``(0, h, w, 0)`` of the image tokens, row-major, shape (B, S, 4) int64."""
    h = torch.arange(layout.rows, device=device).repeat_interleave(layout.cols)
    w = torch.arange(layout.cols, device=device).repeat(layout.rows)
    ids = torch.zeros(layout.seq_len, 4, dtype=torch.int64, device=device)
    ids[:, 1], ids[:, 2] = h, w
    return ids.unsqueeze(0).expand(batch, -1, -1)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, rows, cols) -> (B, rows * cols, C), row-major tokens."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).permute(0, 2, 1)


def unpack_latents(packed: torch.Tensor, layout: LatentLayout) -> torch.Tensor:
    """(B, rows * cols, C) -> (B, C, rows, cols); the inverse of :func:`pack_latents`."""
    b = packed.shape[0]
    return packed.reshape(b, layout.rows, layout.cols, layout.channels).permute(0, 3, 1, 2)


def unpatchify_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w): undo FLUX.2's 2x2 patchify before the VAE."""
    b, c4, h, w = latents.shape
    x = latents.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c4 // 4, h * 2, w * 2)


def predict_velocity(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    latent_ids: torch.Tensor,
    *,
    attention_kwargs: dict | None = None,
) -> torch.Tensor:
    """The transformer's velocity ``v`` (B, S, C) for packed ``latents`` (B, S, C).

    ``timestep`` is the transformer input per row, shape (B,): scheduler timestep / 1000
    (what ``Rollout.timesteps`` stores). Inputs are cast to the transformer's dtype; the
    result is in that dtype. No guidance embedding (the recipe runs without CFG). Sampling
    and training both use this function, so their forward paths are identical.
    """
    dtype = transformer.dtype
    out = transformer(
        hidden_states=latents.to(dtype),
        timestep=timestep,
        guidance=None,
        encoder_hidden_states=prompt_embeds.to(dtype),
        txt_ids=text_ids,
        img_ids=latent_ids,
        joint_attention_kwargs=attention_kwargs,
        return_dict=False,
    )[0]
    return out


def decode_latents(pipeline, packed: torch.Tensor, layout: LatentLayout, *, chunk: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) float32 in [0, 1] from packed latents (B, S, C).

    De-normalises with the VAE BatchNorm statistics in float32, then decodes in the VAE's
    dtype, ``chunk`` rows at a time when given (bounds activation memory at 512x512).
    """
    vae = pipeline.vae
    x = unpack_latents(packed.to(torch.float32), layout)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(x.device, torch.float32)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1).to(x.device, torch.float32) + vae.config.batch_norm_eps)
    x = unpatchify_latents(x * std + mean).to(vae.dtype)
    parts = x.split(chunk) if chunk else (x,)
    images = torch.cat([vae.decode(p, return_dict=False)[0] for p in parts])
    return (images.to(torch.float32) * 0.5 + 0.5).clamp(0.0, 1.0)
