"""Command line of the trainer (``python -m precise_fast.train`` / ``precise-fast train``).

Launch with DeepSpeed (CPU: ``DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module
precise_fast.train --config configs/tiny_cpu.yaml``; GPU: ``deepspeed --num_gpus 8 ...``)
or as one plain process (``python -m precise_fast.train --config ...``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="precise-fast train", description="GRPO training on DeepSpeed ZeRO")
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from the latest checkpoint of this run (no value) or from a checkpoint / run folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    return parser


def _quiet_libraries(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("deepspeed", "DeepSpeed", "torch.distributed", "diffusers", "transformers", "peft", "precise_fast.rollout",
                 "precise_fast.models"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError, dump_config, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg))
        return 0
    _quiet_libraries(int(os.environ.get("RANK", 0)))
    from .distributed import init_distributed
    from .trainer import Trainer

    dist = init_distributed(cfg.run.device)
    trainer = Trainer(cfg, dist, resume=args.resume)
    try:
        trainer.run()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
