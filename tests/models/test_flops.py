"""precise_fast.models.flops against torch's own FlopCounterMode on the diffusers transformer.

The counts must agree exactly (tolerance 0): both count 2*m*n*k per matmul, and under the
math SDPA backend attention runs as the two bmms ``QK^T`` and ``PV`` the formula counts, with
a backward of four bmms (no recompute), which is what ``transformer_backward_flops`` counts.
"""

import pytest
import torch
from diffusers import Flux2Transformer2DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from precise_fast.models import apply_lora, predict_velocity
from precise_fast.models.flops import (
    KLEIN_4B_TRANSFORMER_CONFIG,
    peak_bf16_flops,
    peak_hbm_bytes_per_s,
    transformer_backward_flops,
    transformer_forward_flops,
)
from precise_fast.models.tiny import TINY_TRANSFORMER_CONFIG


def _counted(model, batch, image_tokens, text_tokens, *, backward=True):
    """(forward, backward) FLOPs torch's FlopCounterMode counts for one forward and ``out.sum().backward()``."""
    cfg = model.config
    with torch.device(model.device):
        x = torch.randn(batch, image_tokens, cfg.in_channels)
        text = torch.randn(batch, text_tokens, cfg.joint_attention_dim)
        img_ids = torch.zeros(image_tokens, 4, dtype=torch.long)
        txt_ids = torch.zeros(text_tokens, 4, dtype=torch.long)
        timestep = torch.rand(batch)
    img_ids[:, 1] = torch.arange(image_tokens)
    txt_ids[:, 3] = torch.arange(text_tokens)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            out = predict_velocity(model, x, timestep, text, txt_ids, img_ids)
        if not backward:
            return fwd.get_total_flops(), None
        with FlopCounterMode(display=False) as bwd:
            out.float().sum().backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


@pytest.mark.parametrize("double,single", [(2, 2), (1, 3)])
def test_full_finetune_counts_match_torch_flop_counter(double, single):
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**dict(TINY_TRANSFORMER_CONFIG, num_layers=double, num_single_layers=single))
    batch, image_tokens, text_tokens = 3, 12, 5  # odd sizes: every term is distinguishable
    forward, backward = _counted(model, batch, image_tokens, text_tokens)
    assert transformer_forward_flops(model.config, image_tokens, text_tokens, batch) == forward
    assert transformer_backward_flops(model.config, image_tokens, text_tokens, batch) == backward
    # Full fine-tuning: every weight's dW plus dX where needed, i.e. just under 2x the forward.
    assert 1.9 * forward < backward < 2 * forward


@pytest.mark.parametrize("targets", ["paper", "paper_plus_single_out"])
def test_lora_counts_match_torch_flop_counter(targets):
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**dict(TINY_TRANSFORMER_CONFIG, num_layers=2, num_single_layers=2))
    apply_lora(model, rank=4, targets=targets)  # freezes the base weights
    batch, image_tokens, text_tokens = 2, 9, 7
    forward, backward = _counted(model, batch, image_tokens, text_tokens)
    kw = {"lora_rank": 4, "lora_targets": targets}
    assert transformer_forward_flops(model.config, image_tokens, text_tokens, batch, **kw) == forward
    assert transformer_backward_flops(model.config, image_tokens, text_tokens, batch, **kw) == backward
    # Frozen base weights still pass input gradients back: well above zero, well below full.
    assert 0.8 * forward < backward < transformer_backward_flops(model.config, image_tokens, text_tokens, batch)


def test_real_klein_4b_size_matches_torch_flop_counter_on_meta_tensors():
    """The 4B transformer (3.88e9 parameters) built on the meta device: real shapes, no memory, exact count."""
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**KLEIN_4B_TRANSFORMER_CONFIG)
    assert sum(p.numel() for p in model.parameters()) == 3_875_544_576
    batch, image_tokens, text_tokens = 2, 1024, 128  # 512x512 images, the recipe's 128 text tokens
    forward, _ = _counted(model, batch, image_tokens, text_tokens, backward=False)
    assert transformer_forward_flops(KLEIN_4B_TRANSFORMER_CONFIG, image_tokens, text_tokens, batch) == forward


def test_forward_flops_scale_linearly_with_batch_and_reject_missing_keys():
    one = transformer_forward_flops(KLEIN_4B_TRANSFORMER_CONFIG, 1024, 128, 1)
    assert transformer_forward_flops(KLEIN_4B_TRANSFORMER_CONFIG, 1024, 128, 16) == 16 * one
    config = dict(KLEIN_4B_TRANSFORMER_CONFIG)
    del config["mlp_ratio"]
    with pytest.raises(KeyError, match="mlp_ratio"):
        transformer_forward_flops(config, 1024, 128, 1)
    with pytest.raises(ValueError, match="LoRA target set"):
        transformer_backward_flops(KLEIN_4B_TRANSFORMER_CONFIG, 1024, 128, 1, lora_rank=16, lora_targets="all")


@pytest.mark.parametrize(
    "name,flops,hbm",
    [
        ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12),  # SXM5, the lent machine
        ("NVIDIA H200", 989e12, 4.8e12),
        ("NVIDIA H100 PCIe", 756e12, 2.0e12),
        ("NVIDIA H100 NVL", 835e12, 3.9e12),
        ("NVIDIA A100-SXM4-80GB", 312e12, 2.039e12),
        ("cpu", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_device_peaks(name, flops, hbm):
    assert peak_bf16_flops(name) == flops
    assert peak_hbm_bytes_per_s(name) == hbm


@pytest.mark.gpu
def test_the_gpu_this_runs_on_has_known_peaks():
    """The lent H100 / H200 must match a row (its MFU would silently vanish from the report otherwise)."""
    name = torch.cuda.get_device_name()
    assert peak_bf16_flops(name) is not None and peak_hbm_bytes_per_s(name) is not None, f"no peaks for {name!r}"
