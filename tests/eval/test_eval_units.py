"""The evaluator's small parts: the paper's config strings, sharding, statistics, targets.

Facts encoded: Tencent-Hunyuan/Precise ``eval/infer_eval.sh`` (the
``STEP|SDE_TYPE|NOISE_LEVEL|NUM_STEPS|DATASET_TYPE|REWARD_FN`` string, datasets
``pickscore`` / ``geneval``, ``--ckpt-base`` paired with ``--eval-config``),
``precise_sde/eval/infer_eval.py`` (population std, -10 entries skipped, PickScore x26),
``config/base.py`` (``*_eval_targets`` inherit the training sampler).
"""

from __future__ import annotations

import numpy as np
import pytest

from precise_fast.eval.cli import build_parser, plan
from precise_fast.eval.jobs import EvalJobError, parse_eval_config
from precise_fast.train.report.stats import stats, summarize
from precise_fast.train.config import ConfigError, load_config
from precise_fast.train.report.evaluator import rank_batches, resolve_targets

from .conftest import TINY_CONFIG


def test_paper_config_string():
    step, t = parse_eval_config('3000|precise|0|20|pickscore|{"pickscore": 1.0, "clipscore": 1.0}', batch_size=16)
    assert step == 3000
    assert (t.kind, t.eta, t.num_steps, t.batch_size) == ("precise", 0.0, 20, 16)
    assert t.prompts == "data/pickscore_test.txt" and t.reward == {"pickscore": 1.0, "clipscore": 1.0}
    assert t.num_prompts == 0  # the whole test set
    _, g = parse_eval_config('0|cps|0.7|10|geneval|{"geneval": 1.0}')
    assert g.prompts == "data/geneval_test_metadata.jsonl" and g.name == "geneval_cps_eta0.7_steps10_rm-geneval"


@pytest.mark.parametrize("text, message", [
    ("3000|precise|0|20|pickscore", "expected STEP"),
    ("x|precise|0|20|pickscore|{}", "must be integers"),
    ("1|euler|0|20|pickscore|{\"a\": 1}", "SDE_TYPE must be one of"),
    ("1|precise|0|20|coco|{\"a\": 1}", "DATASET must be one of"),
    ("1|precise|0|20|pickscore|{pickscore}", "not JSON"),
    ("1|precise|0|20|pickscore|{}", "non-empty JSON object"),
])
def test_bad_config_strings_are_one_line_errors(text, message):
    with pytest.raises(EvalJobError, match=message):
        parse_eval_config(text)


def test_ckpt_base_and_eval_config_come_in_pairs(tmp_path):
    args = build_parser().parse_args(["--config", str(TINY_CONFIG), "--out", str(tmp_path), "--ckpt-base", "a",
                                      "--ckpt-base", "b", "--eval-config", '0|precise|0|2|pickscore|{"x": 1}'])
    with pytest.raises(SystemExit, match=r"--ckpt-base \(2\) and --eval-config \(1\) must come in pairs"):
        plan(args)
    args = build_parser().parse_args(["--config", str(TINY_CONFIG), "--out", str(tmp_path), "--ckpt-base", str(tmp_path),
                                      "--eval-config", '0|flow_grpo|0.5|2|pickscore|{"jpeg_compressibility": 1}'])
    _, jobs = plan(args)
    ((ckpt, target),) = jobs
    assert ckpt.step == 0 and ckpt.lora is None  # step 0: the base model, no checkpoint needed
    assert target.kind == "flow_grpo" and target.eta == 0.5
    with pytest.raises(SystemExit, match="not a checkpoint"):
        plan(build_parser().parse_args(["--config", str(TINY_CONFIG), "--out", str(tmp_path), str(tmp_path)]))


@pytest.mark.parametrize("total, batch", [(11, 3), (2211, 16), (4, 8), (6, 2)])
def test_batches_cover_every_item_once_and_do_not_depend_on_the_world(total, batch):
    single = rank_batches(total, batch, 0, 1, pad=False)
    for world in (1, 2, 3, 8):
        shards = [rank_batches(total, batch, r, world, pad=False) for r in range(world)]
        got = sorted((b for shard in shards for b, _ in shard), key=lambda b: b[0])
        assert got == [b for b, _ in single]  # the same batches, whatever the world size
        padded = [rank_batches(total, batch, r, world, pad=True) for r in range(world)]
        assert len({len(p) for p in padded}) == 1  # equal batch counts under padding
        counted = sorted(i for p in padded for b, ok in p if ok for i in b)
        assert counted == list(range(total))


def test_stats_match_numpy_and_the_t_interval():
    x = [0.1, 0.4, 0.35, 0.8, -10.0, None, float("nan")]  # the sentinel, None and NaN are not samples
    s = stats(x)
    v = np.array([0.1, 0.4, 0.35, 0.8])
    assert s["count"] == 4 and s["mean"] == pytest.approx(v.mean()) and s["std"] == pytest.approx(v.std())
    assert s["ci95"] == pytest.approx(3.182446305 * v.std(ddof=1) / 2)  # t(0.975, 3)
    assert stats([1.0])["ci95"] is None and stats([])["mean"] is None


def _record(i, tag, scores, extras=None):
    return {"index": i, "metadata": {"tag": tag}, "scores": scores, "extras": extras or {}, "reward": scores.get("pickscore")}


def test_pickscore_on_the_paper_scale_and_geneval_per_tag():
    recs = [_record(0, "counting", {"pickscore": 0.8}, {"geneval_correct": 1.0}),
            _record(1, "counting", {"pickscore": 0.9}, {"geneval_correct": 0.0}),
            _record(2, "colors", {"pickscore": 0.85}, {"geneval_correct": 1.0})]
    s = summarize(recs)
    assert s["components"]["pickscore"]["mean"] == pytest.approx(26 * 0.85) and s["components"]["pickscore"]["scale"] == 26
    assert summarize(recs, paper_scale=False)["components"]["pickscore"]["mean"] == pytest.approx(0.85)
    assert s["per_tag"]["counting"]["geneval_correct"] == 0.5 and s["per_tag"]["colors"]["geneval_correct"] == 1.0
    assert s["tag_mean"]["geneval_correct"] == 0.75  # mean over tasks, not over images (2/3)
    assert s["extras"]["geneval_correct"]["mean"] == pytest.approx(2 / 3)


def test_targets_inherit_the_training_sampler():
    cfg = load_config(TINY_CONFIG, ["sampler.eta=1.2", "eval.targets=[{name: a}, {name: b, kind: cps, num_steps: 3},"
                                    " {name: c, kind: ode}, {name: d, eta: 0.0, prompts: x.txt, reward: pickscore}]"])
    a, b, c, d = resolve_targets(cfg)
    assert (a.kind, a.eta, a.num_steps, a.prompts, a.reward) == ("precise", 1.2, 10, cfg.prompts.test, None)
    assert (b.kind, b.eta, b.num_steps) == ("cps", None, 3)  # another kind: its own default noise level
    assert (c.kind, c.eta) == ("ode", None)
    assert (d.eta, d.prompts, d.reward, d.prefix) == (0.0, "x.txt", "pickscore", "eval/d/")
    (legacy,) = resolve_targets(load_config(TINY_CONFIG))
    assert (legacy.kind, legacy.num_prompts, legacy.prefix) == ("ode", 8, "eval/")


@pytest.mark.parametrize("targets, message", [
    ("[{name: a}, {name: a}]", "names two targets"),
    ("[{name: 'a/b'}]", "letters, digits"),
    ("[{name: a, batch_size: 0}]", "batch_size: must be > 0"),
    ("[{name: a, kind: euler}]", "kind"),
])
def test_bad_targets_are_config_errors(targets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, [f"eval.targets={targets}"])


def test_default_out_folder_is_the_runs_eval(tmp_path):
    from precise_fast.eval.cli import _out_dir

    run = tmp_path / "run"
    for given in (run, run / "checkpoints", run / "checkpoints" / "epoch-000002"):
        assert _out_dir(build_parser().parse_args([str(given)])) == run / "eval"
    assert _out_dir(build_parser().parse_args(["--ckpt-base", str(run), "--eval-config", "x", "--out", "o"])) == \
        type(run)("o")


def _gather_worker(rank, world, init, out):
    import json

    import torch.distributed as tdist

    from precise_fast.train.report.evaluator import gather_records, rank_batches

    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    mine = [{"index": i, "rank": rank} for b, ok in rank_batches(7, 2, rank, world, pad=True) if ok for i in b]
    with open(f"{out}.{rank}", "w") as f:
        json.dump(gather_records(mine), f)
    tdist.destroy_process_group()


def test_in_training_records_are_gathered_from_every_rank(tmp_path):
    """The in-training eval's all-gather over gloo (2 processes): every rank sees every record, in order."""
    import json

    import torch.multiprocessing as mp

    out = tmp_path / "gathered"
    mp.spawn(_gather_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"gathered.{rank}").read_text())
        assert [r["index"] for r in got] == list(range(7))
        assert [r["rank"] for r in got] == [0, 0, 1, 1, 0, 0, 1]  # batches of 2 dealt round-robin


def test_images_per_prompt_gives_each_prompt_k_items_with_their_own_seeds(tmp_path):
    """``images_per_prompt = k``: item ``i`` is prompt ``i // k`` with seed ``item_seed(seed, i)``
    (GenEval's protocol samples 4 images per prompt; the paper's eval 1)."""
    from types import SimpleNamespace

    import torch

    from precise_fast.train.report.evaluator import Evaluator, item_seed

    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    cfg = load_config(TINY_CONFIG, [f"eval.targets=[{{name: t, prompts: {prompts}, images_per_prompt: 2}}]"])
    (target,) = resolve_targets(cfg)
    assert target.images_per_prompt == 2
    seen = {}

    class Rollouts:
        def sample(self, texts, seeds, noise_seeds, mode):
            seen.update(texts=texts, seeds=seeds)
            return SimpleNamespace(images=torch.zeros(len(texts), 3, 2, 2))

    def reward(images, texts, metadata):
        n = len(texts)
        return SimpleNamespace(per_component={"r": torch.arange(n, dtype=torch.float64)},
                               component_valid={"r": torch.ones(n, dtype=torch.bool)}, extras={},
                               valid=torch.ones(n, dtype=torch.bool), weights={"r": 1.0})

    ev = Evaluator(None, cfg, reward_device="cpu", reward_dtype=torch.float32)
    ev.rollouts = lambda t: (Rollouts(), "sde")
    ev.reward = lambda t: reward
    assert ev.num_items(target) == 6
    records, _ = ev.score_batch(target, list(range(6)), seed=5)
    assert seen["texts"] == ["a", "a", "b", "b", "c", "c"]
    assert seen["seeds"] == [item_seed(5, i) for i in range(6)] and len(set(seen["seeds"])) == 6
    assert [(r["index"], r["prompt_index"]) for r in records] == [(i, i // 2) for i in range(6)]
    with pytest.raises(ConfigError, match="images_per_prompt: must be > 0"):
        load_config(TINY_CONFIG, ["eval.targets=[{name: a, images_per_prompt: 0}]"])
    with pytest.raises(ConfigError, match="eval.images_per_prompt"):
        load_config(TINY_CONFIG, ["eval.images_per_prompt=0"])
