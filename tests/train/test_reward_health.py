"""Remote rewards that all fail must stop the run, not let it train on nothing (issue 13,
"says too little"; train/lifecycle/health.py): the invalid (sentinel) fraction over the last
``reward.abort_window`` epochs reaching ``reward.abort_invalid_fraction`` exits 3 with a
clear message; httpx's per-request INFO lines stay out of the run log."""

import json
import logging
import socket

import pytest

from precise_fast.train import main as train_main
from precise_fast.train.lifecycle.health import RewardHealth, RewardsFailing

from .conftest import TINY_CONFIG


def test_window_threshold():
    h = RewardHealth(0.5, 3)
    for epoch, frac in enumerate((1.0, 1.0), 1):
        h.update(epoch, frac)  # the window is not full yet
    h2 = RewardHealth(0.5, 3)
    for epoch, frac in enumerate((0.0, 1.0, 0.4, 0.0), 1):
        h2.update(epoch, frac)  # means 0.47 and 0.47: below
    with pytest.raises(RewardsFailing, match=r"100% of the samples of epochs 1-3.*abort_invalid_fraction=0.5"):
        h.update(3, 1.0)
    off = RewardHealth(0.5, 0)  # abort_window 0: never stops
    for epoch in range(1, 10):
        off.update(epoch, 1.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


def test_all_remote_rewards_failing_stops_the_run(tmp_path, dist1, capsys):
    prompts = tmp_path / "geneval.jsonl"
    records = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": f"a photo of a cat {i}"}
               for i in range(4)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = f"{{geneval: {{urls: ['http://127.0.0.1:{_closed_port()}'], max_retries: 0, connect_timeout_s: 0.5}}}}"
    overrides = (f"run.output_dir={tmp_path / 'run'}", "run.epochs=6", "log.progress=false", "log.image_every=0",
                 "eval.every=0", "sampler.num_batches_per_epoch=2", "sampler.num_steps=4", "sampler.images_per_prompt=4",
                 f"prompts.train={prompts}", f"reward.spec={spec}", "reward.abort_window=2")
    args = ["--config", str(TINY_CONFIG)] + [a for o in overrides for a in ("--set", o)]
    code = train_main.main(args)
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    assert "rewards failing: 100% of the samples of epochs 1-2" in err
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # stopped after epoch 2
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
