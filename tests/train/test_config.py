"""Run configs: strict keys and types, overrides, inheritance, and every shipped config loads."""

import re
from pathlib import Path

import pytest

from precise_fast.kinds import DEFAULT_ETA
from precise_fast.train.config import ConfigError, check_world, load_config, parse_override

from .conftest import REPO, TINY_CONFIG


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert TINY_CONFIG in files
    recipes = [f for f in files if "flux2_klein" in f.parts]
    assert len(recipes) >= 15  # 3 rewards x 5 SDE kinds
    for f in files:
        cfg = load_config(f)
        assert cfg.source == str(f.resolve())


def test_recipes_cover_rewards_and_kinds():
    seen = set()
    for f in (REPO / "configs" / "flux2_klein").glob("*.yaml"):
        cfg = load_config(f)
        if f.stem.startswith("_"):
            continue
        spec = cfg.reward.spec if isinstance(cfg.reward.spec, str) else ",".join(sorted(cfg.reward.spec))
        seen.add((spec, cfg.sampler.kind))
        # The paper's FLUX.2 Klein recipe (shared/SAMPLERS.md).
        assert (cfg.sampler.num_steps, cfg.sampler.height, cfg.sampler.width) == (20, 512, 512)
        assert cfg.sampler.images_per_prompt == 8 and cfg.sampler.batch_size == 2
        assert cfg.sampler.num_batches_per_epoch == 16 and int(20 * cfg.algorithm.timestep_fraction) == 19
        assert cfg.train.lr == 8e-5 and cfg.train.clip_range == 4e-6 and cfg.train.ratio == "guard"
        assert (cfg.train.ema_decay, cfg.train.ema_interval) == (0.9, 8)
        assert (cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.max_text_len) == (16, 16.0, 128)
    kinds = {"flow_grpo", "dance_grpo", "cps", "precise", "dance_precise"}
    assert {k for _, k in seen} == kinds
    assert len({s for s, _ in seen}) == 3 and len(seen) == 15


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        load_config(bad)
    bad.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(bad)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=fast", "train.lr"),
        ("sampler.batch_size=2.5", "sampler.batch_size"),
        ("sampler.kind=euler", "sampler.kind"),
        ("train.ema=maybe", "train.ema"),
        ("model.text_layers=[1,x]", r"model.text_layers\[1\]"),
        ("train.ratio=3", "train.ratio"),
    ],
)
def test_ill_typed_values_are_named(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(TINY_CONFIG, [override])


def test_overrides_parse_yaml_values():
    cfg = load_config(TINY_CONFIG, ["train.lr=1e-4", "algorithm.g2rpo_granularities=[1, 2]", "sampler.cuda_graph=null",
                                    "sampler.eta=null", "reward.spec={jpeg_compressibility: 2.0}"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.algorithm.g2rpo_granularities == [1, 2]
    assert cfg.sampler.cuda_graph is None
    assert cfg.sampler.eta == DEFAULT_ETA[cfg.sampler.kind]  # null eta: the kind table's default, filled at load
    assert cfg.reward.spec == {"jpeg_compressibility": 2.0}
    assert parse_override("a.b=c") == (["a", "b"], "c")
    with pytest.raises(ConfigError):
        parse_override("lr=1")  # no section
    with pytest.raises(ConfigError):
        load_config(TINY_CONFIG, ["train.lr"])


def test_base_inheritance_and_value_checks(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {TINY_CONFIG}\ntrain:\n  lr: 0.5\n")
    cfg = load_config(child)
    assert cfg.train.lr == 0.5 and cfg.model.path == "tiny"  # the rest comes from the base
    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_config(child, ["train.ema_decay=1.5"])
    with pytest.raises(ConfigError, match="sampler.eta"):
        load_config(child, ["sampler.kind=cps", "sampler.eta=1.5"])
    with pytest.raises(ConfigError, match="algorithm.window_start_max"):
        load_config(child, ["algorithm.name=sde_window", "algorithm.window_start_max=9", "algorithm.window_size=4"])


def test_group_size_must_tile_the_global_batch():
    cfg = load_config(TINY_CONFIG, ["sampler.images_per_prompt=3"])
    with pytest.raises(ConfigError, match="sampler.images_per_prompt"):
        check_world(cfg, 2)
    check_world(load_config(TINY_CONFIG), 2)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path(tmp_path) / "nope.yaml")


@pytest.mark.parametrize("override,key", [
    ("train.lr=.nan", "train.lr"),  # `value < 0 or value == 0` is False for NaN: it passed
    ("train.clip_range=.inf", "train.clip_range"),
    ("train.max_grad_norm=1e999", "train.max_grad_norm"),  # YAML 1.1 text read as a float: inf
    ("advantage.eps=-.inf", "advantage.eps"),
    ("sampler.eta=.nan", "sampler.eta"),
    ("train.betas=[0.9, .nan]", "train.betas[1]"),
    ("reward.abort_invalid_fraction=.nan", "reward.abort_invalid_fraction"),
    ("reward.spec={pickscore: .nan}", "reward.spec.pickscore"),
    ("reward.spec={pickscore: {weight: .inf}}", "reward.spec.pickscore.weight"),
    ("eval.targets=[{name: a, eta: .nan}]", "eval.targets[0].eta"),
])
def test_a_non_finite_number_anywhere_is_refused_naming_the_key(override, key):
    """Issue 25 item 14: a NaN passed validation and crashed the run later."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be a finite number, got -?(nan|inf)"):
        load_config(TINY_CONFIG, [override])


@pytest.mark.parametrize("noise,reward", [("nan", '{"pickscore": 1.0}'), ("inf", '{"pickscore": 1.0}'),
                                          ("0.5", '{"pickscore": NaN}')])
def test_a_non_finite_number_in_an_eval_config_string_is_refused(noise, reward):
    """The same rule for ``precise-fast eval --eval-config`` (NaN passed ``noise < 0``; json reads NaN)."""
    from precise_fast.eval.jobs import parse_eval_config

    with pytest.raises(ConfigError, match="--eval-config .*: must be a finite number"):
        parse_eval_config(f"1|precise|{noise}|20|pickscore|{reward}")
