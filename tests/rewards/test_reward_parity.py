"""Rewards as the paper computes them, on tiny random models and small cases.

Encodes Tencent-Hunyuan/Precise:
- precise_sde/rewards/scorers/clip.py (ClipScorer): float [0, 1] images through torchvision
  ``Resize(shortest_edge)`` (bilinear, antialiased) + ``CenterCrop`` + ``Normalize``, no clamp,
  no 8-bit step; score ``logits_per_image.diagonal() / 30``;
- precise_sde/rewards/remote.py (geneval_score): images sent as Pillow JPEG at its default quality 75;
- precise_sde/rewards/builtin.py (jpeg_compressibility): ``-kB / 500`` of a quality-95 JPEG;
- precise_sde/rewards/servers/geneval/gen_eval.py (evaluate_reward): a failed relation appends
  0.0 and then 1.0.
"""

import base64
import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from precise_fast import model_paths
from precise_fast.rewards import build_scorer
from precise_fast.rewards.remote.geneval import GenEvalClient
from precise_fast.rewards.servers.geneval_logic import evaluate_partial

from .conftest import reply
from .test_remote_geneval import FAST, meta


def _paper_clipscore(folder, images, prompts):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    cfg = processor.image_processor.to_dict()
    tform = T.Compose([T.Resize(cfg["size"]["shortest_edge"]), T.CenterCrop(cfg["crop_size"]["height"]),
                       T.Normalize(mean=processor.image_processor.image_mean, std=processor.image_processor.image_std)])
    texts = processor(text=prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=tform(images), input_ids=texts["input_ids"], attention_mask=texts["attention_mask"])
    return out.logits_per_image.diagonal() / 30


def test_clipscore_resizes_like_the_paper(model_root, images, prompts):
    # Full-range images: the bilinear resize must not be clamped (the processor path clamps).
    want = _paper_clipscore(model_root / model_paths.CLIP_L14, images, prompts)
    got = build_scorer("clipscore", model_root=model_root)(images, prompts, None).scores
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    other = build_scorer("clipscore", model_root=model_root, resize="processor")(images, prompts, None).scores
    assert (other - want).abs().max() > 1e-5  # the switch is a different computation
    with pytest.raises(ValueError, match="resize"):
        build_scorer("clipscore", model_root=model_root, resize="nearest")


def test_geneval_images_go_as_pillow_default_jpeg(scripted_server):
    server = scripted_server(reply(200, {"results": [{"score": 1.0}]}))
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    GenEvalClient(server.url, **FAST)(images, ["x"], [meta()])
    body = server.requests[0]["json"]
    assert body["image_format"] == "jpeg"
    sent = base64.b64decode(body["images"][0])
    array = (images[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")  # the paper's call: Pillow's default quality
    assert sent == buffer.getvalue()


def test_jpeg_compressibility_is_minus_kb_over_500(images, prompts):
    arrays = (images * 255).round().clamp(0, 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1)
    want = []
    for a in arrays:
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="JPEG", quality=95)
        want.append(-buffer.tell() / 1000 / 500)
    got = build_scorer("jpeg_compressibility")(images, prompts, None).scores
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))


def _box(x1, y1, x2, y2):
    return (np.array([x1, y1, x2, y2, 0.99]), None)


def test_geneval_failed_relation_credit():
    metadata = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                               {"class": "cat", "count": 2, "position": ["left of", 0]}]}
    dog = [_box(60, 40, 80, 60)]
    cats_one_wrong = [_box(0, 40, 20, 60), _box(90, 40, 99, 60)]
    objects = {"dog": dog, "cat": cats_one_wrong}
    no_colors = lambda name, k: []  # noqa: E731
    # Paper: credits [1 (dog count), 1 (cat count), 0 (relation), 1 (appended after the loop)].
    strict, score, _ = evaluate_partial(objects, metadata, no_colors, 0.1)
    assert not strict and score == pytest.approx(3 / 4)
    assert evaluate_partial(objects, metadata, no_colors, 0.1, "zero")[1] == pytest.approx(2 / 3)
    # Relation holding: [1, 1, 1]; target missing: [0 (dog count), 1, 0] in both forms.
    good = {"dog": dog, "cat": [_box(0, 40, 20, 60), _box(5, 40, 25, 60)]}
    assert evaluate_partial(good, metadata, no_colors, 0.1)[1] == pytest.approx(1.0)
    for form in ("paper", "zero"):
        assert evaluate_partial({"cat": good["cat"]}, metadata, no_colors, 0.1, form)[1] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="failed_relation"):
        evaluate_partial(objects, metadata, no_colors, 0.1, "half")


def test_hps_amp_is_cuda_only(model_root, tiny_arch):
    # precise_sde/rewards/scorers/hpsv2.py: float32 weights, scored under torch.amp.autocast("cuda").
    assert not build_scorer("hpsv2", model_root=model_root, arch=tiny_arch).amp  # CPU: plain float32
    with pytest.raises(ValueError, match="CUDA"):
        build_scorer("hpsv2", model_root=model_root, arch=tiny_arch, amp=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hps_scores_under_fp16_autocast_on_cuda(model_root, tiny_arch, images, prompts):
    amp = build_scorer("hpsv2", model_root=model_root, arch=tiny_arch, device="cuda")
    assert amp.amp and amp.dtype == torch.float32
    plain = build_scorer("hpsv2", model_root=model_root, arch=tiny_arch, device="cuda", amp=False)
    a, p = amp(images.cuda(), prompts, None).scores, plain(images.cuda(), prompts, None).scores
    torch.testing.assert_close(a, p, atol=5e-3, rtol=0)  # fp16 matmuls: close to, not equal to, float32
