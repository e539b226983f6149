"""The FLUX.2 Klein recipes carry the paper's values, and ``--print-config`` shows them.

Encodes Tencent-Hunyuan/Precise config/base.py (``default()``, ``mix_reward_fn``,
``pickscore_reward_fn``, ``geneval_eval_targets``, ``mix_eval_targets``, ``pickscore_eval_targets``,
``flux2_klein_*_eval_targets``) and config/flux2_klein.py (``_apply_common_config``,
``_default_noise_level``, ``flux2_klein_config``), plus the values precise_sde/train/rl_trainer.py
hard-codes (EMA decay 0.9, interval 8; max_sequence_length 128) and adapters.py (LoRA 16/16, Gaussian).
The expected values are written out below from those files, not read from our configs.
"""

import io
from contextlib import redirect_stdout

import pytest
import yaml

from precise_fast.model_paths import lookup_pinned
from precise_fast.rewards import parse_spec
from precise_fast.train.config import load_config
from precise_fast.train.main import main

from .conftest import REPO

KINDS = ("flow_grpo", "dance_grpo", "cps", "precise", "dance_precise")


def _noise_level(kind):  # config/flux2_klein.py _default_noise_level
    return 1.5 if kind == "precise" else 0.3 if kind.startswith("dance_") else 0.7


def _paper(reward, kind):
    """flux2_klein_config(reward, sde_type=kind) of the paper, as plain values."""
    noise, steps, gpus, per_gpu, k = _noise_level(kind), 20, 8, 2, 8
    num_batches = int(32 / (gpus * per_gpu / k))
    train_reward = {"mix": {"pickscore": 1.0, "clipscore": 1.0, "hpsv2": 1.0}, "pickscore": {"pickscore": 1.0},
                    "geneval": {"geneval": 1.0}}[reward]
    target = {
        "mix": ("flux2_klein_eval_multi_reward", "pickscore",
                {"pickscore": 1.0, "imagereward": 1.0, "clipscore": 1.0, "hpsv2": 1.0}, 8),
        "pickscore": ("flux2_klein_pickscore", "pickscore", {"pickscore": 1.0}, 8),
        "geneval": ("geneval", "geneval", {"geneval": 1.0}, 7),  # geneval_eval_targets keeps its 7
    }[reward]
    return {
        "seed": 42, "model": ("black-forest-labs/FLUX.2-klein-base-4B", "a3b4f4849157f664bdbc776fd7453c2783562f4d"),
        "text_layers": [9, 18, 27], "max_text_len": 128, "lora": (16, 16.0, "gaussian"),
        "precision": "autocast_bf16", "allow_tf32": True,
        "sampler": (kind, noise, steps, 512, per_gpu, k, num_batches, False),
        "train": dict(lr=8e-5, betas=[0.9, 0.999], weight_decay=1e-4, adam_eps=1e-8, max_grad_norm=1.0,
                      batch_size=per_gpu, gradient_accumulation_steps=num_batches // 2, num_inner_epochs=1,
                      clip_range=4e-6, ratio="guard", beta=0.0, ema=True, ema_decay=0.9, ema_interval=8,
                      ema_schedule="paper", update_schedule="paper", lora_path=None),
        "timestep_fraction": 0.99, "adv_clip": 5.0, "global_std": False, "group_by": "prompt",
        "normalize": True, "reward": train_reward, "eval_every": 50, "save_every": 50,
        "targets": [(target[0], target[1], target[2], kind, noise, steps, target[3])],
    }


def _weights(spec):
    return {name: weight for name, (_, weight, _) in parse_spec(spec).items()}


def _ours(cfg):
    m, s, t, a = cfg.model, cfg.sampler, cfg.train, cfg.advantage
    pin = lookup_pinned(m.path)
    dataset = lambda path: "geneval" if "geneval" in path else "pickscore"  # noqa: E731
    return {
        "seed": cfg.run.seed, "model": (pin.repo_id, pin.revision), "text_layers": m.text_layers,
        "max_text_len": m.max_text_len, "lora": (m.lora_rank, m.lora_alpha, m.lora_init),
        "precision": m.precision, "allow_tf32": m.allow_tf32,
        "sampler": (s.kind, s.eta, s.num_steps, s.height, s.batch_size, s.images_per_prompt, s.num_batches_per_epoch,
                    s.same_initial_latent),
        "train": {key: getattr(t, key) for key in _paper("mix", "precise")["train"]},
        "timestep_fraction": cfg.algorithm.timestep_fraction, "adv_clip": a.clip, "global_std": a.global_std,
        "group_by": a.group_by, "normalize": cfg.reward.normalize, "reward": _weights(cfg.reward.spec),
        "eval_every": cfg.eval.every, "save_every": cfg.checkpoint.every,
        "targets": [(e.name, dataset(e.prompts), _weights(e.reward), e.kind, e.eta, e.num_steps, e.batch_size)
                    for e in cfg.eval.targets],
    }


@pytest.mark.parametrize("reward", ["mix", "pickscore", "geneval"])
@pytest.mark.parametrize("kind", KINDS)
def test_recipe_equals_the_papers_config(reward, kind):
    cfg = load_config(REPO / "configs" / "flux2_klein" / f"{reward}_{kind}.yaml")
    assert _ours(cfg) == _paper(reward, kind)
    assert all(e.num_prompts == 0 for e in cfg.eval.targets)  # the whole test set
    assert cfg.prompts.test == cfg.eval.targets[0].prompts


@pytest.mark.parametrize("recipe", ["mix_precise", "geneval_dance_grpo", "pickscore_cps"])
def test_print_config_shows_the_papers_values(recipe):
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--config", str(REPO / "configs" / "flux2_klein" / f"{recipe}.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(out.getvalue())
    reward, kind = recipe.split("_", 1)
    paper = _paper(reward, kind)
    assert printed["sampler"]["kind"] == kind and printed["sampler"]["eta"] == paper["sampler"][1]
    assert printed["train"]["gradient_accumulation_steps"] == 8 and printed["train"]["ema_schedule"] == "paper"
    assert printed["model"]["precision"] == "autocast_bf16" and printed["model"]["lora_targets"] == "paper"
    (target,) = printed["eval"]["targets"]
    assert (target["name"], target["kind"], target["eta"], target["num_steps"], target["batch_size"]) == (
        paper["targets"][0][0], kind, paper["targets"][0][4], 20, paper["targets"][0][6])


def test_tiny_cpu_configs_say_what_they_keep_faster():
    text = (REPO / "configs" / "tiny_cpu.yaml").read_text()
    assert "Faster than the paper's recipe on purpose" in text
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml")
    assert cfg.model.precision == "pure"
    assert (cfg.train.ema_schedule, cfg.train.update_schedule, cfg.model.lora_targets) == ("paper", "paper", "paper")
