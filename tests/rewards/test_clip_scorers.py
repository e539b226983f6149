"""PickScore, CLIPScore and aesthetic on tiny random CLIP models saved in the transformers
format and loaded through the production loader (build_reward / build_scorer)."""

import shutil

import pytest
import torch

from precise_fast import model_paths
from precise_fast.model_paths import WeightsNotFoundError
from precise_fast.rewards import build_reward, build_scorer


@pytest.fixture
def mid_images(images):
    # Keep pixel values away from 0 and 1 so the bicubic resize does not overshoot: then the
    # processor's unclamped output and ours agree exactly and scores can be compared at 1e-5.
    return 0.2 + 0.6 * images


def _direct_logits(folder, processor_folder, images, prompts):
    """The plain transformers computation: processor + CLIPModel.forward."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(processor_folder, local_files_only=True)
    pixels = processor(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]
    text = processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    return out.logits_per_image, model, pixels


def test_pickscore_equals_direct_computation(model_root, mid_images, prompts):
    scorer = build_scorer("pickscore", model_root=model_root)
    out = scorer(mid_images, prompts, None)
    logits, _, _ = _direct_logits(
        model_root / model_paths.PICKSCORE_MODEL, model_root / model_paths.PICKSCORE_PROCESSOR, mid_images, prompts
    )
    raw = logits.diagonal()  # logit_scale.exp() * cos(image_i, text_i)
    torch.testing.assert_close(out.extras["pickscore_raw"], raw, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.scores, raw / 26, atol=1e-5, rtol=1e-5)
    assert out.valid.all() and out.scores.dtype == torch.float32
    # Not degenerate: the tiny model separates images and prompts.
    assert out.scores.std() > 1e-3


def test_clipscore_conventions(model_root, mid_images, prompts):
    clip = model_root / model_paths.CLIP_L14
    logits, model, _ = _direct_logits(clip, clip, mid_images, prompts)
    cos = logits.diagonal() / model.logit_scale.exp()
    expected = {
        "flow_grpo": logits.diagonal() / 30,  # Flow-GRPO: logits_per_image.diagonal() / 30
        "hessel": 2.5 * cos.clamp_min(0),  # Hessel et al. 2021: 2.5 * max(cos, 0)
        "cosine": cos,
    }
    for convention, want in expected.items():
        # resize="processor": compared with the processor here; the paper's default resize is
        # checked against torchvision in tests/rewards/test_reward_parity.py.
        out = build_scorer("clipscore", model_root=model_root, convention=convention, resize="processor")(
            mid_images, prompts, None)
        torch.testing.assert_close(out.scores, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.extras["clipscore_cosine"], cos, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="convention"):
        build_scorer("clipscore", model_root=model_root, convention="nope")


def test_aesthetic_equals_mlp_on_normalised_embedding(model_root, mid_images, prompts):
    clip = model_root / model_paths.CLIP_L14
    _, model, pixels = _direct_logits(clip, clip, mid_images, prompts)
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=pixels).pooler_output
    emb = emb / emb.norm(dim=-1, keepdim=True)
    state = torch.load(model_root / model_paths.AESTHETIC_HEAD, weights_only=True)
    h = emb
    for index in (0, 2, 4, 6, 7):  # LAION head: linear layers only (dropout is inert at eval)
        h = h @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    out = build_scorer("aesthetic", model_root=model_root)(mid_images, prompts, None)
    torch.testing.assert_close(out.scores, h.squeeze(1), atol=1e-5, rtol=1e-5)


def test_linear_aesthetic_head_is_accepted(model_root, tmp_path, mid_images, prompts):
    head = torch.nn.Linear(16, 1)
    torch.save(head.state_dict(), tmp_path / "linear.pth")
    out = build_scorer("aesthetic", model_root=model_root, head=str(tmp_path / "linear.pth"))(mid_images, prompts, None)
    clip = model_root / model_paths.CLIP_L14
    _, model, pixels = _direct_logits(clip, clip, mid_images, prompts)
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=pixels).pooler_output
        want = head(emb / emb.norm(dim=-1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(out.scores, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "aesthetic"])
def test_batched_equals_one_by_one(model_root, images, prompts, name):
    scorer = build_scorer(name, model_root=model_root, batch_size=4)  # 6 images -> chunks 4 + 2
    full = scorer(images, prompts, None).scores
    single = torch.cat([scorer(images[i : i + 1], prompts[i : i + 1], None).scores for i in range(len(prompts))])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)
    # And the order of the batch does not matter.
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    shuffled = scorer(images[perm], [prompts[i] for i in perm], None).scores
    torch.testing.assert_close(shuffled, full[perm], atol=1e-5, rtol=1e-5)


def test_bfloat16_model_returns_float32_close_to_float32(model_root, images, prompts):
    ref = build_scorer("pickscore", model_root=model_root)(images, prompts, None)
    low = build_scorer("pickscore", model_root=model_root, dtype=torch.bfloat16)
    assert next(low.backbone.model.parameters()).dtype == torch.bfloat16
    out = low(images, prompts, None)
    assert out.scores.dtype == torch.float32 and out.scores.device == images.device
    # bf16 keeps ~3 significant digits: raw scores (100 * cos, here |.| < 25) within 1.5.
    assert (out.extras["pickscore_raw"] - ref.extras["pickscore_raw"]).abs().max() < 1.5
    # The temperature stays float32 (a bf16 logit_scale would be exp(4.59375) = 98.9, not 100).
    assert low.backbone.logit_scale.dtype == torch.float32
    torch.testing.assert_close(low.backbone.logit_scale, torch.tensor(100.0), atol=1e-3, rtol=0)
    # Inputs in another float dtype are accepted.
    torch.testing.assert_close(
        build_scorer("pickscore", model_root=model_root)(images.double(), prompts, None).scores, ref.scores
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_match_cpu(model_root, images, prompts):
    cpu = build_scorer("pickscore", model_root=model_root)(images, prompts, None)
    gpu = build_scorer("pickscore", model_root=model_root, device="cuda")(images.cuda(), prompts, None)
    assert gpu.scores.is_cuda
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-3, rtol=1e-3)


def test_clip_l14_is_loaded_once_for_clipscore_and_aesthetic(model_root, images, prompts):
    reward = build_reward({"clipscore": 1.0, "aesthetic": 0.5}, model_root=model_root)
    assert reward.components["clipscore"].backbone is reward.components["aesthetic"].backbone
    result = reward(images, prompts, None)
    assert set(result.per_component) == {"clipscore", "aesthetic"}


def test_model_root_from_environment(model_root, monkeypatch, images, prompts):
    monkeypatch.setenv(model_paths.MODEL_ROOT_ENV, str(model_root))
    assert model_paths.resolve_model_root()[0] == model_root
    assert build_scorer("clipscore")(images, prompts, None).valid.all()


def test_missing_checkpoints_name_the_file(tmp_path, model_root):
    with pytest.raises(WeightsNotFoundError) as err:
        build_scorer("pickscore", model_root=tmp_path)
    assert str(tmp_path / "pickscore" / "processor") in str(err.value) and "downloaded" in str(err.value)
    # A model folder without weights: the message says which file is missing.
    broken = tmp_path / "broken"
    shutil.copytree(model_root / model_paths.CLIP_L14, broken / model_paths.CLIP_L14)
    (broken / model_paths.CLIP_L14 / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        build_scorer("clipscore", model_root=broken)
    # The aesthetic head is looked up before any model is loaded.
    with pytest.raises(WeightsNotFoundError, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        build_scorer("aesthetic", model_root=broken)


def test_unknown_options_and_names_are_rejected(model_root):
    with pytest.raises(TypeError, match="batchsize"):
        build_scorer("pickscore", model_root=model_root, batchsize=2)
    with pytest.raises(KeyError, match="available"):
        build_scorer("pikscore", model_root=model_root)
