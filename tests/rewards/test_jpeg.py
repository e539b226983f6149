"""JPEG (in)compressibility, as in DDPO: size in kB of a quality-95 JPEG; compressibility is
-kB / 500 as the paper computes and logs it (Tencent-Hunyuan/Precise precise_sde/rewards/builtin.py)."""

import io

import numpy as np
import torch
from PIL import Image

from precise_fast.rewards import build_reward, build_scorer


def _ddpo_sizes(images):
    arrays = (images * 255).round().clamp(0, 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1)
    sizes = []
    for a in arrays:
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


def test_matches_ddpo_definition(images, prompts):
    sizes = _ddpo_sizes(images)
    inc = build_scorer("jpeg_incompressibility")(images, prompts, None)
    com = build_scorer("jpeg_compressibility")(images, prompts, None)
    torch.testing.assert_close(inc.scores, sizes)
    torch.testing.assert_close(com.scores, -sizes / 500)
    assert inc.valid.all() and com.valid.all()


def test_smooth_images_compress_better():
    flat = torch.full((1, 3, 64, 64), 0.5)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    scorer = build_scorer("jpeg_compressibility")
    assert scorer(flat, ["x"], None).scores.item() > scorer(noise, ["x"], None).scores.item()


def test_quality_and_scale_options(images, prompts):
    hi = build_scorer("jpeg_incompressibility", quality=95)(images, prompts, None).scores
    lo = build_scorer("jpeg_incompressibility", quality=20)(images, prompts, None).scores
    assert (lo < hi).all()
    ddpo = build_scorer("jpeg_compressibility", scale=1.0)(images, prompts, None).scores  # DDPO's unscaled kB
    torch.testing.assert_close(ddpo, -hi)


def test_inside_multireward(images, prompts):
    result = build_reward("jpeg_compressibility")(images, prompts)
    assert result.valid.all()
    torch.testing.assert_close(result.combined, -_ddpo_sizes(images) / 500)
    assert np.isfinite(result.combined.numpy()).all()
