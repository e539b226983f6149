"""Command line: ``precise-fast <command>`` (or ``python -m precise_fast.cli``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="precise-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    laws = sub.add_parser("laws", help="table + plot of every sampler's marginal laws")
    laws.add_argument("--out", default="outputs/laws", help="folder for laws.png")
    laws.add_argument("--q", type=float, default=1.0, help="variance of the Gaussian data")

    sub.add_parser("bandwidth", help="print this machine's streaming memory bandwidth")

    sub.add_parser("train", add_help=False,
                   help="GRPO training: --config FILE runs the trainer here; --reward R --sde S (or --config FILE "
                        "with --num-gpus / --hostfile / --num-nodes) launches under deepspeed (precise-fast train --help)")
    sub.add_parser("eval", add_help=False, help="evaluate checkpoints (precise-fast eval --help)")

    args, rest = parser.parse_known_args(argv)
    # Each command imports its own modules when it runs: the dispatcher itself loads argparse
    # only (3 ms), where the commands' modules together take ~80 ms (config schema, yaml) and
    # laws imports torch (seconds); bandwidth's module lives in bench/, outside the package.
    if args.command == "train":
        from .multinode import LAUNCH_OPTIONS

        launcher = ("--reward", "--sde", *LAUNCH_OPTIONS)  # else --config runs the trainer in this process
        if any(a.split("=")[0] in launcher for a in rest) or rest in (["-h"], ["--help"]):
            from .launch import main as launch_main

            return launch_main(rest)
        from .train.main import main as train_main

        return train_main(rest)
    if args.command == "eval":
        from .eval.cli import main as eval_main

        return eval_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "laws":
        from .demos.laws import run

        run(args.out, args.q)
    elif args.command == "bandwidth":
        import json
        import os

        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
        from bandwidth import machine_info, stream_bandwidth_gbs

        print(json.dumps({"stream_add_gbs": round(stream_bandwidth_gbs(), 2), "machine": machine_info()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
