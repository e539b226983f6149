"""Command line of the standalone evaluator (``precise-fast eval`` / ``python -m precise_fast.eval``).

One process, or the prompts sharded over ranks by the ``deepspeed`` launcher: ``--num-gpus G``
on this machine, ``--hostfile FILE`` or ``--num-nodes N --node-rank R --master-addr A`` over
nodes (:mod:`precise_fast.multinode`; ``--dry-run`` prints each node's command; CPU:
``DS_ACCELERATOR=cpu``). Examples::

    precise-fast eval runs/tiny_cpu            # base + every checkpoint on the run's targets -> runs/tiny_cpu/eval/
    precise-fast eval --ckpt-base runs/flux2_klein/mix_precise \\
        --eval-config '3000|precise|0|20|pickscore|{"pickscore": 1.0, "hpsv2": 1.0}' --out eval/mix

The model, sampler resolution and default targets come from ``--config`` or from the
``config.yaml`` the trainer left in the (first) run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

import yaml

from .. import exit_status
from ..multinode import (LaunchError, add_launcher_options, describe, fail, launcher_requested, node_command,
                         split_launcher_args)
from ..multinode import plan as plan_nodes
from ..train.config import ConfigError, EvalTarget, config_from_dict, load_config
from ..train.report.tracking import configure_logging
from ..train.supervise import run_job


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="precise-fast eval", description="Evaluate checkpoints on eval targets")
    p.add_argument("checkpoints", nargs="*", help="checkpoint folders or run folders (= all their checkpoints)")
    p.add_argument("--ckpt-base", action="append", default=[], metavar="DIR",
                   help="the paper's option: a run folder, paired with the --eval-config at the same position")
    p.add_argument("--eval-config", action="append", default=[], metavar="CFG",
                   help="the paper's 'STEP|SDE_TYPE|NOISE_LEVEL|NUM_STEPS|DATASET|{reward json}' (repeatable)")
    p.add_argument("--config", help="run config YAML (default: config.yaml of the first run folder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--targets", metavar="YAML", help="eval targets: a YAML list of eval.targets entries "
                   "(or a file with targets: / eval.targets:); default: the config's eval.targets, else one target "
                   "'test': all of prompts.test with the training sampler and reward")
    p.add_argument("--out", help="eval folder: items.jsonl, summary.json/.md, reward_vs_step.png, images/ "
                   "(default: eval/ in the first run folder)")
    p.add_argument("--no-base", action="store_true", help="do not evaluate the base model as step 0")
    p.add_argument("--weights", choices=("ema", "live"), default="ema", help="which exported LoRA of a checkpoint")
    p.add_argument("--batch-size", type=int, help="images per rank per batch, for every target")
    p.add_argument("--num-prompts", type=int, help="first N prompts of every target (default: the whole test set)")
    p.add_argument("--images-per-prompt", type=int, help="images per prompt, each with its own seed, for every "
                   "target (default: the target's; the paper's eval draws 1, GenEval's protocol 4)")
    p.add_argument("--seed", type=int, help="eval seed (default: the run's eval.seed, else its run.seed)")
    p.add_argument("--pretrained-model", help="base model folder or pinned id (default: the config's model.path)")
    p.add_argument("--save-images", action="store_true", help="also write every image as PNG under --out/images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    add_launcher_options(p, default_gpus=None)
    return p


def _config_path(args) -> Path:
    if args.config:
        return Path(args.config)
    for folder in [*args.checkpoints, *args.ckpt_base]:
        for candidate in (Path(folder), *Path(folder).parents):
            if (candidate / "config.yaml").is_file():
                return candidate / "config.yaml"
    raise SystemExit("eval: give --config (no config.yaml found in the run folders)")


def _out_dir(args) -> Path:
    if args.out:
        return Path(args.out)
    first = Path((args.checkpoints or args.ckpt_base)[0])
    if first.parent.name == "checkpoints":  # a checkpoint folder: its run's eval/
        first = first.parent.parent
    elif first.name == "checkpoints":
        first = first.parent
    return first / "eval"


def _yaml_targets(path: str) -> list:
    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict):
        data = data.get("targets", (data.get("eval") or {}).get("targets"))
    if not isinstance(data, list) or not data:
        raise SystemExit(f"eval: {path} must hold a non-empty list of targets (or targets: / eval.targets:)")
    return data


def plan(args):
    """``(cfg, jobs)`` from the arguments; errors are ``SystemExit`` with a one-line message."""
    overrides = list(args.overrides)
    if args.pretrained_model:
        overrides.append(f"model.path={args.pretrained_model}")
    try:
        cfg = load_config(_config_path(args), overrides)
        if args.targets:
            data = cfg.to_dict()
            data["eval"]["targets"] = _yaml_targets(args.targets)
            cfg = config_from_dict(data)
    except (ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"eval: config error: {err}") from None
    # The jobs and the evaluator import torch (seconds): --help and a config error answer without it.
    from ..train.report.evaluator import resolve_target
    from .jobs import BASE, EvalJobError, checkpoint_at, discover, parse_eval_config

    def adjust(t: EvalTarget) -> EvalTarget:
        changes = {}
        if args.batch_size:
            changes["batch_size"] = args.batch_size
        if args.num_prompts is not None:
            changes["num_prompts"] = args.num_prompts
        if args.images_per_prompt:
            changes["images_per_prompt"] = args.images_per_prompt
        return dataclasses.replace(t, **changes)

    jobs = []
    try:
        if args.eval_config or args.ckpt_base:
            if len(args.eval_config) != len(args.ckpt_base):
                raise EvalJobError(f"--ckpt-base ({len(args.ckpt_base)}) and --eval-config ({len(args.eval_config)}) "
                                   "must come in pairs, as in the paper's infer_eval.sh")
            for base, text in zip(args.ckpt_base, args.eval_config):
                step, target = parse_eval_config(text, batch_size=args.batch_size)
                jobs.append((checkpoint_at(base, step, args.weights), resolve_target(adjust(target), cfg)))
        if args.checkpoints:
            targets = [resolve_target(adjust(t), cfg) for t in (cfg.eval.targets or [EvalTarget(name="test")])]
            ckpts = [] if args.no_base else [BASE]
            for folder in args.checkpoints:
                ckpts += [c for c in discover(folder, args.weights) if c not in ckpts]
            jobs += [(c, t) for c in sorted(ckpts, key=lambda c: c.step) for t in targets]
    except (EvalJobError, ConfigError) as err:
        raise SystemExit(f"eval: {err}") from None
    if not jobs:
        raise SystemExit("eval: nothing to evaluate: give checkpoint/run folders or --ckpt-base with --eval-config")
    names = {}
    for c, t in jobs:
        if names.setdefault(t.name, t) != t:
            raise SystemExit(f"eval: two different targets are named {t.name!r}")
    return cfg, jobs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for flag in ("batch_size", "images_per_prompt"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise SystemExit(f"eval: --{flag.replace('_', '-')} must be >= 1")
        cfg, jobs = plan(args)
    except SystemExit as exc:  # plan's one-line refusals of bad input: exit 2, as a usage error
        if not isinstance(exc.code, str):
            raise
        print(exc.code, file=sys.stderr)
        raise SystemExit(2) from None
    if launcher_requested(args):
        return _launch(args, argv)
    # These import torch (seconds; deepspeed comes with init_distributed), so they load only
    # past --help, plan's one-line refusals and the launcher branch.
    from ..train.policy.distributed import broadcast_object, check_shared_folder, init_distributed
    from ..train.report.evaluator import eval_seed
    from .jobs import EvalJobError
    from .runner import run

    configure_logging(int(os.environ.get("RANK", 0)))
    if cfg.run.num_threads:
        import torch

        torch.set_num_threads(cfg.run.num_threads)
    dist = init_distributed(cfg.run.device, timeout_s=cfg.run.collective_timeout_s)
    # Rank 0's job list on every rank: each rank planned from its own view of the folders, and a
    # checkpoint written or pruned meanwhile (or a stale listing on another node) would leave
    # items of it unscored and its summary built from part of them.
    jobs = broadcast_object(jobs)
    out = _out_dir(args)
    try:
        check_shared_folder(out, "--out")  # every rank writes its items there, rank 0 merges them
    except ConfigError as err:
        if dist.is_main:
            print(f"eval: {err}", file=sys.stderr)
        return exit_status.BAD_INPUT
    try:
        summary = run(cfg, jobs, out, dist=dist, seed=eval_seed(cfg) if args.seed is None else args.seed,
                      weights=args.weights, save_images=args.save_images, progress=not args.no_progress)
    except EvalJobError as err:  # a checkpoint that went away while the eval ran
        if dist.is_main:
            print(f"eval: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if dist.is_main:
        n = sum(r["count"] for r in summary["results"])
        print(f"[precise_fast] eval done: {len(summary['results'])} (target, step) results over {n} images; "
              f"{out / 'summary.md'}", flush=True)
    return 0


def _launch(args, argv: list[str] | None) -> int:
    """This evaluation (already checked) under the ``deepspeed`` launcher, one process per GPU."""
    try:
        nodes = plan_nodes(args)
    except LaunchError as err:
        return fail("eval", err)
    _, rest = split_launcher_args(list(sys.argv[1:] if argv is None else argv))
    commands = [(r, node_command(args, nodes, r, "precise_fast.eval", rest)) for r in nodes.node_ranks]
    if args.dry_run:
        for r, cmd in commands:
            print(describe(nodes, r, args))
            print(shlex.join(cmd))
        return 0
    ((_, cmd),) = commands
    return run_job(cmd)  # a TERM or Ctrl-C here stops the ranks, not this process alone


if __name__ == "__main__":
    sys.exit(main())
