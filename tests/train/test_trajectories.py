"""The trainer's rollouts (``train/phases/trajectories.py``): what it keeps between batches."""

from pathlib import Path

import torch


def test_prompt_embeddings_are_cached_in_host_memory(tiny_pipe, tmp_path, monkeypatch):
    """The trainer's prompt-embedding cache holds its rows on the host and hands the batch to the
    engine's device (at the real width a GPU-side cache would grow to 15 GiB); the rows are the
    encoder's own, bit for bit."""
    from precise_fast.train.config import load_config
    from precise_fast.train.phases.trajectories import Rollouts

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml",
                      [f"run.output_dir={tmp_path}", "model.max_text_len=8"])
    rollouts = Rollouts(tiny_pipe, cfg)
    prompts = ["a red cube", "two blue balls", "a red cube"]
    want = torch.stack([rollouts.engine.prompt_encoder.encode_uncached([p])[0] for p in prompts])
    torch.testing.assert_close(rollouts.embed(prompts), want, rtol=0, atol=0)
    assert all(row.device.type == "cpu" for row in rollouts._cache.values()) and len(rollouts._cache) == 2
    monkeypatch.setattr(rollouts.engine, "device", torch.device("meta"))  # stands in for a GPU
    assert rollouts.embed(prompts).device.type == "meta"
    assert all(row.device.type == "cpu" for row in rollouts._cache.values())
