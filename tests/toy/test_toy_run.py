"""The main job's recipe runs end to end on the shapes world (one rank, two epochs): the
pretrained model loads from the package, the toy GenEval reward scores rollouts, the eval on
the held-out prompts runs before training and at the end, and the summary reports both.
(That the reward rises is tests/toy/test_learning.py's job.)
"""

import math

from precise_fast.toy.pretrain import MODEL_DIR
from precise_fast.train.config import load_config
from precise_fast.train.policy.distributed import init_distributed
from precise_fast.train.trainer import Trainer


def test_toy_run_reports_the_eval_reward(tmp_path, capsys):
    cfg = load_config("configs/toy/shapes_precise.yaml", [
        f"model.path={MODEL_DIR}", f"run.output_dir={tmp_path / 'run'}", "run.epochs=2",
        "sampler.num_batches_per_epoch=2", "eval.every=2", "eval.at_start=true",
        "eval.targets=[{name: test, kind: ode, num_prompts: 16, images_per_prompt: 1, batch_size: 16}]",
        "checkpoint.every=0", "checkpoint.export_lora=false", "log.image_every=0", "log.progress=false",
    ])
    trainer = Trainer(cfg, init_distributed("cpu"))
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert math.isfinite(summary["eval_first"]) and math.isfinite(summary["eval_last"])
    assert -1.0 <= summary["eval_first"] <= 1.0 and -1.0 <= summary["eval_last"] <= 1.0
    assert f"from {summary['eval_first']:.4f} to {summary['eval_last']:.4f}" in summary["line"]
    assert [h["epoch"] for h in trainer.history if "eval_reward_mean" in h] == [0, 2]
    # Two short epochs make a few optimizer steps, far below the 80 the paper's EMA ramp needs for 0.9.
    assert "[precise_fast] note: train.ema_decay=0.9 never took effect" in capsys.readouterr().out
