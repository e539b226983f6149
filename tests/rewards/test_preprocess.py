"""On-device CLIP preprocessing against the libraries' own processors."""

import numpy as np
import pytest
import torch
from PIL import Image

from precise_fast.rewards.preprocess import ClipPreprocess, center_crop, to_uint8


@pytest.fixture(scope="module")
def hf_processor():
    from transformers import CLIPImageProcessor

    # The real CLIP-H / ViT-L/14 processor settings (shortest edge 224, crop 224, bicubic).
    return CLIPImageProcessor()


@pytest.mark.parametrize("shape", [(2, 3, 256, 256), (2, 3, 300, 410), (1, 3, 410, 300), (1, 3, 200, 180)])
def test_matches_hf_processor_on_float_input(hf_processor, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    ours = ClipPreprocess.from_hf_image_processor(hf_processor)(x)
    # The processor on the same float tensors, without 8-bit rescaling. It does not clamp the
    # bicubic overshoot, so clamp ours off for this exact comparison.
    ours_unclamped = ClipPreprocess(
        **{**ClipPreprocess.from_hf_image_processor(hf_processor).__dict__, "clamp": False}
    )(x)
    ref = hf_processor(images=list(x), do_rescale=False, return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (shape[0], 3, 224, 224)
    torch.testing.assert_close(ours_unclamped, ref, atol=1e-4, rtol=0)
    # Clamping only touches the bicubic overshoot outside [0, 1] (what 8-bit pipelines clip).
    mean = torch.tensor(hf_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(hf_processor.image_std).view(1, 3, 1, 1)
    raw = ours_unclamped * std + mean
    inside = (raw >= 0) & (raw <= 1)
    torch.testing.assert_close(ours[inside], ours_unclamped[inside])
    torch.testing.assert_close(ours * std + mean, raw.clamp(0, 1), atol=1e-5, rtol=0)


def test_close_to_hf_processor_on_8bit_images(hf_processor):
    """What PIL-based reward code feeds the processor: 8-bit images. Difference: quantisation."""
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.interpolate(torch.rand(3, 3, 40, 50, generator=g), size=(320, 400), mode="bilinear")
    ours = ClipPreprocess.from_hf_image_processor(hf_processor)(x)
    pil = [Image.fromarray(a) for a in to_uint8(x).permute(0, 2, 3, 1).numpy()]
    ref = hf_processor(images=pil, return_tensors="pt")["pixel_values"]
    diff = (ours - ref).abs()
    # <= ~1.5/255 before normalisation, divided by the smallest CLIP std (0.2613).
    assert diff.max() < 1.5 / 255 / 0.2613 + 1e-4
    assert diff.mean() < 0.5 / 255 / 0.2613


def test_close_to_open_clip_eval_transform():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=224)
    transform = image_transform_v2(cfg, is_train=False)
    g = torch.Generator().manual_seed(2)
    # 401 wide -> 299 after the resize: the crop offset 37.5 rounds to 38 in torchvision.
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 30, 40, generator=g), size=(300, 401), mode="bilinear")
    ours = ClipPreprocess.from_open_clip_cfg(cfg.__dict__)(x)
    ref = torch.stack([transform(Image.fromarray(a)) for a in to_uint8(x).permute(0, 2, 3, 1).numpy()])
    assert ours.shape == ref.shape
    diff = (ours - ref).abs()
    # 8-bit quantisation (and PIL's resampling arithmetic): under 2 levels anywhere.
    # (A bilinear resize or a crop one pixel off is several levels away.)
    assert diff.max() < 2 / 255 / 0.2613
    assert diff.mean() < 0.5 / 255 / 0.2613


def test_crop_offsets_follow_each_library():
    x = torch.arange(7 * 7, dtype=torch.float32).view(1, 1, 7, 7)
    # transformers: int((7 - 4) / 2) = 1; torchvision: int(round(1.5)) = 2.
    assert center_crop(x, (4, 4), "floor")[0, 0, 0, 0].item() == 1 * 7 + 1
    assert center_crop(x, (4, 4), "round")[0, 0, 0, 0].item() == 2 * 7 + 2
    # Smaller than the crop: zero padding, like torchvision.
    padded = center_crop(torch.ones(1, 1, 2, 2), (4, 4))
    assert padded.shape[-2:] == (4, 4) and padded.sum().item() == 4


def test_output_size_keeps_aspect_like_torchvision():
    pre = ClipPreprocess(shortest_edge=224)
    assert pre.output_size(512, 512) == (224, 224)
    assert pre.output_size(300, 410) == (224, int(224 * 410 / 300))
    assert pre.output_size(410, 300) == (int(224 * 410 / 300), 224)


def test_runs_on_input_device_and_dtype():
    pre = ClipPreprocess(shortest_edge=32, crop=(32, 32))
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    out = pre(x)
    assert out.dtype == torch.float32 and out.device == x.device and out.shape == (2, 3, 32, 32)
    if torch.cuda.is_available():
        out_cuda = pre(x.cuda())
        assert out_cuda.is_cuda
        torch.testing.assert_close(out_cuda.cpu(), out, atol=1e-4, rtol=0)


def test_to_uint8_rounds_like_ddpo():
    x = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 1.0, 1.2, -0.1])
    assert to_uint8(x).tolist() == list(np.round(np.clip(x.numpy() * 255, 0, 255)).astype(np.uint8))
