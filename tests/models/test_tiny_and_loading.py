"""The tiny offline pipeline and the local-only loader."""

import json
import logging
import shutil

import pytest
import torch
from diffusers import Flux2KleinPipeline
from safetensors.torch import load_file

from precise_fast.model_paths import MODEL_ROOT_ENV, PINNED_MODELS, WeightsNotFoundError
from precise_fast.models import ModelFolderError, TINY_TEXT_LAYERS, build_tiny_pipeline, load_pipeline


def test_tiny_pipeline_has_the_recipe_structure(tiny_pipe):
    te = tiny_pipe.text_encoder.config
    # The recipe's deepest hidden layer (27) must be an intermediate state, as in Qwen3-4B.
    assert te.num_hidden_layers > max(TINY_TEXT_LAYERS)
    tr = tiny_pipe.transformer.config
    assert tr.joint_attention_dim == len(TINY_TEXT_LAYERS) * te.hidden_size
    assert sum(tr.axes_dims_rope) == tr.attention_head_dim
    assert tr.num_layers >= 1 and tr.num_single_layers >= 1
    assert tr.in_channels == 4 * tiny_pipe.vae.config.latent_channels
    assert tiny_pipe.vae_scale_factor == 8
    # Non-trivial BatchNorm statistics, so forgetting the de-normalisation changes images.
    assert tiny_pipe.vae.bn.running_mean.abs().max() > 0.05
    assert (tiny_pipe.vae.bn.running_var - 1).abs().max() > 0.05


def test_tiny_tokenizer_chat_template_disables_thinking(tiny_pipe):
    text = tiny_pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a red cube"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\na red cube<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tiny_pipe.tokenizer(text, padding="max_length", max_length=128, truncation=True)
    assert len(ids["input_ids"]) == 128 and ids["input_ids"][-1] == tiny_pipe.tokenizer.pad_token_id


def test_stock_pipeline_runs_on_the_tiny_folder(tiny_dir):
    pipe = Flux2KleinPipeline.from_pretrained(tiny_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=["a cat", "a dog"], height=64, width=64, num_inference_steps=3, guidance_scale=1.0,
        max_sequence_length=128, output_type="pt", generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (2, 3, 64, 64)
    assert torch.isfinite(out.images).all() and out.images.std() > 0.01


def test_build_is_deterministic_and_round_trips(tiny_dir, tmp_path):
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    for part in ("transformer/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"):
        a, b = load_file(tiny_dir / f"{part}.safetensors"), load_file(again / f"{part}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{part}:{key} differs between two seed-0 builds"
    tok_a = json.loads((tiny_dir / "tokenizer/tokenizer.json").read_text())
    tok_b = json.loads((again / "tokenizer/tokenizer.json").read_text())
    assert tok_a["model"] == tok_b["model"]
    # Loaded weights equal the saved ones exactly (offline save / load round trip).
    pipe = load_pipeline(again)
    saved = load_file(again / "transformer/diffusion_pytorch_model.safetensors")
    for name, p in pipe.transformer.state_dict().items():
        assert torch.equal(p, saved[name])


def test_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_pipeline(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_loaded_pipeline_is_frozen_eval_and_cast(tiny_dir):
    pipe = load_pipeline(tiny_dir, dtype=torch.bfloat16)
    for module in (pipe.transformer, pipe.text_encoder, pipe.vae):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert pipe.transformer.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- loader errors


def test_missing_folder_is_an_error_not_a_download(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="never downloaded"):
        load_pipeline(tmp_path / "does-not-exist")
    with pytest.raises(WeightsNotFoundError, match="never downloaded"):
        load_pipeline("someone/some-model")


def test_a_file_is_not_a_pipeline(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"0")
    with pytest.raises(WeightsNotFoundError, match="is a file"):
        load_pipeline(f)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelFolderError, match="model_index.json is missing"):
        load_pipeline(tmp_path)


def test_wrong_pipeline_class(tiny_dir, tmp_path):
    copy = shutil.copytree(tiny_dir, tmp_path / "wrong")
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="'FluxPipeline' pipeline, expected 'Flux2KleinPipeline'"):
        load_pipeline(copy)


def test_incomplete_folder_names_the_missing_component(tiny_dir, tmp_path):
    copy = shutil.copytree(tiny_dir, tmp_path / "partial")
    shutil.rmtree(copy / "vae")
    with pytest.raises(ModelFolderError, match="missing: vae/config.json"):
        load_pipeline(copy)


def test_pinned_id_without_model_root_explains_how_to_get_it(monkeypatch):
    monkeypatch.delenv(MODEL_ROOT_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError, match=MODEL_ROOT_ENV) as err:
        load_pipeline("flux2-klein-4b")
    assert "hf download black-forest-labs/FLUX.2-klein-4B" in str(err.value)


def test_pinned_id_missing_under_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="not under the model root"):
        load_pipeline("black-forest-labs/FLUX.2-klein-4B")


def test_pinned_id_resolves_under_the_root(monkeypatch, tmp_path, tiny_dir):
    entry = PINNED_MODELS["flux2-klein-4b"]
    target = tmp_path / entry.relative_dir
    target.parent.mkdir(parents=True)
    target.symlink_to(tiny_dir, target_is_directory=True)
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path))
    pipe = load_pipeline("flux2-klein-4b")
    assert isinstance(pipe, Flux2KleinPipeline)
    # An explicit model_root wins over the environment.
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert isinstance(load_pipeline(entry.repo_id, model_root=tmp_path), Flux2KleinPipeline)


def test_load_logs_the_attention_choice(tiny_dir, caplog):
    with caplog.at_level(logging.INFO, logger="precise_fast.models"):
        load_pipeline(tiny_dir)
    assert any("attention backend: sdpa" in r.getMessage() for r in caplog.records)
