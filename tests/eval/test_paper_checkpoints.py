"""The paper's checkpoints: ``<run>/checkpoint-STEP/lora`` PEFT adapter folders.

Tencent-Hunyuan/Precise ``precise_sde/eval/infer_eval.py`` loads them with
``PeftModel.from_pretrained(pipeline.transformer, ckpt_path)``; ``eval/infer_eval.sh``
points ``ckpt_path`` at ``${CKPT_BASE}/checkpoint-${STEP}/lora``. Our loader must give the
same transformer, including a ``lora_alpha`` other than the rank.
"""

from __future__ import annotations

import json

import pytest
import torch

from precise_fast.eval.cli import main as eval_main
from precise_fast.eval.jobs import discover
from precise_fast.eval.peft_lora import load_peft_adapter
from precise_fast.models import load_pipeline, lora_target_modules, tiny_pipeline_path

from .conftest import TINY_CONFIG


def _inputs(transformer):
    g = torch.Generator().manual_seed(0)
    c = transformer.config
    return dict(hidden_states=torch.randn(1, 16, c.in_channels, generator=g), timestep=torch.tensor([0.5]),
                encoder_hidden_states=torch.randn(1, 8, c.joint_attention_dim, generator=g),
                txt_ids=torch.zeros(1, 8, 4), img_ids=torch.zeros(1, 16, 4), return_dict=False)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """A paper-layout run folder with checkpoint-5/lora saved by PEFT (rank 4, alpha 8)."""
    from peft import LoraConfig, get_peft_model

    run = tmp_path_factory.mktemp("paper_run")
    transformer = load_pipeline(tiny_pipeline_path(0)).transformer
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=lora_target_modules(transformer))
    model = get_peft_model(transformer, config)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(run / "checkpoint-5" / "lora")
    with torch.no_grad():
        reference = model(**_inputs(transformer))[0]
    return run, reference


def test_loader_equals_peft_from_pretrained(paper_run):
    run, reference = paper_run
    pipe = load_pipeline(tiny_pipeline_path(0))
    with torch.no_grad():
        base = pipe.transformer(**_inputs(pipe.transformer))[0]
        load_peft_adapter(pipe.transformer, run / "checkpoint-5" / "lora", "eval_checkpoint")
        loaded = pipe.transformer(**_inputs(pipe.transformer))[0]
        torch.testing.assert_close(loaded, reference, rtol=0, atol=1e-6)
        assert not torch.allclose(base, reference)
        pipe.delete_adapters("eval_checkpoint")
        torch.testing.assert_close(pipe.transformer(**_inputs(pipe.transformer))[0], base, rtol=0, atol=0)


def test_paper_run_through_the_paper_options(paper_run, data_dir, tmp_path):
    run, _ = paper_run
    (ckpt,) = discover(run)
    assert ckpt.step == 5 and ckpt.lora == run / "checkpoint-5" / "lora"
    reward = '{"jpeg_incompressibility": 1.0}'
    out = tmp_path / "eval"
    assert eval_main(["--config", str(TINY_CONFIG), "--out", str(out), "--no-progress", "--num-prompts", "3",
                      "--ckpt-base", str(run), "--eval-config", f"0|precise|0|2|pickscore|{reward}",
                      "--ckpt-base", str(run), "--eval-config", f"5|precise|0|2|pickscore|{reward}"]) == 0
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    by_step = {s: [r["reward"] for r in records if r["step"] == s] for s in (0, 5)}
    assert len(by_step[0]) == len(by_step[5]) == 3 and by_step[0] != by_step[5]
