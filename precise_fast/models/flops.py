"""Model FLOPs of the FLUX.2 Klein transformer, and the datasheet peaks of the GPUs we run on.

The one place that counts them: the trainer's MFU, the GPU benchmarks and the report all call
these functions, so a "TFLOP/s" or "MFU" number means the same thing everywhere.

**What is counted** (model FLOPs, the PaLM convention): ``2*m*n*k`` for every matmul that the
diffusers ``Flux2Transformer2DModel`` forward runs, plus attention ``4*B*H*L^2*d`` (the
``QK^T`` and ``PV`` products, ``L = image + text tokens``, ``d`` = head dim). Elementwise work
(norms, SiLU/SwiGLU, RoPE, softmax, modulation arithmetic) is left out: it is under 1% of the
total at the real size and a GPU runs it on CUDA cores, not against the tensor-core peak.
Recomputation is never counted (no activation checkpointing, no flash-attention backward
recompute of ``QK^T``), so MFU = model FLOPs / time / peak does not reward recomputing.

With ``D = heads * head_dim``, ``M = int(D * mlp_ratio)``, ``N`` image tokens, ``T`` text
tokens, ``L = N + T`` and batch ``B``, one forward is::

    2B * [ t_ch*D + D*D                       timestep embedder (linear_1, linear_2), once per row
         + 15 D*D                             modulations: double img 6D, double txt 6D, single 3D
         + 2 D*D ]                            norm_out's AdaLN linear
  + 2B * [ N*c_in*D + T*j*D + N*D*p^2*c_out ] x_embedder, context_embedder, proj_out
  + (n_double + n_single) * ( 2B*L*(4 D^2 + 3 M D) + 4B*H*L^2*d )

(a double block's q, k, v, out over both streams and its two SwiGLU MLPs ``D -> 2M -> D`` cost
exactly what a single block's fused ``D -> 3D + 2M`` and ``D + M -> D`` projections cost). The
guidance embedder is not counted: FLUX.2 Klein has none and :func:`predict_velocity` passes
``guidance=None``. torch's ``FlopCounterMode`` reproduces this count exactly (tests/models/test_flops.py).

**Backward** (:func:`transformer_backward_flops`): every matmul ``Y = X W`` costs one matmul
of its forward size for the gradient of each operand that needs one (``dX = dY W^T`` when
``X`` depends on a trained parameter, ``dW = X^T dY`` when ``W`` is trained); attention costs
``2x`` its forward (``dV``, ``dP``, ``dQ``, ``dK``; no recompute). Full fine-tuning is thus
~2x the forward. With a LoRA the frozen base weights get no ``dW`` but still pass ``dX`` back
to every adapter below them, so the backward is ~1x the forward plus the adapters' own cost;
layers whose input no trained parameter influences (the embedders, modulations, and the first
block's q/k/v projections) need no backward at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_REQUIRED_KEYS = (
    "num_layers",
    "num_single_layers",
    "attention_head_dim",
    "num_attention_heads",
    "in_channels",
    "joint_attention_dim",
    "timestep_guidance_channels",
    "mlp_ratio",
)

# FLUX.2 Klein 4B's transformer config (black-forest-labs/FLUX.2-klein-4B transformer/config.json).
KLEIN_4B_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 128,
    "out_channels": None,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}

# Dense (no sparsity) bf16 tensor-core peak FLOP/s and HBM bytes/s from NVIDIA's datasheets,
# matched in order against torch.cuda.get_device_name(): the specific names come first
# ("NVIDIA H100 80GB HBM3" is the SXM5 part; "H100 PCIe" and "H100 NVL" are slower parts).
DEVICE_PEAKS = (
    ("H200 NVL", 835e12, 4.8e12),
    ("H200", 989e12, 4.8e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989e12, 3.35e12),
    ("A100-SXM4-80GB", 312e12, 2.039e12),
    ("A100", 312e12, 1.555e12),
    ("L40S", 362e12, 0.864e12),
)


def _device_peaks(device_name: str | None) -> tuple[float, float] | None:
    if not device_name:
        return None
    return next(((flops, hbm) for key, flops, hbm in DEVICE_PEAKS if key in device_name), None)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU named like ``torch.cuda.get_device_name()``; None if unknown (CPU)."""
    peaks = _device_peaks(device_name)
    return None if peaks is None else peaks[0]


def peak_hbm_bytes_per_s(device_name: str | None) -> float | None:
    """Datasheet HBM bandwidth in bytes/s of a GPU named like ``torch.cuda.get_device_name()``; None if unknown."""
    peaks = _device_peaks(device_name)
    return None if peaks is None else peaks[1]


@dataclass(frozen=True)
class _Linear:
    """One ``rows x fan_in @ fan_in x fan_out`` matmul of the forward."""

    rows: int
    fan_in: int
    fan_out: int
    input_needs_grad_full: bool  # its input depends on a trained weight under full fine-tuning
    input_needs_grad_lora: bool  # ... under a LoRA on the paper's targets (the base frozen)
    lora_target: str | None = None  # None, "paper" (both target sets) or "plus" (paper_plus_single_out only)

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.fan_in * self.fan_out


def _config_value(config, key):
    if isinstance(config, Mapping):
        if key not in config:
            raise KeyError(f"transformer config lacks {key!r}")
        return config[key]
    return getattr(config, key)


def _shape(config) -> dict:
    shape = {key: _config_value(config, key) for key in _REQUIRED_KEYS}
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    shape["patch_size"] = get("patch_size", 1) or 1
    shape["out_channels"] = get("out_channels", None) or shape["in_channels"]
    return shape


def _linears(config, image_tokens: int, text_tokens: int, batch: int) -> list[_Linear]:
    s = _shape(config)
    dim = s["num_attention_heads"] * s["attention_head_dim"]
    mlp = int(dim * s["mlp_ratio"])
    n, t, b = int(image_tokens), int(text_tokens), int(batch)
    img, txt, joint = b * n, b * t, b * (n + t)
    lin = []
    # Per row (timestep embedding, modulations, norm_out's AdaLN): frozen under LoRA, so no backward there.
    lin.append(_Linear(b, s["timestep_guidance_channels"], dim, False, False))
    lin.append(_Linear(b, dim, dim, True, False))
    lin += [_Linear(b, dim, 6 * dim, True, False)] * 2 + [_Linear(b, dim, 3 * dim, True, False)]
    lin.append(_Linear(b, dim, 2 * dim, True, False))  # norm_out.linear
    # Embedders: their inputs are data.
    lin.append(_Linear(img, s["in_channels"], dim, False, False))
    lin.append(_Linear(txt, s["joint_attention_dim"], dim, False, False))
    for block in range(s["num_layers"]):
        # Block 0's q/k/v see only the embedders' (frozen) output under LoRA.
        below = block > 0
        for rows in (img, txt):
            lin += [_Linear(rows, dim, dim, True, below, "paper")] * 3  # to_q/k/v, add_q/k/v_proj
            lin.append(_Linear(rows, dim, dim, True, True, "paper"))  # to_out.0, to_add_out
            lin.append(_Linear(rows, dim, 2 * mlp, True, True, "paper"))  # ff(_context).linear_in
            lin.append(_Linear(rows, mlp, dim, True, True, "paper"))  # ff(_context).linear_out
    below = s["num_layers"] > 0
    for _ in range(s["num_single_layers"]):
        lin.append(_Linear(joint, dim, 3 * dim + 2 * mlp, True, below, "paper"))  # to_qkv_mlp_proj
        lin.append(_Linear(joint, dim + mlp, dim, True, True, "plus"))  # attn.to_out
        below = True
    lin.append(_Linear(img, dim, s["patch_size"] ** 2 * s["out_channels"], True, True))  # proj_out
    return lin


def _attention_flops(config, image_tokens: int, text_tokens: int, batch: int) -> float:
    s = _shape(config)
    length = int(image_tokens) + int(text_tokens)
    blocks = s["num_layers"] + s["num_single_layers"]
    return blocks * 4.0 * batch * s["num_attention_heads"] * length**2 * s["attention_head_dim"]


def _adapted(linear: _Linear, lora_targets: str) -> bool:
    if lora_targets not in ("paper", "paper_plus_single_out"):
        raise ValueError(f"unknown LoRA target set {lora_targets!r}")
    return linear.lora_target == "paper" or (linear.lora_target == "plus" and lora_targets == "paper_plus_single_out")


def _lora_forward(linear: _Linear, rank: int) -> tuple[float, float]:
    """FLOPs of an adapter's ``x A^T`` and ``(x A^T) B^T``."""
    return 2.0 * linear.rows * linear.fan_in * rank, 2.0 * linear.rows * rank * linear.fan_out


def transformer_forward_flops(
    config, image_tokens: int, text_tokens: int, batch: int, *, lora_rank: int = 0, lora_targets: str = "paper"
) -> float:
    """Model FLOPs of one forward of ``Flux2Transformer2DModel`` (formula in the module docstring).

    ``config`` is the transformer's config (``transformer.config``, or a dict with its keys).
    ``lora_rank > 0`` adds the adapters' two thin matmuls on each target of ``lora_targets``
    (rank 16 on the 4B model: about 1% more).
    """
    total = sum(linear.flops for linear in _linears(config, image_tokens, text_tokens, batch))
    if lora_rank:
        lin = _linears(config, image_tokens, text_tokens, batch)
        total += sum(sum(_lora_forward(x, lora_rank)) for x in lin if _adapted(x, lora_targets))
    return total + _attention_flops(config, image_tokens, text_tokens, batch)


def transformer_backward_flops(
    config,
    image_tokens: int,
    text_tokens: int,
    batch: int,
    *,
    lora_rank: int = 0,
    lora_targets: str = "paper",
) -> float:
    """Model FLOPs of one backward of the transformer's output (what the module docstring counts).

    ``lora_rank == 0``: full fine-tuning, every weight trained (``dW`` for all, ``dX`` where the
    input depends on a trained weight). ``lora_rank > 0``: the base frozen, a LoRA of that rank on
    ``lora_targets``: ``dX`` through the base wherever an adapter lies below, plus each adapter's
    ``dA``, ``dB`` and the input gradients it passes on.
    """
    lin = _linears(config, image_tokens, text_tokens, batch)
    attention = 2.0 * _attention_flops(config, image_tokens, text_tokens, batch)
    if not lora_rank:
        return attention + sum(x.flops * (1 + x.input_needs_grad_full) for x in lin)
    total = attention + sum(x.flops for x in lin if x.input_needs_grad_lora)
    for x in lin:
        if _adapted(x, lora_targets):
            down, up = _lora_forward(x, lora_rank)
            # dB and dA always; d(x A^T) always (A needs it); dX through A only if x needs it.
            total += up + down + up + (down if x.input_needs_grad_lora else 0.0)
    return total
