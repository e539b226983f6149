"""LoRA parity with the paper: its target list and its `train.lora_path` start.

Encodes Tencent-Hunyuan/Precise precise_sde/train/adapters.py (Flux2KleinAdapter.prepare_models):
peft's ``get_peft_model`` with the paper's 13 target suffixes, rank 16, alpha 16, Gaussian
init; ``train.lora_path`` starts from a saved adapter folder (``PeftModel.save_pretrained``).
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from precise_fast.models import apply_lora, init_lora_from, load_pipeline, lora_state_dict, save_lora

# Written out from the paper's adapters.py (not imported from our lora.py, so a drift fails here).
PAPER_TARGETS = [
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.to_qkv_mlp_proj",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out",
]


def _paper_peft_model(tiny_dir):
    pipe = load_pipeline(tiny_dir)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=PAPER_TARGETS)
    return get_peft_model(pipe.transformer, config)


def _trainable_names(module, prefix=""):
    return sorted(n[len(prefix):] for n, p in module.named_parameters() if p.requires_grad)


def test_trainable_parameters_equal_the_papers_peft_model(tiny_dir):
    paper = _paper_peft_model(tiny_dir)
    ours = load_pipeline(tiny_dir).transformer
    apply_lora(ours, rank=4, alpha=4)
    assert _trainable_names(ours) == _trainable_names(paper, "base_model.model.")
    assert not any("single_transformer_blocks" in n and "attn.to_out" in n for n in _trainable_names(ours))
    plus = load_pipeline(tiny_dir).transformer
    apply_lora(plus, rank=4, alpha=4, targets="paper_plus_single_out")
    extra = set(_trainable_names(plus)) - set(_trainable_names(ours))
    assert extra and all(".attn.to_out.lora_" in n and n.startswith("single_transformer_blocks.") for n in extra)


def test_lora_path_starts_from_a_paper_checkpoint_folder(tiny_dir, tmp_path):
    paper = _paper_peft_model(tiny_dir)
    with torch.no_grad():
        for n, p in paper.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
    paper.save_pretrained(tmp_path / "lora")  # the paper's checkpoint-N/lora layout
    ours = load_pipeline(tiny_dir).transformer
    apply_lora(ours, rank=4, alpha=4)
    assert init_lora_from(ours, tmp_path / "lora").name == "adapter_model.safetensors"
    theirs = {n[len("base_model.model."):].replace(".default.", "."): p for n, p in paper.named_parameters() if "lora_" in n}
    mine = lora_state_dict(ours)
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k].detach(), rtol=0, atol=0)
    assert all(p.requires_grad for n, p in ours.named_parameters() if "lora_" in n)


def test_lora_path_reads_our_diffusers_export_and_rejects_a_mismatch(tiny_dir, tmp_path):
    src = load_pipeline(tiny_dir)
    params = apply_lora(src.transformer, rank=4, alpha=4)
    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    save_lora(src, tmp_path / "ours")
    dst = load_pipeline(tiny_dir).transformer
    apply_lora(dst, rank=4, alpha=4)
    init_lora_from(dst, tmp_path / "ours")
    for k, v in lora_state_dict(src.transformer).items():
        torch.testing.assert_close(lora_state_dict(dst)[k], v, rtol=0, atol=0)
    other_rank = load_pipeline(tiny_dir).transformer
    apply_lora(other_rank, rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        init_lora_from(other_rank, tmp_path / "ours")
    wider = load_pipeline(tiny_dir).transformer
    apply_lora(wider, rank=4, alpha=4, targets="paper_plus_single_out")
    with pytest.raises(ValueError, match="targets differ"):
        init_lora_from(wider, tmp_path / "ours")
    with pytest.raises(FileNotFoundError, match="train.lora_path"):
        init_lora_from(wider, tmp_path / "nothing")
