"""Reward weights in the paper's model folders (Tencent-Hunyuan/Precise precise_sde/core/model_paths.py:
``$PRECISE_SDE_MODEL_ROOT/<local name>``); a miss names the repo id and revision."""

import pytest

from precise_fast import model_paths
from precise_fast.model_paths import MODEL_ROOT_ENV, PAPER_ROOT_ENVS, WeightsNotFoundError
from precise_fast.rewards import build_scorer


@pytest.fixture
def no_roots(monkeypatch):
    for name in (MODEL_ROOT_ENV, *PAPER_ROOT_ENVS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_reward_weights_resolve_in_the_papers_layout(no_roots, tmp_path, model_root):
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "clip-vit-large-patch14").symlink_to(model_root / model_paths.CLIP_L14, target_is_directory=True)
    no_roots.setenv("PRECISE_SDE_MODEL_ROOT", str(paper))
    empty = tmp_path / "empty"
    empty.mkdir()
    scorer = build_scorer("clipscore", model_root=empty)
    assert scorer.backbone.model_dir == paper / "clip-vit-large-patch14"
    with pytest.raises(WeightsNotFoundError) as err:
        build_scorer("hpsv2", model_root=empty)
    text = str(err.value)
    assert str(paper / "hpsv2.1" / "HPS_v2.1_compressed.pt") in text and "xswu/HPSv2" in text
    assert "697403c78157020a1ae59d23f111aa58ced35b0a" in text
