"""The paper-style launcher: ``precise-fast train --reward R --sde S [--noise-level X] [--steps N] [--num-gpus G]``.

It does what Tencent-Hunyuan/Precise ``launch/train.sh`` does, for our trainer: the
selectors pick the recipe ``configs/flux2_klein/<reward>_<sde>.yaml``; ``--noise-level``
becomes ``sampler.eta`` and ``--steps`` ``sampler.num_steps`` (the paper's ``--step`` sets
the training and the eval denoising steps: eval targets that leave ``num_steps`` unset
inherit it); then the ``deepspeed`` launcher runs ``precise_fast.train`` on G processes
(``--dry-run`` prints that command and exits). Arguments after ``--`` go to the trainer.

When the recipe's reward talks to a GenEval server on this machine (127.0.0.1 /
localhost) and nothing answers its health check, the launcher starts ours
(``precise_fast.rewards.servers.geneval_server``) there, waits until it reports healthy,
and stops it when training ends; ``PRECISE_SDE_AUTO_START_GENEVAL=0`` (the paper's switch)
or ``--no-geneval-server`` turn that off.

``--config FILE`` instead of the selectors launches any run config the same way. Several
nodes (:mod:`precise_fast.multinode`, docs/SCALING.md): ``--hostfile FILE`` (ssh) or
``--num-nodes N --node-rank R --master-addr A`` on every node (no ssh). Each node's ranks
reach the GenEval server on their own loopback, so in no-ssh mode every node's launcher
starts (or reuses) its own; one launcher over ssh cannot start servers on the other hosts,
so there it refuses unless ``--no-geneval-server`` says they run already.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .kinds import STOCHASTIC_KINDS
from .multinode import LaunchError, add_launcher_options, describe, fail, node_command, plan
from .train.config import ConfigError, load_config
from .train.supervise import run_job

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "configs" / "flux2_klein"
REWARDS = ("mix", "pickscore", "geneval")
SDES = STOCHASTIC_KINDS  # the recipes' sampler kinds, configs/flux2_klein/<reward>_<sde>.yaml
AUTO_START_ENV = "PRECISE_SDE_AUTO_START_GENEVAL"
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="precise-fast train", description=__doc__.split("\n\n")[0],
                                epilog="With --config and no launcher option, the trainer runs in this process "
                                       "(python -m precise_fast.train --help). Several nodes: docs/SCALING.md.")
    p.add_argument("--reward", choices=REWARDS)
    p.add_argument("--sde", choices=SDES)
    p.add_argument("--config", help="a run config instead of the --reward / --sde recipe")
    p.add_argument("--noise-level", type=float, help="sampler.eta (default: the recipe's, else the kind's paper noise level)")
    p.add_argument("--steps", "--step", dest="steps", type=int, help="denoising steps of training and eval")
    add_launcher_options(p, default_gpus=8)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="more config overrides (repeatable)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, help="passed to the trainer")
    p.add_argument("--no-geneval-server", action="store_true", help="never start a local GenEval server")
    return p


def recipe_path(reward: str, sde: str) -> Path:
    path = RECIPES / f"{reward}_{sde}.yaml"
    if not path.is_file():
        raise SystemExit(f"train: no recipe {path}")
    return path


def config_path(args) -> Path:
    """The run config to launch: ``--config``, else the recipe the selectors pick."""
    if args.config:
        if args.reward or args.sde:
            raise LaunchError("give --config or --reward / --sde, not both")
        return Path(args.config)
    if not (args.reward and args.sde):
        raise LaunchError("give --reward and --sde (a recipe), or --config FILE")
    return recipe_path(args.reward, args.sde)


def overrides_for(args) -> list[str]:
    out = []
    if args.noise_level is not None:
        out.append(f"sampler.eta={args.noise_level}")
    if args.steps is not None:
        out.append(f"sampler.num_steps={args.steps}")
    return out + list(args.overrides)


def _shown(path: Path, base: Path | None = None) -> str:
    """Relative to ``base`` (the working directory: shorter commands) when below it, else as given."""
    try:
        return str(path.resolve().relative_to((Path.cwd() if base is None else base).resolve()))
    except ValueError:
        return str(path)


def trainer_args_for(args, trainer_args: list[str]) -> list[str]:
    out = ["--config", _shown(config_path(args))]
    for o in overrides_for(args):
        out += ["--set", o]
    if args.resume:
        out += ["--resume", args.resume]
    return out + trainer_args


# ----------------------------------------------------------------------------- GenEval server


def local_geneval_url(cfg) -> str | None:
    """The URL of the GenEval server the reward needs, when it is on this machine; else None."""
    # The rewards package imports torch (seconds): --help, the launcher's refusals and a launch
    # with --no-geneval-server do without it.
    from .rewards.registry import parse_spec
    from .rewards.remote.env_urls import urls_from_env

    for _, (scorer, _, options) in parse_spec(cfg.reward.spec).items():
        if scorer not in ("geneval", "geneval_paper"):
            continue
        urls = options.get("urls") or urls_from_env("geneval")
        urls = [urls] if isinstance(urls, str) else list(urls)
        for url in urls:
            if urllib.parse.urlparse(url).hostname in LOCAL_HOSTS:
                return url.rstrip("/")
    return None


def health(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """``(answers, detail)``: ``answers`` when something listens; detail is its health reply."""
    # Lazy as in local_geneval_url: the rewards package imports torch.
    from .rewards.servers.geneval_server import HEALTH_PATH

    try:
        with urllib.request.urlopen(url + HEALTH_PATH, timeout=timeout) as reply:  # noqa: S310 - a local URL
            return True, reply.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return True, f"HTTP {err.code}: {err.read(2000).decode('utf-8', 'replace')}"
    except (urllib.error.URLError, OSError):
        return False, "nothing answers"


def server_command(url: str) -> list[str]:
    parsed = urllib.parse.urlparse(url)
    return [sys.executable, "-m", "precise_fast.rewards.servers.geneval_server", "--host", "127.0.0.1",
            "--port", str(parsed.port or 80)]


@contextlib.contextmanager
def geneval_server(url: str, command: list[str] | None = None, *, wait_s: float = 120.0, poll_s: float = 0.5):
    """Reuse a healthy server at ``url`` or start ``command`` (ours by default) and wait for it;
    the server started here is stopped on exit. An unhealthy answer is an error."""
    answers, detail = health(url)
    if answers:
        if not detail.startswith("HTTP"):
            print(f"[precise_fast] reusing the GenEval server at {url}", flush=True)
            yield None
            return
        raise SystemExit(f"train: the GenEval server at {url} answers but is not healthy: {detail}")
    command = command or server_command(url)
    print(f"[precise_fast] starting a GenEval server: {shlex.join(command)}", flush=True)
    proc = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            answers, detail = health(url)
            if answers and not detail.startswith("HTTP"):
                break
            if answers or proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"train: the GenEval server we started at {url} did not become healthy ({detail}; "
                                 f"exit code {proc.poll()})")
            time.sleep(poll_s)
        print(f"[precise_fast] GenEval server healthy at {url}", flush=True)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, trainer_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    try:
        recipe = config_path(args)
        nodes = plan(args)
        cfg = load_config(recipe, overrides_for(args))
    except LaunchError as err:
        return fail("train", err)
    except ConfigError as err:
        raise SystemExit(f"train: config error: {err}") from None
    url = None if args.no_geneval_server or os.environ.get(AUTO_START_ENV, "1") != "1" else local_geneval_url(cfg)
    if url and nodes.mode == "ssh" and nodes.num_nodes > 1:
        return fail("train", LaunchError(
            f"the reward needs a GenEval server at {url} on every node, and one launcher over ssh starts none on the "
            "other hosts: launch in no-ssh mode (--node-rank; each node's launcher starts one), or start one per node "
            "and pass --no-geneval-server"))
    module_args = trainer_args_for(args, trainer_args)
    commands = [(r, node_command(args, nodes, r, "precise_fast.train", module_args)) for r in nodes.node_ranks]
    if args.dry_run:
        print(json.dumps({"recipe": _shown(recipe, REPO_ROOT), "overrides": overrides_for(args), "geneval_server": url,
                          "nodes": nodes.num_nodes, "mode": nodes.mode}))
        if url:
            where = "on each node" if nodes.num_nodes > 1 else "here"
            print(f"# {where}, if nothing answers at {url}/health: {shlex.join(server_command(url))}")
        for r, cmd in commands:
            if nodes.mode != "local":
                print(describe(nodes, r, args))
            print(shlex.join(cmd))
        return 0
    ((_, cmd),) = commands
    with geneval_server(url) if url else contextlib.nullcontext():
        return run_job(cmd)  # a TERM or Ctrl-C here stops the ranks at a safe point


if __name__ == "__main__":
    sys.exit(main())
