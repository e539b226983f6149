"""scripts/memory_estimate.py's ZeRO arithmetic (docs/SCALING.md's memory table): which states
each stage partitions over the GPUs, on made-up counts (the real counts take minutes)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from memory_estimate import GIB, estimate  # noqa: E402

COUNTS = {"transformer": 4 * GIB, "lora": GIB // 4, "text_encoder": GIB, "vae": 0}
NO_ACTIVATIONS = {mode: {k: {"fixed": 0.0, "per_token": 0.0} for k in ("none", "double", "single")}
                  for mode in ("full", "checkpointed")}


@pytest.mark.parametrize("zero, weights, grads, adam, ema", [
    (0, 16, 16, 32, 16),  # float32 weights 4 B, gradients 4 B, AdamW 8 B, EMA 4 B per trained parameter
    (1, 16, 16, 4, 16),  # ZeRO-1: the AdamW moments split over 8 GPUs
    (2, 16, 2, 4, 16),  # ZeRO-2: and the gradients
    (3, 2, 2, 4, 2),  # ZeRO-3: and the weights and the EMA
])
def test_full_fine_tune_states_per_stage(zero, weights, grads, adam, ema):
    parts = estimate(COUNTS, NO_ACTIVATIONS, finetune="full", zero=zero, pixels=512, rows=2, gpus=8)["parts_gib"]
    assert (parts["transformer weights"], parts["gradients"], parts["AdamW moments"], parts["EMA"]) == (weights, grads, adam, ema)
    assert parts["text encoder (bf16)"] == 2 and parts["total"] == weights + grads + adam + ema + 2


def test_lora_keeps_the_frozen_base_and_trains_the_adapter():
    parts = estimate(COUNTS, NO_ACTIVATIONS, finetune="lora", zero=2, pixels=1024, rows=2, gpus=8)["parts_gib"]
    assert parts["transformer weights"] == (4 + 0.25) * 4  # the frozen base and the adapter, float32, not split
    assert (parts["gradients"], parts["AdamW moments"], parts["EMA"]) == (0.125, 0.25, 1.0)


def test_activations_scale_with_rows_and_tokens_but_not_the_fixed_part():
    acts = {"full": {"none": {"fixed": 0.0, "per_token": 0.0}, "double": {"fixed": 100.0, "per_token": 10.0},
                     "single": {"fixed": 50.0, "per_token": 1.0}},
            "checkpointed": {"none": {"fixed": 0.0, "per_token": 0.0}, "double": {"fixed": 0.0, "per_token": 2.0},
                             "single": {"fixed": 0.0, "per_token": 2.0}}}
    out = estimate(COUNTS, acts, finetune="lora", zero=0, pixels=512, rows=3, gpus=8)
    tokens = 32 * 32 + 128
    assert out["tokens"] == tokens
    kept = 25 * 2.0 * 3 * tokens  # 5 double + 20 single blocks keep their inputs
    recompute = 100.0 + 10.0 * 3 * tokens  # the costlier block, recomputed whole in the backward
    assert out["parts_gib"]["activations"] == pytest.approx((kept + recompute) / GIB)
