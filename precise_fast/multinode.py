"""The ``deepspeed`` launcher's command for this machine or for N nodes (``precise-fast train`` / ``eval``).

Three ways to start, each one of DeepSpeed's own (``deepspeed/launcher/runner.py``):

- one node: ``deepspeed --num_gpus G --module ...`` (the default); under ``CUDA_VISIBLE_DEVICES``,
  ``deepspeed --include localhost:IDS`` instead (given ``--num_gpus``, deepspeed drops that
  variable and runs on GPUs 0..G-1);
- ``--hostfile FILE``: one launcher on the first host starts every host of the file over ssh
  (pdsh); ``--num-nodes N`` keeps the file's first N hosts;
- no ssh (``--num-nodes N --node-rank R --master-addr A``): every node starts its own
  launcher (``deepspeed --no_ssh --node_rank R``; what SLURM's ``srun`` does, one task per
  node). DeepSpeed reads the node count and each node's process count from a hostfile even
  then; without ``--hostfile`` we write one of N lines ``node-i slots=G`` (in no-ssh mode the
  names are never resolved, only counted).

Global ranks follow the hostfile's order: node R holds ranks R*G .. R*G+G-1 (DeepSpeed's
``launch.py``), so every node must be given the same N and G. ``--dry-run`` prints each
node's command.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import exit_status

LAUNCH_OPTIONS = ("--num-gpus", "--hostfile", "--num-nodes", "--node-rank", "--master-addr", "--master-port", "--dry-run")


class LaunchError(ValueError):
    """Launcher options that cannot start a job (one line, exit status 2)."""


def add_launcher_options(p: argparse.ArgumentParser, *, default_gpus: int | None) -> None:
    gpus = f"default {default_gpus}" if default_gpus else "default: one process, no launcher"
    # The default applies where no hostfile gives the slots (plan): passed over a hostfile's
    # "slots=4", deepspeed would start 8 processes on every host.
    p.set_defaults(default_gpus=default_gpus)
    p.add_argument("--num-gpus", type=int, help=f"processes per node ({gpus}; with --hostfile: its slots)")
    p.add_argument("--hostfile", help="DeepSpeed hostfile ('host slots=G' lines): one launcher here starts every host over ssh; "
                                     "with --node-rank, the node list of the no-ssh mode")
    p.add_argument("--num-nodes", type=int, help="nodes of the job (with --hostfile: its first N hosts)")
    p.add_argument("--node-rank", type=int, help="no-ssh mode: this node's index in [0, N); every node runs this command "
                                                 "with its own --node-rank")
    p.add_argument("--master-addr", help="address of node 0, reachable from every node (no-ssh mode: required)")
    p.add_argument("--master-port", type=int, help="rendezvous port on node 0 (default: deepspeed's 29500)")
    p.add_argument("--dry-run", action="store_true", help="print the command of every node and exit")


def split_launcher_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``(launcher options, the other arguments in their order)``: the ranks get the latter."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_launcher_options(p, default_gpus=None)
    return p.parse_known_args(argv)


def launcher_requested(args) -> bool:
    """Whether the options ask for the launcher (eval runs in this process otherwise)."""
    return any(getattr(args, name) is not None for name in ("num_gpus", "hostfile", "num_nodes", "node_rank", "master_addr",
                                                            "master_port")) or bool(getattr(args, "dry_run", False))


@dataclass(frozen=True)
class Plan:
    mode: str  # "local", "ssh" or "no_ssh"
    num_nodes: int
    num_gpus: int | None
    hostfile: str | None  # as given, or the one written for the no-ssh mode
    node_ranks: tuple[int, ...]  # the nodes whose commands this call prints or runs
    include: str | None = None  # local mode under CUDA_VISIBLE_DEVICES: deepspeed's --include (no --num_gpus)


_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")  # deepspeed/launcher/runner.py's hostfile rule


def _hosts(path: str) -> list[tuple[str, int]]:
    """The hostfile's ``(host, slots)`` as DeepSpeed reads it (``runner._parse_hostfile``: one
    ``HOST slots=N`` per line, ``#`` comments). Read here rather than through DeepSpeed: its
    import logs the accelerator it picked to stdout, into what ``--dry-run`` prints."""
    if not Path(path).is_file():
        raise LaunchError(f"--hostfile {path}: no such file")
    hosts: dict[str, int] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _HOST_LINE.search(line)
        if match is None or match.group(1) in hosts:
            problem = "a second entry for its host" if match else "not 'HOST slots=N'"
            raise LaunchError(f"--hostfile {path}: line {number} {line!r} is {problem}")
        hosts[match.group(1)] = int(match.group(2))
    if not hosts:
        raise LaunchError(f"--hostfile {path}: no 'HOST slots=N' line")
    return list(hosts.items())


def plan(args) -> Plan:
    """Check the options (one-line :class:`LaunchError`) and say which nodes run what."""
    for name in ("num_gpus", "num_nodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LaunchError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    hosts = _hosts(args.hostfile) if args.hostfile else None
    gpus = args.num_gpus if args.num_gpus is not None or hosts else getattr(args, "default_gpus", None)
    if hosts is not None and args.num_nodes is not None and args.num_nodes > len(hosts):
        raise LaunchError(f"--num-nodes {args.num_nodes}: {args.hostfile} lists {len(hosts)} hosts")
    nodes = args.num_nodes or (len(hosts) if hosts else 1)
    if args.node_rank is not None:
        if not args.master_addr:
            raise LaunchError("--node-rank (no-ssh mode) needs --master-addr: node 0's address, the same on every node")
        if hosts is None and args.num_nodes is None:
            raise LaunchError("--node-rank (no-ssh mode) needs --num-nodes N (or a --hostfile listing the nodes)")
        if not 0 <= args.node_rank < nodes:
            raise LaunchError(f"--node-rank {args.node_rank}: must lie in [0, {nodes}) for {nodes} nodes")
        if hosts is None and gpus is None:
            raise LaunchError("--node-rank without --hostfile needs --num-gpus (processes on every node)")
        ranks = tuple(range(nodes)) if args.dry_run else (args.node_rank,)
        hostfile = args.hostfile or str(no_ssh_hostfile(nodes, gpus, write=not args.dry_run))
        return Plan("no_ssh", nodes, gpus, hostfile, ranks)
    if hosts is not None:
        return Plan("ssh", nodes, gpus, args.hostfile, (0,))
    if nodes > 1:
        raise LaunchError(f"--num-nodes {nodes}: give --hostfile (one launcher starts every node over ssh) or "
                          "--node-rank R --master-addr A on every node (no-ssh mode)")
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible:
        # deepspeed drops CUDA_VISIBLE_DEVICES when --num_gpus is given and runs on GPUs 0..G-1:
        # name the chosen devices instead (all of them unless --num-gpus picks the first G).
        count = args.num_gpus if args.num_gpus is not None else len(visible)
        if count > len(visible):
            raise LaunchError(f"--num-gpus {count}: CUDA_VISIBLE_DEVICES={','.join(visible)} shows {len(visible)} devices")
        return Plan("local", 1, count, None, (0,), include="localhost:" + ",".join(visible[:count]))
    return Plan("local", 1, gpus, None, (0,))


def no_ssh_hostfile(num_nodes: int, num_gpus: int, *, write: bool = True) -> Path:
    """A hostfile of ``num_nodes`` placeholder hosts of ``num_gpus`` slots, in this node's temp folder.

    Its content depends on (N, G) only, so the command is the same on every node but for
    ``--node_rank``; written through a rename, as several launchers on one machine (the
    tests' two nodes) may write it at once."""
    path = Path(tempfile.gettempdir()) / f"precise_fast-hostfile-{num_nodes}x{num_gpus}"
    if write:
        text = "".join(f"node-{i} slots={num_gpus}\n" for i in range(num_nodes))
        if not path.is_file() or path.read_text() != text:
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
    return path


def deepspeed_executable() -> str:
    beside = Path(sys.executable).parent / "deepspeed"
    return str(beside) if beside.is_file() else "deepspeed"


def node_command(args, p: Plan, node_rank: int, module: str, module_args: list[str]) -> list[str]:
    """The ``deepspeed`` command node ``node_rank`` runs (in ssh mode: node 0, which starts the rest)."""
    cmd = [deepspeed_executable()]
    if p.hostfile:
        cmd += ["--hostfile", p.hostfile]
    if p.mode == "no_ssh":
        cmd += ["--no_ssh", "--node_rank", str(node_rank)]
    if p.mode != "local" and args.num_nodes is not None:
        cmd += ["--num_nodes", str(args.num_nodes)]
    if p.include is not None:
        cmd += ["--include", p.include]
    elif p.num_gpus is not None:
        cmd += ["--num_gpus", str(p.num_gpus)]
    if args.master_addr:
        cmd += ["--master_addr", args.master_addr]
    if args.master_port:
        cmd += ["--master_port", str(args.master_port)]
    return cmd + ["--module", module, *module_args]


def describe(p: Plan, node_rank: int, args) -> str:
    """The comment line ``--dry-run`` prints above a node's command."""
    if p.mode == "local":
        return "# this machine"
    if p.mode == "ssh":
        return f"# on the first host of {p.hostfile}: it starts all {p.num_nodes} nodes over ssh (pdsh)"
    mine = ", this node's" if node_rank == args.node_rank else ""
    return f"# node {node_rank} of {p.num_nodes} (no ssh: every node runs its own line{mine})"


def fail(prog: str, err: Exception) -> int:
    print(f"{prog}: {err}", file=sys.stderr)
    return exit_status.BAD_INPUT
