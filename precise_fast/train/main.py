"""Command line of the trainer (``python -m precise_fast.train`` / ``precise-fast train``).

Launch with DeepSpeed (CPU: ``DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module
precise_fast.train --config configs/tiny_cpu.yaml``; GPU: ``deepspeed --num_gpus 8 ...``)
or as one plain process (``python -m precise_fast.train --config ...``). ``make train`` goes
through :mod:`precise_fast.train.supervise`, which stops the ranks cleanly on TERM / INT.

Exit status (docs/RELIABILITY.md): 0 done; 2 bad input (config, prompts, rewards, checkpoint
to resume, run folder, full disk: one line naming the file or key, no traceback); 3 the run
cannot train (nothing trained, rewards failing); 128 + N stopped by signal N at a safe point
(143 TERM, 130 INT); anything else is a crash (a bug: its traceback is kept).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from .. import exit_status
from ..model_paths import WeightsNotFoundError
from ..prompts import PromptError
from .config import ConfigError, dump_config, load_config
from .lifecycle.health import TrainingHealthError
from .lifecycle.run_lock import RunLockError, acquire_agreed
from .report.tracking import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="precise-fast train", description="GRPO training on DeepSpeed ZeRO")
    parser.add_argument("--config", required=True, help="run config YAML (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="continue from the latest checkpoint of this run (no value) or from a checkpoint / run folder; "
                            "an error when there is none")
    start.add_argument("--resume-or-start", action="store_true",
                       help="continue from the latest checkpoint, or start fresh when the run has none yet")
    start.add_argument("--fresh", action="store_true",
                       help="start fresh even when run.output_dir holds a run: that run moves to <output_dir>/previous/<time>/ "
                            "first (nothing is deleted; without --fresh such a start is refused)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    return parser


def input_error_message(err: BaseException) -> str | None:
    """One line for an error in the user's input or machine (not a bug), else None.

    Kept to the project's own error types, each of which names its file or key, so a bug
    still shows its traceback."""
    # The state modules import torch, which main loads only after the config is read: a
    # CheckpointError or RunFolderError can only come from a run that imported them already.
    from .state.checkpoint import CheckpointError
    from .state.resume import RunFolderError

    if isinstance(err, (ConfigError, CheckpointError, RunFolderError, RunLockError, PromptError, WeightsNotFoundError)):
        return str(err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on {err.filename or 'the device'} ({err.strerror})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", 0))  # set by the launcher; the process group comes later
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        if rank == 0:  # every rank reads the same file: say it once
            print(f"[precise_fast] error: {err}", file=sys.stderr)
        return exit_status.BAD_INPUT
    if args.print_config:
        print(dump_config(cfg))
        return 0
    configure_logging(rank)
    # torch, deepspeed and the trainer load only from here on (seconds): --help, --print-config
    # and a config error above answer without them.
    import torch.distributed

    from .lifecycle.signals import StopRequest, StopRequested
    from .policy.distributed import all_reduce_max_, broadcast_object, check_shared_folder, finish_distributed, init_distributed
    from .state.checkpoint import DiskFullError
    from .trainer import Trainer

    stop = StopRequest(all_reduce_max_)  # before the slow start: a TERM while loading stops at the first safe point
    trainer = run_lock = None
    owns_group = not torch.distributed.is_initialized()  # in-process callers (tests) may bring their own
    exit_code = 0
    try:
        dist = init_distributed(cfg.run.device, timeout_s=cfg.run.collective_timeout_s)
        check_shared_folder(cfg.run.output_dir, "run.output_dir")
        # One run per folder (global rank 0 holds the lock for the run's life; the others
        # learn its decision), taken before the start is chosen: that may move files aside.
        run_lock = acquire_agreed(cfg.run.output_dir, is_main=dist.is_main, broadcast=broadcast_object,
                                  warn=logging.getLogger("precise_fast.train").warning)
        trainer = Trainer(cfg, dist, resume=args.resume, resume_or_start=args.resume_or_start, fresh=args.fresh, stop=stop)
        trainer.run()
    except StopRequested as err:
        if rank == 0:
            print(f"[precise_fast] {err}; resume with --resume", file=sys.stderr, flush=True)
        # Every rank agreed on this stop at the same safe point (StopRequest.agreed is a
        # collective), so all of them reach finish_distributed below, as after a finished run.
        # Returning here skipped it, and the 2-rank TERM test saw the exit-time gloo abort
        # ("terminate called without an active exception", rc 250) in 2 of ~25 launches.
        exit_code = err.exit_code
    except TrainingHealthError as err:  # nothing trained, rewards failing, diverged
        if rank == 0:
            print(f"[precise_fast] error: {err}", file=sys.stderr, flush=True)
        # Each of these is decided from all-reduced figures, so every rank raises it at the
        # same point and all can end the process group together, as after a stop.
        exit_code = exit_status.CANNOT_TRAIN
    except Exception as err:
        message = input_error_message(err)
        if message is None:
            raise
        if rank == 0 or isinstance(err, (OSError, DiskFullError)):  # else the same collective error on every rank
            print(f"[precise_fast] error: {message}", file=sys.stderr, flush=True)
        return exit_status.BAD_INPUT
    finally:
        if trainer is not None:
            trainer.close()
        if run_lock is not None:
            run_lock.release()
        stop.restore()
    if owns_group:
        finish_distributed()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
