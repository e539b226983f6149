"""HPS v2.1 on a tiny open_clip model saved like HPS_v2.1_compressed.pt ({'state_dict': ...})."""

import pytest
import torch
from PIL import Image

from precise_fast import model_paths
from precise_fast.rewards import build_scorer
from precise_fast.rewards.preprocess import to_uint8


@pytest.fixture(scope="module")
def direct(model_root, tiny_arch):
    """The HPSv2 recipe with plain open_clip: create, load checkpoint['state_dict'], eval."""
    import open_clip

    model, _, preprocess_val = open_clip.create_model_and_transforms(tiny_arch, pretrained=None)
    checkpoint = torch.load(model_root / model_paths.HPS_CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), preprocess_val, open_clip.get_tokenizer(tiny_arch)


def _direct_scores(direct, pixels, prompts):
    model, _, tokenizer = direct
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokenizer(prompts), normalize=True)
    return (img @ txt.T).diagonal()  # HPSv2: diag(image_features @ text_features.T)


def test_equals_direct_computation(model_root, tiny_arch, direct, images, prompts):
    scorer = build_scorer("hpsv2", model_root=model_root, arch=tiny_arch)
    out = scorer(images, prompts, None)
    # Same pixels through the reference model: exact up to float rounding.
    pixels = scorer.preprocess(images)
    torch.testing.assert_close(out.scores, _direct_scores(direct, pixels, prompts), atol=1e-5, rtol=1e-5)
    assert out.scores.abs().max() <= 1.0 + 1e-5 and out.scores.std() > 1e-3  # cosines, not constant
    # End to end against HPSv2's PIL path (8-bit image + open_clip preprocess_val).
    _, preprocess_val, _ = direct
    pil = torch.stack([preprocess_val(Image.fromarray(a)) for a in to_uint8(images).permute(0, 2, 3, 1).numpy()])
    torch.testing.assert_close(out.scores, _direct_scores(direct, pil, prompts), atol=2e-3, rtol=0)


def test_batched_equals_one_by_one(model_root, tiny_arch, images, prompts):
    scorer = build_scorer("hpsv2", model_root=model_root, arch=tiny_arch, batch_size=4)
    full = scorer(images, prompts, None).scores
    single = torch.cat([scorer(images[i : i + 1], prompts[i : i + 1], None).scores for i in range(len(prompts))])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)


def test_bfloat16(model_root, tiny_arch, images, prompts):
    ref = build_scorer("hpsv2", model_root=model_root, arch=tiny_arch)(images, prompts, None).scores
    scorer = build_scorer("hpsv2", model_root=model_root, arch=tiny_arch, dtype=torch.bfloat16)
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    out = scorer(images, prompts, None).scores
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.015


def test_checkpoint_must_match_the_architecture(model_root, tiny_arch, tmp_path):
    state = torch.load(model_root / model_paths.HPS_CHECKPOINT, weights_only=True)["state_dict"]
    state.pop("text_projection")
    bad = tmp_path / "hps.pt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(RuntimeError, match="text_projection"):
        build_scorer("hpsv2", model_root=model_root, arch=tiny_arch, checkpoint=str(bad))


def test_pickled_objects_are_refused(model_root, tiny_arch, tmp_path):
    # weights_only loading: a checkpoint carrying arbitrary Python objects is not unpickled.
    state = torch.load(model_root / model_paths.HPS_CHECKPOINT, weights_only=True)
    state["extra"] = Image.new("RGB", (2, 2))
    bad = tmp_path / "pickled.pt"
    torch.save(state, bad)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        build_scorer("hpsv2", model_root=model_root, arch=tiny_arch, checkpoint=str(bad))


def test_missing_checkpoint(tmp_path, tiny_arch):
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt"):
        build_scorer("hpsv2", model_root=tmp_path, arch=tiny_arch)
