"""Rewards overlap sampling: with a reward as slow as a rollout batch, the sampling phase takes
clearly less than rollout + reward time (the ratio is reported by bench/bench_overlap.py;
only the ordering is asserted here), and inline scoring does not."""

from precise_fast.train.phases.overlap_probe import measure_overlap

from .conftest import small_config


def test_rewards_overlap_rollouts(tmp_path, tiny_pipe):
    cfg = small_config(tmp_path, "sampler.batch_size=4", "sampler.images_per_prompt=4", "sampler.num_steps=6")
    prompts = [f"prompt number {i}" for i in range(8)]
    result = measure_overlap(tiny_pipe, cfg, prompts, num_batches=4)
    thread, inline = result["thread"], result["inline"]
    assert thread["phase_s"] < thread["rollout_s"] + thread["reward_s"]
    # Control: scoring inline serialises the two, so the same ordering must not hold there.
    assert inline["phase_s"] >= 0.95 * (inline["rollout_s"] + inline["reward_s"])
    assert thread["phase_s"] < inline["phase_s"]
