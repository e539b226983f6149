"""How much of the GRPO gradient is signal, at the base weights of the shapes world.

Why RL on the toy GenEval reward does not learn (issue 11): this measures it. The trainer
runs its real epochs (sampling, rewards, advantages, the GRPO loss) with a learning rate of
1e-30, so the weights stay at the base and every optimizer step's gradient (one minibatch of
``train.batch_size`` samples) is treated as an independent draw of the same random vector g
(approximately: minibatches of one epoch share their groups' reward means). From n of them:

- signal  |E g|^2, unbiased: (|sum g|^2 - sum |g|^2) / (n (n - 1));
- noise   E |g - E g|^2 (sample variance, summed over coordinates);
- ``minibatches_for_snr1`` = noise / signal: how many minibatches one update must average
  before its direction is more signal than noise (negative: no signal detected);
- ``halfcos``: the cosine between the summed gradients of two random halves (mean over 50
  splits); near 0 when the halves share no direction.

    .venv/bin/python bench/gradient_snr.py --epochs 8 --out bench/results/gradient_snr_cpu.json \
        --case geneval= --case same_initial_latent=sampler.same_initial_latent=true \
        --case jpeg_control=reward.spec=jpeg_incompressibility

Each case is ``NAME=KEY=VALUE[,KEY=VALUE...]`` over configs/toy/shapes_precise.yaml, one rank.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bandwidth import machine_info  # noqa: E402

from precise_fast.toy.pretrain import MODEL_DIR  # noqa: E402
from precise_fast.toy.protocol import MAIN_JOB_CONFIG as CONFIG, one_rank_epoch  # noqa: E402
from precise_fast.train.config import load_config  # noqa: E402
from precise_fast.train.policy.distributed import init_distributed  # noqa: E402
from precise_fast.train.trainer import Trainer  # noqa: E402

# Weights frozen in place: no step moves them, no clipping rescales a minibatch's gradient.
# After one_rank_epoch(): accumulation 1 overrides its 2, so every minibatch is one recorded step.
FROZEN = ["train.lr=1e-30", "train.beta=0", "train.ema=false", "train.max_grad_norm=1e9", "train.weight_decay=0",
          "train.gradient_accumulation_steps=1", "eval.every=0", "eval.at_start=false", "checkpoint.every=0",
          "checkpoint.export_lora=false", "log.image_every=0", "log.progress=false"]


def record_gradients(trainer: Trainer) -> list[torch.Tensor]:
    """Wrap this trainer's optimizer so each step first stores its flattened gradient."""
    grads: list[torch.Tensor] = []
    optimizer = trainer.policy.optimizer
    step = optimizer.step

    def recording_step(closure=None):
        grads.append(torch.cat([p.grad.detach().flatten().double() for g in optimizer.param_groups for p in g["params"]
                                if p.grad is not None]))
        return step(closure)

    optimizer.step = recording_step
    return grads


def signal_to_noise(grads: list[torch.Tensor], splits: int = 50) -> dict:
    g = torch.stack(grads)
    n = g.shape[0]
    total = g.sum(0)
    signal = float((total.dot(total) - (g * g).sum()) / (n * (n - 1)))
    noise = float(((g - g.mean(0)) ** 2).sum() / (n - 1))
    gen = torch.Generator().manual_seed(0)
    cosines = []
    for _ in range(splits):
        order = torch.randperm(n, generator=gen)
        a, b = g[order[: n // 2]].sum(0), g[order[n // 2 :]].sum(0)
        cosines.append(float(a.dot(b) / (a.norm() * b.norm())))
    return {"minibatches": n, "signal": signal, "noise": noise, "minibatches_for_snr1": noise / signal if signal else float("inf"),
            "halfcos": sum(cosines) / splits}


def run_case(overrides: list[str], epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(CONFIG, [f"model.path={MODEL_DIR}", f"run.output_dir={out}", f"run.epochs={epochs}",
                                   *one_rank_epoch(), *FROZEN, *overrides])
        trainer = Trainer(cfg, init_distributed("cpu"))
        grads = record_gradients(trainer)
        start = time.perf_counter()
        try:
            trainer.run()
        finally:
            trainer.close()
        result = signal_to_noise(grads)
        result.update(samples_per_minibatch=cfg.train.batch_size, seconds=round(time.perf_counter() - start, 1))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--case", action="append", required=True, help="NAME=KEY=VALUE[,KEY=VALUE...] (NAME= for none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    report = {"machine": f"{info['cpu']}, {info['logical_cores']} cores", "load_average_start": os.getloadavg(),
              "torch": torch.__version__, "threads": 1, "epochs": args.epochs, "cases": {}}
    for case in args.case:
        name, _, rest = case.partition("=")
        overrides = [o for o in rest.split(",") if o]
        report["cases"][name] = {"overrides": overrides, **run_case(overrides, args.epochs)}
        print(name, json.dumps(report["cases"][name]), flush=True)
    report["load_average_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
