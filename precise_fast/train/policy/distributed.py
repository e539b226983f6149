"""Process-group setup for the ``deepspeed`` launcher or a plain single process, and collectives.

Launched by ``deepspeed`` the environment carries RANK / WORLD_SIZE / MASTER_ADDR; run as a
plain process it gets a one-rank group on a free local port, so the same code path (and
the same DeepSpeed engine) serves both. CPU runs use gloo with DeepSpeed's CPU accelerator,
CUDA runs NCCL.
"""

from __future__ import annotations

import datetime
import importlib
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local_rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if local_rank >= count:
        # The launcher started more processes on this host than it has GPUs (precise-fast
        # train's default is the paper's 8): say so before NCCL's "invalid device ordinal".
        raise RuntimeError(f"LOCAL_RANK {local_rank} but this host shows {count} CUDA device(s): "
                           f"start at most {count} processes per node (--num-gpus {count})")
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Initialise (once) the default process group and DeepSpeed's communication backend.

    ``timeout_s`` (``run.collective_timeout_s``; None: PyTorch's 30 minutes) bounds every wait
    on another rank: the rendezvous, a collective, a barrier. A rank whose peer died with its
    sockets closed (a killed process, a rebooted node) fails at its next collective at once
    (gloo: "Connection closed by peer"); one whose peer went silent (a frozen or unplugged
    node) fails after ``timeout_s`` (gloo's per-operation timeout; NCCL's watchdog aborts the
    communicator and the process). Either way it exits non-zero, and so does its launcher.
    """
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    device = pick_device(requested_device)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # here: it picks its accelerator from DS_ACCELERATOR at import (set just above)

    if device.type == "cpu":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce at init (minutes
        # on 2 cores: 280 s measured here under load) that only its inference all-reduce
        # uses; training collectives go through gloo. Skip the build.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if not torch.distributed.is_initialized():
        kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl", **kwargs)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        device=device,
    )


def check_shared_folder(folder: str | os.PathLike, what: str) -> None:
    """Every rank must see what rank 0 writes in ``folder`` (a run or eval folder: rank 0
    publishes checkpoints and merges files the other ranks wrote there). Rank 0 creates
    ``folder`` and a file of a fresh name in it; a rank that cannot see it, as on a node whose
    folder is a local disk, raises on every rank, before any model loads. A fresh name: an
    NFS client may have cached the absence of an old one."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return
    path = Path(folder)
    probe = path / f".shared-{broadcast_object(secrets.token_hex(8))}"
    problem = ""
    if torch.distributed.get_rank() == 0:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
        except OSError as err:  # e.g. a regular file there: every rank must hear it, not wait for rank 0
            problem = f"{what}: rank 0 cannot write into {path} ({err.strerror})"
    problem = broadcast_object(problem)  # also the barrier: the probe exists before anyone looks
    if problem:
        finish_distributed()
        raise ConfigError(problem)
    blind = torch.tensor([0 if probe.is_file() else 1 + torch.distributed.get_rank()], dtype=torch.int64)
    all_reduce_max_(blind)
    if torch.distributed.get_rank() == 0:
        probe.unlink()
    if int(blind):
        # Every rank knows, so every rank ends the group in step: left to interpreter exit, a
        # rank whose peer closed first aborted in gloo's teardown (exit 250 instead of 2, measured).
        finish_distributed()
        raise ConfigError(f"{what}: {path} is not shared by every node: rank {int(blind) - 1} does not see what rank 0 "
                          "wrote there (every rank writes its share into this folder; docs/SCALING.md)")


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def finish_distributed() -> None:
    """Ends the process group in step on every rank at the end of a finished or stopped run
    (a stop is agreed on every rank at one safe point, so all of them get here).

    Left to interpreter exit, gloo's connection threads are torn down in whatever order the
    interpreter frees them, while the peer rank may already have closed its sockets. The
    2-rank resume test once saw a rank abort ("terminate called without an active exception",
    exit status -6, which the launcher reports as 250; not reproduced in 8 further launches);
    this exit-time race is the likely cause, and PyTorch asks for ``destroy_process_group``
    before exit. The barrier first: no rank tears down while another still talks to it.
    """
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _comm_device(t: torch.Tensor) -> torch.device:
    """gloo reduces CPU tensors, NCCL CUDA ones; callers may hand either."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate the equally-shaped ``t`` of every rank along dim 0, in rank order."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return t.clone()
    dev = _comm_device(t)
    src = t.detach().contiguous().to(dev)
    parts = [torch.empty_like(src) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, src)
    return torch.cat(parts).to(t.device)


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` or ``max``) that also works for gloo with CUDA tensors."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return t
    reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}[op]
    dev = _comm_device(t)
    buf = t.to(dev)
    torch.distributed.all_reduce(buf, op=reduce_op)
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_(t, "max")


def broadcast_object(obj, src: int = 0):
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
