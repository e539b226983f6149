"""The shapes world's pretrained tiny FLUX.2 Klein: the shipped files match a short rebuild's
format, the build is deterministic in its seed, and the shipped model's base quality leaves
headroom for RL (issue 11: GenEval-style score between 0.2 and 0.6 on the held-out prompts).

Architecture: the tiny builder's (diffusers ``Flux2KleinPipeline``, Qwen3 text encoder,
``AutoencoderKLFlux2``), the format FLUX.2 Klein ships in (black-forest-labs/FLUX.2-klein-base-4B).
"""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from precise_fast.models import check_pipeline_folder, load_pipeline
from precise_fast.rewards.shapes.reward import ToyGenEvalReward
from precise_fast.toy import pretrain
from precise_fast.toy.quality import nothing_detected, world_score

SHORT = pretrain.Recipe(num_images=64, vae_steps=2, steps=2, warmup=1, threads=1, washout_steps=2, washout_fraction=0.5)
WEIGHTS = ("text_encoder/model.safetensors", "transformer/diffusion_pytorch_model.safetensors",
           "vae/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def short_build(tmp_path_factory):
    return pretrain.pretrain(tmp_path_factory.mktemp("toy") / "model", SHORT, progress=False)


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# Which library release wrote a config file, not what the model is: the shipped model was
# written by transformers 5.23 / diffusers 0.42.1, a rebuild under another release (the GPU
# machine's transformers 5.17) stamps its own.
WRITER_STAMPS = ("transformers_version", "_diffusers_version")


def _config(path):
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in WRITER_STAMPS}


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_shipped_model_matches_a_short_rebuilds_format(short_build):
    shipped = pretrain.MODEL_DIR
    check_pipeline_folder(shipped)
    assert _files(shipped) == _files(short_build)
    for name in WEIGHTS:
        a, b = _tensors(shipped / name), _tensors(short_build / name)
        assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}, name
    for name in ("transformer/config.json", "vae/config.json", "text_encoder/config.json", "model_index.json",
                 "scheduler/scheduler_config.json"):
        assert _config(shipped / name) == _config(short_build / name), name
    assert (shipped / "tokenizer/tokenizer.json").read_text() == (short_build / "tokenizer/tokenizer.json").read_text()
    marker = json.loads((shipped / pretrain.MARKER_NAME).read_text())
    assert marker["recipe"] == json.loads(json.dumps(vars(pretrain.Recipe())))  # shipped = the default recipe
    assert sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file()) <= 10 * 2**20


def test_text_encoder_is_the_untrained_builder_output(short_build):
    """Only the VAE and transformer train: the shipped text encoder equals any rebuild's."""
    a = _tensors(pretrain.MODEL_DIR / WEIGHTS[0])
    b = _tensors(short_build / WEIGHTS[0])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_is_deterministic_in_its_seed(short_build, tmp_path):
    again = pretrain.pretrain(tmp_path / "again", SHORT, progress=False)
    for name in WEIGHTS[1:]:
        a, b = _tensors(short_build / name), _tensors(again / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_stage2_from_a_saved_stage1_equals_the_one_shot_build(short_build, tmp_path):
    """``--stage1 DIR`` (stage 2 alone, from a saved stage 1) gives the one-shot build's bits."""
    import dataclasses

    stage1 = pretrain.pretrain(tmp_path / "stage1", dataclasses.replace(SHORT, washout_steps=0), progress=False)
    both = pretrain.pretrain(tmp_path / "both", SHORT, progress=False, stage1=stage1)
    for name in WEIGHTS:
        a, b = _tensors(short_build / name), _tensors(both / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _files(both) == _files(short_build)
    for path in short_build.rglob("*.json"):  # configs too: nothing records where stage 1 came from
        other = json.loads((both / path.relative_to(short_build)).read_text())
        mine = json.loads(path.read_text())
        if path.name == pretrain.MARKER_NAME:
            mine.pop("train_seconds"), other.pop("train_seconds")
        assert other == mine, path
    assert not torch.equal(_tensors(stage1 / WEIGHTS[1])["proj_out.weight"], _tensors(both / WEIGHTS[1])["proj_out.weight"])
    with pytest.raises(ValueError, match="not stage 1 of this recipe"):
        pretrain.pretrain(tmp_path / "other", dataclasses.replace(SHORT, steps=3), progress=False, stage1=stage1)
    with pytest.raises(ValueError, match="not stage 1 of this recipe"):  # a finished two-stage build is no stage 1
        pretrain.pretrain(tmp_path / "again", SHORT, progress=False, stage1=both)


def test_kept_stage1_is_the_shipped_models_stage1():
    """bench/results/toy_stage1_20k is the stage 1 the shipped model's stage 2 started from (so
    ``--stage1`` rebuilds the shipped files in minutes): it is stage 1 of the default recipe, its
    VAE is the shipped one (stage 2 trains only the transformer), and the markers agree."""
    from pathlib import Path

    kept = Path(__file__).resolve().parents[2] / "bench" / "results" / "toy_stage1_20k"
    components, marker = pretrain.load_stage1(kept, pretrain.Recipe())
    shipped_vae = _tensors(pretrain.MODEL_DIR / WEIGHTS[2])
    assert all(torch.equal(v, shipped_vae[k]) for k, v in components["vae"].state_dict().items())
    shipped = json.loads((pretrain.MODEL_DIR / pretrain.MARKER_NAME).read_text())
    for key in ("final_vae_loss", "final_flow_loss"):
        assert marker[key] == shipped[key], key


def test_washed_out_blends_objects_towards_the_background_only():
    image, _, meta = pretrain.world.sample(5)
    background = (image == np.array(pretrain.world.BACKGROUND, dtype=np.uint8)).all(axis=-1)
    assert np.array_equal(pretrain.washed_out(image, 0.0), image)
    half = pretrain.washed_out(image, 0.5)
    assert np.array_equal(half[background], image[background])
    assert (half[~background].astype(int) >= image[~background]).all()  # towards white
    assert (pretrain.washed_out(image, 1.0) == 255).all()


def test_washed_out_objects_stop_being_detected():
    """Why the washout is RL's headroom: GenEval's detector needs vivid objects (the toy
    detector's colour segmentation puts a pixel in the background past ~0.4 of the way)."""
    reward = ToyGenEvalReward()
    samples = [pretrain.world.sample(s) for s in range(12)]
    images, metas = [im for im, _, _ in samples], [m for _, _, m in samples]

    def batch(fraction):
        x = np.stack([pretrain.washed_out(im, fraction) for im in images])
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255

    def score(fraction):
        return float(reward(batch(fraction), [m["prompt"] for m in metas], metas).scores.mean())

    assert score(0.0) == 1.0 and score(0.3) == 1.0 and score(0.6) == 0.0
    # ... which is what the base-quality split (quality.nothing_detected) counts: stage 2's
    # washed-out level (Recipe.washout_level 0.6) leaves nothing to detect, vivid renders do.
    assert not nothing_detected(batch(0.0), reward).any() and not nothing_detected(batch(0.3), reward).any()
    assert nothing_detected(batch(pretrain.Recipe().washout_level), reward).all()
    assert nothing_detected(torch.ones(2, 3, 32, 32), reward).all()  # a blank canvas


def test_shipped_model_base_quality_leaves_headroom():
    """Issue 11's target: a GenEval-style score between 0.2 and 0.6 on the held-out prompts.
    Measured on the 62 held-out prompts (2026-12-04, 2-core AMD EPYC): 0.214 at 2 seeds per
    prompt (this test), 0.235 at the main job's 4 on one rank and 0.241 in its 2-rank eval
    (single_object 0.62, counting 0.32, colors 0.23, two_object 0.33, position 0.27,
    color_attr 0.19); 0.414 after stage 1 alone."""
    pipe = load_pipeline(pretrain.MODEL_DIR)
    result = world_score(None, "configs/toy/test.jsonl", seeds_per_prompt=2, pipeline=pipe)
    assert 0.2 <= result["score"] <= 0.6, result


def test_shipped_schedule_is_linear(short_build):
    """The world's 64 tokens are below FLUX.2's shift rule's range: the model ships linear sigmas."""
    from precise_fast.rollout.plan import pipeline_schedule

    for folder in (pretrain.MODEL_DIR, short_build):
        sched = pipeline_schedule(load_pipeline(folder), 10, 64)
        assert torch.allclose(sched.sigmas, torch.linspace(1, 0, 11), atol=1e-6), folder
