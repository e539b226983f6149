"""Pinned weights and the paper's model folders.

Encodes Tencent-Hunyuan/Precise precise_sde/core/model_paths.py (``_PINNED_HF_MODELS``: repo id,
revision, local folder name; ``$PRECISE_SDE_MODEL_ROOT/<local name>``) and config/flux2_klein.py
(the policy pin). Nothing is downloaded: a missing folder is an error naming the repo id, the
revision and the folders looked in.
"""

import pytest
from diffusers import Flux2KleinPipeline

from precise_fast.model_paths import MODEL_ROOT_ENV, PAPER_ROOT_ENVS, PINNED_MODELS, WeightsNotFoundError, lookup_pinned
from precise_fast.models import load_pipeline

# (repo id, revision, the paper's folder) written out from the table / the paper's file.
PAPER_PINS = {
    ("black-forest-labs/FLUX.2-klein-base-4B", "a3b4f4849157f664bdbc776fd7453c2783562f4d", "FLUX.2-klein-base-4B"),
    ("openai/clip-vit-large-patch14", "32bd64288804d66eefd0ccbe215aa642df71cc41", "clip-vit-large-patch14"),
    ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "1c2b8495b28150b8a4922ee1c8edee224c284c0c",
     "CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ("yuvalkirstain/PickScore_v1", "a4e4367c6dfa7288a00c550414478f865b875800", "PickScore_v1"),
    ("xswu/HPSv2", "697403c78157020a1ae59d23f111aa58ced35b0a", "hpsv2.1"),
    ("zai-org/ImageReward", "5736be03b2652728fb87788c9797b0570450ab72", "ImageReward"),
    ("CodeGoat24/UnifiedReward-2.0-qwen35-9b", "f01548b009741e12ff9817ed91dba94701ed9579", "UnifiedReward-2.0-qwen35-9b"),
    ("tsbpp/geneval_mask2former", "22b5a198cedf6b45e45165cf1c865d58de4a2832", "geneval_mask2former"),
}


@pytest.fixture
def no_roots(monkeypatch):
    for name in (MODEL_ROOT_ENV, *PAPER_ROOT_ENVS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_table_holds_the_papers_pins():
    pinned = {(m.repo_id, m.revision, m.paper_dir) for m in PINNED_MODELS.values() if m.revision}
    assert pinned == PAPER_PINS
    assert lookup_pinned("FLUX.2-klein-base-4B").alias == "flux2-klein-base-4b"  # the paper's short name
    assert lookup_pinned("black-forest-labs/flux.2-klein-base-4b").alias == "flux2-klein-base-4b"


def test_the_recipe_policy_resolves_in_the_papers_layout(no_roots, tmp_path, tiny_dir):
    (tmp_path / "FLUX.2-klein-base-4B").symlink_to(tiny_dir, target_is_directory=True)
    no_roots.setenv("PRECISE_SDE_MODEL_ROOT", str(tmp_path))
    assert isinstance(load_pipeline("flux2-klein-base-4b"), Flux2KleinPipeline)
    # Our layout is looked in first and keeps working.
    ours = tmp_path / "ours"
    (ours / "black-forest-labs").mkdir(parents=True)
    (ours / "black-forest-labs" / "FLUX.2-klein-base-4B").symlink_to(tiny_dir, target_is_directory=True)
    assert isinstance(load_pipeline("black-forest-labs/FLUX.2-klein-base-4B", model_root=ours), Flux2KleinPipeline)


def test_a_missing_model_names_repo_revision_and_folders(no_roots, tmp_path):
    no_roots.setenv("PRECISE_SDE_LOCAL_MODEL_ROOT", str(tmp_path / "paper"))
    with pytest.raises(WeightsNotFoundError) as err:
        load_pipeline("flux2-klein-base-4b", model_root=tmp_path / "ours")
    text = str(err.value)
    assert "black-forest-labs/FLUX.2-klein-base-4B" in text and "a3b4f4849157f664bdbc776fd7453c2783562f4d" in text
    assert str(tmp_path / "ours" / "black-forest-labs" / "FLUX.2-klein-base-4B") in text
    assert str(tmp_path / "paper" / "FLUX.2-klein-base-4B") in text
