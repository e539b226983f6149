"""Images/s, achieved TFLOP/s and MFU of an epoch's rollout and update phases (epoch line, TensorBoard).

FLOPs are model FLOPs of the transformer (precise_fast.models.flops: matmuls and attention,
no recomputation, LoRA adapters included), summed over ranks:

- rollout: every transformer forward the engine ran (``RolloutEngine.forward_rows``: batch x
  hops of each plan, G2RPO's branches included), over the sampling time ``time/rollout_s``
  (which also holds the VAE decode: the phase's MFU, not the transformer's alone);
- update: per trained transition one forward and one backward (LoRA: frozen weights pass input
  gradients only), plus the reference forward when ``train.beta > 0``, over ``time/train_s``.

``images/s`` counts images sampled (each one the reward scored) and samples trained (each
with all its trained timesteps, every inner epoch; padding rows included: they cost the same),
over all ranks. MFU = FLOPs / seconds /
(ranks x the GPU's dense bf16 peak); it is absent where the peak is unknown (CPU, other GPUs).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...models.flops import peak_bf16_flops, transformer_backward_flops, transformer_forward_flops
from ..policy.distributed import all_reduce_


def device_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of ``device`` (None on CPU and on GPUs the table does not know)."""
    if device.type != "cuda":
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


def phase_metrics(phase: str, images: float, flops: float, seconds: float, world_size: int,
                  peak_flops: float | None) -> dict[str, float]:
    """``throughput/{phase}_images_per_s``, ``_tflops_per_s`` (per GPU) and, with a peak, ``_mfu`` (0..1)."""
    if seconds <= 0 or images <= 0:
        return {}
    per_gpu = flops / seconds / world_size
    out = {f"throughput/{phase}_images_per_s": images / seconds, f"throughput/{phase}_tflops_per_s": per_gpu / 1e12}
    if peak_flops:
        out[f"throughput/{phase}_mfu"] = per_gpu / peak_flops
    return out


def throughput_line(m: Mapping[str, float]) -> str:
    """The epoch line's fragment, e.g. ``rollout 12.5 img/s MFU 41.2%  update 3.1 img/s MFU 28.0%``."""
    parts = []
    for phase in ("rollout", "update"):
        rate = m.get(f"throughput/{phase}_images_per_s")
        if rate is None:
            continue
        mfu = m.get(f"throughput/{phase}_mfu")
        parts.append(f"{phase} {rate:.3g} img/s" + ("" if mfu is None else f" MFU {100 * mfu:.1f}%"))
    return "  ".join(parts)


class Throughput:
    """Counts one run's FLOPs per phase; :meth:`epoch_metrics` is collective (every rank calls it)."""

    def __init__(self, transformer_config, image_tokens: int, *, lora_rank: int, lora_targets: str, reference: bool,
                 inner_epochs: int, world_size: int, peak_flops: float | None):
        self.config = transformer_config
        self.image_tokens = int(image_tokens)
        self.lora = {"lora_rank": int(lora_rank), "lora_targets": lora_targets}
        self.reference = reference
        self.inner_epochs = int(inner_epochs)
        self.world_size = world_size
        self.peak_flops = peak_flops

    def rollout_flops(self, forward_rows: Mapping[int, int]) -> float:
        """FLOPs of ``forward_rows`` (text length -> transformer rows) of the LoRA-on policy."""
        return sum(transformer_forward_flops(self.config, self.image_tokens, text, rows, **self.lora)
                   for text, rows in forward_rows.items())

    def update_flops(self, transitions: int, text_tokens: int) -> float:
        """FLOPs of training ``transitions`` rows: forward + backward, and the reference forward if any."""
        if not transitions:
            return 0.0
        args = (self.config, self.image_tokens, text_tokens, transitions)
        flops = transformer_forward_flops(*args, **self.lora) + transformer_backward_flops(*args, **self.lora)
        return flops + (transformer_forward_flops(*args) if self.reference else 0.0)

    def epoch_metrics(self, rollout_rows: Mapping[int, int], rollout, data, train_s: float) -> dict[str, float]:
        """The epoch's metrics, summed over ranks (rank-local seconds: ranks step together).

        ``rollout_rows``: the engine's forward rows of this epoch's sampling; ``rollout``: its
        ``EpochRollouts`` (rewards, timings); ``data``: the trained ``Transitions`` or None.
        """
        images = next(iter(rollout.rewards.values())).numel()  # one reward per image scored
        samples = transitions = text_tokens = 0
        if data is not None:  # every inner epoch trains each row at each of its timesteps once
            samples = data.batch_size * self.inner_epochs
            transitions = samples * data.num_steps
            text_tokens = data.prompt_embeds.shape[1]
        local = [images, self.rollout_flops(rollout_rows), samples, self.update_flops(transitions, text_tokens)]
        images, flops, samples, update = all_reduce_(torch.tensor(local, dtype=torch.float64), "sum").tolist()
        out = phase_metrics("rollout", images, flops, rollout.timings["rollout_s"], self.world_size, self.peak_flops)
        out.update(phase_metrics("update", samples, update, train_s, self.world_size, self.peak_flops))
        return out
