"""Two nodes on one machine (issue 27): ``precise-fast train / eval`` launched as a user on N
nodes launches them, with DeepSpeed's no-ssh mode (two launcher processes, ``--node-rank``
0 and 1, gloo on 127.0.0.1), against the one-node runs of the same config.

Three training launches of the shapes world (configs/toy/shapes_precise.yaml, 2 sampling
batches of 8 per rank and epoch, so 2 optimizer steps per epoch), shared by the tests:

- B: one node, two ranks, 3 epochs, a checkpoint every epoch;
- K: two nodes of one rank each, sharing the run folder; node 1 is killed (its whole process
  group, as a lost machine) after its first optimizer step of epoch 3, mid-epoch;
- R: K's run resumed on one node with two ranks, to the end.

K's epochs 1-2 and R's epoch 3 must equal B bit for bit (weights, optimizer partitions, EMA,
every rank's RNG state, metrics but timings).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from precise_fast import cli
from precise_fast.train.state.checkpoint import list_checkpoints, verify_checkpoint

from ..child_env import child_env
from ..train.test_distributed import _equal, _state

REPO = Path(__file__).resolve().parents[2]
TOY = "configs/toy/shapes_precise.yaml"
TIMEOUT_S = 60  # run.collective_timeout_s of these runs: the bound on a rank outliving a lost peer
RUN = ("run.epochs=3", "sampler.num_batches_per_epoch=2", "eval.every=0", "eval.at_start=false", "log.progress=false",
       "log.image_every=0", "checkpoint.every=1", "checkpoint.keep_last=5", f"run.collective_timeout_s={TIMEOUT_S}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], log: Path, **env) -> subprocess.Popen:
    """``precise-fast <argv>`` in its own session: one node. It supervises its deepspeed launch in
    a session of that job's own (train/supervise.run_job)."""
    return subprocess.Popen([sys.executable, "-m", "precise_fast.cli", *argv], env={**child_env(), **env}, cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill_node(p: subprocess.Popen) -> None:
    """SIGKILL a node that outlived the test's wait: its job's processes (another session), then it."""
    try:
        family = psutil.Process(p.pid).children(recursive=True)
    except psutil.Error:
        family = []
    for child in family:
        try:
            child.kill()
        except psutil.Error:
            pass
    os.killpg(p.pid, signal.SIGKILL)


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--config", TOY, *[a for o in (*RUN, f"run.output_dir={out}") for a in ("--set", o)], *extra]


def _two_nodes(argv: list[str], node1_env: dict, tmp: Path, name: str) -> list[tuple[int, float, str]]:
    """Node 0 and node 1 each start their own launcher; ``(exit status, seconds, log)`` per node."""
    port = str(_free_port())
    procs = [_start([*argv, "--num-nodes", "2", "--node-rank", str(r), "--master-addr", "127.0.0.1", "--num-gpus", "1",
                     "--master-port", port], tmp / f"{name}.node{r}.log", **(node1_env if r else {})) for r in (0, 1)]
    start, ended = time.monotonic(), {}
    try:
        while len(ended) < 2:
            assert time.monotonic() - start < 500, f"{name}: a node still runs after 500 s"
            for r, p in enumerate(procs):
                if r not in ended and p.poll() is not None:
                    ended[r] = (p.returncode, time.monotonic() - start)
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_node(p)
    return [(*ended[r], (tmp / f"{name}.node{r}.log").read_text()) for r in (0, 1)]


def _one_node(argv: list[str], tmp: Path, name: str) -> tuple[int, str]:
    log = tmp / f"{name}.log"
    proc = _start([*argv, "--num-gpus", "2", "--master-port", str(_free_port())], log)
    try:
        rc = proc.wait(timeout=500)
    finally:
        if proc.poll() is None:
            _kill_node(proc)
    return rc, log.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    out = {"B": tmp / "B", "K": tmp / "K", "tmp": tmp}
    out["b"] = _one_node(_train_args(out["B"]), tmp, "B")
    out["k"] = _two_nodes(_train_args(out["K"]), {"PRECISE_FAST_CRASH_AT": "train_step:5@1"}, tmp, "K")
    out["k_checkpoints"] = [e for e, _ in list_checkpoints(out["K"] / "checkpoints")]
    out["k_files"] = sorted(str(p.relative_to(out["K"])) for p in out["K"].rglob("*") if p.is_file())
    out["k_metrics"] = (out["K"] / "metrics.jsonl").read_text()
    out["r"] = _one_node(_train_args(out["K"], "--resume"), tmp, "R")
    return out


def _ok(rc: int, log: str) -> None:
    assert rc == 0, f"rc={rc}\n{log[-5000:]}"


def _as_tensors(obj):
    """NumPy's RNG state holds arrays: as tensors, ``_equal`` compares them bitwise too."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: _as_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_as_tensors(v) for v in obj]
    return obj


def _rank_states(folder: Path) -> list:
    return [_as_tensors(torch.load(folder / f"rank{r:05d}.pt", map_location="cpu", weights_only=False)) for r in (0, 1)]


def _same_checkpoint(a: Path, b: Path) -> None:
    _equal(_state(a), _state(b))
    _equal(_rank_states(a), _rank_states(b))  # every global rank's RNG: rank r of 2 nodes is rank r of 1 node


def _metrics(text: str) -> list[dict]:
    """metrics.jsonl but the timings and speeds (wall-clock, never equal between runs)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "throughput/"))}
            for line in text.splitlines()]


def test_two_nodes_train_bitwise_as_one_node_with_two_ranks(runs):
    _ok(*runs["b"])
    assert runs["k_checkpoints"] == [1, 2]  # node 1 died in epoch 3
    for epoch in (1, 2):
        tag = f"epoch-{epoch:06d}"
        _same_checkpoint(runs["K"] / "checkpoints" / tag, runs["B"] / "checkpoints" / tag)
    b_metrics = _metrics((runs["B"] / "metrics.jsonl").read_text())
    assert len(b_metrics) == 3 and _metrics(runs["k_metrics"]) == b_metrics[:2]


def test_two_nodes_share_one_run_folder_with_one_writer_per_file(runs):
    """Both nodes write into one folder: per-rank files by global rank, the rest by rank 0 only
    (a second writer of a shared file would have broken a checksum or the bitwise match above)."""
    _ok(*runs["b"])
    files = runs["k_files"]
    for epoch in (1, 2):
        ckpt = f"checkpoints/epoch-{epoch:06d}"
        assert verify_checkpoint(runs["K"] / ckpt) is None  # every file's SHA-256 as the manifest says
        mine = [f[len(ckpt) + 1:] for f in files if f.startswith(ckpt + "/")]
        assert mine == sorted(str(p.relative_to(runs["B"] / ckpt)) for p in (runs["B"] / ckpt).rglob("*") if p.is_file())
        assert {"rank00000.pt", "rank00001.pt", "ds/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                "ds/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(mine)
    assert not [f for f in files if f.startswith("checkpoints/.tmp-")]  # node 1 died before epoch 3's checkpoint began
    assert not [f for f in files if ".shared-" in f]  # the shared-folder probe is gone
    assert len(runs["k_metrics"].splitlines()) == 2 and "metrics.jsonl" in files and "config.yaml" in files


def test_a_lost_node_ends_every_rank_and_the_run_resumes_bitwise(runs):
    (rc0, t0, log0), (rc1, t1, log1) = runs["k"]
    # The crash hook SIGKILLs node 1's job (deepspeed's launcher and its rank: one process group,
    # like a machine loss); the node's supervisor reports that as 128 + SIGKILL.
    assert rc1 == 128 + signal.SIGKILL, f"node 1 was not killed:\n{log1[-3000:]}"
    assert rc0 != 0, f"node 0 finished without its peer:\n{log0[-3000:]}"
    # Node 0 fails at its next collective (gloo: "Connection closed by peer"); run.collective_timeout_s
    # bounds it when the peer stays silent instead (test_a_silent_peer_fails_after_the_collective_timeout).
    assert t0 - t1 < TIMEOUT_S, f"node 0 outlived node 1 by {t0 - t1:.0f} s"
    assert "Connection closed by peer" in log0 or "timed out" in log0.lower(), log0[-3000:]
    # Nothing half-written: K's checkpoints verify (test above), R adds epoch 3 beside them.
    rc, log = runs["r"]
    _ok(rc, log)
    assert "resumed from" in log and "epoch-000002" in log
    root = runs["K"] / "checkpoints"
    assert [e for e, _ in list_checkpoints(root)] == [1, 2, 3]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    _same_checkpoint(root / "epoch-000003", runs["B"] / "checkpoints" / "epoch-000003")
    assert _metrics((runs["K"] / "metrics.jsonl").read_text()) == _metrics((runs["B"] / "metrics.jsonl").read_text())


def test_eval_over_two_nodes_gives_the_one_process_summary(runs):
    from precise_fast.eval.cli import main as eval_main

    _ok(*runs["b"])
    tmp = runs["tmp"]
    common = [str(runs["B"] / "checkpoints" / "epoch-000003"), "--num-prompts", "8", "--images-per-prompt", "2",
              "--batch-size", "4", "--no-progress"]  # base + epoch 3: 4 batches of 4 each, 2 per rank
    (rc0, _, log0), (rc1, _, log1) = _two_nodes(["eval", *common, "--out", str(tmp / "eval2")], {}, tmp, "E")
    _ok(rc0, log0)
    _ok(rc1, log1)
    assert eval_main([*common, "--out", str(tmp / "eval1")]) == 0
    two, one = (json.loads((tmp / n / "summary.json").read_text()) for n in ("eval2", "eval1"))
    assert two["results"] == one["results"] and len(one["results"]) == 2
    items = [(tmp / n / "items.jsonl").read_text().splitlines() for n in ("eval2", "eval1")]
    assert items[0] == items[1] and len(items[1]) == 32


def test_a_run_folder_not_shared_by_every_node_is_refused(tmp_path):
    """Node 1 writes elsewhere (as a node-local disk would): both nodes exit 2 with one line,
    before any model loads."""
    port = str(_free_port())
    logs, procs = [], []
    for r in (0, 1):
        argv = [*_train_args(tmp_path / f"node{r}"), "--num-nodes", "2", "--node-rank", str(r), "--master-addr",
                "127.0.0.1", "--num-gpus", "1", "--master-port", port]
        logs.append(tmp_path / f"node{r}.log")
        procs.append(_start(argv, logs[-1]))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_node(p)
    text = logs[0].read_text()
    assert codes == [2, 2], f"{codes}\n{text[-3000:]}"
    assert f"run.output_dir: {tmp_path / 'node0'} is not shared by every node: rank 1 does not see" in text
    assert "Traceback" not in text and "Loading pipeline" not in text


# ----------------------------------------------------------------------------- without training


FROZEN_PEER = """
import os, signal, sys, time
from precise_fast.train.policy.distributed import barrier, init_distributed
init_distributed("cpu", timeout_s=float(sys.argv[1]))
barrier()
if os.environ["RANK"] == "1":
    os.kill(os.getpid(), signal.SIGSTOP)  # a node that stops answering without closing its sockets
start = time.monotonic()
try:
    barrier()
except Exception as err:
    print(f"FAILED after {time.monotonic() - start:.1f} s: {err}", flush=True)
    os._exit(1)
os._exit(0)
"""


def _two_ranks(script: str, *args: str) -> list[subprocess.Popen]:
    """Two plain processes forming one gloo group (each in its own session)."""
    env = {**child_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    return [subprocess.Popen([sys.executable, "-c", script, *args], env={**env, "RANK": str(r), "LOCAL_RANK": "0"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO)
            for r in (0, 1)]


def test_a_silent_peer_fails_after_the_collective_timeout():
    procs = _two_ranks(FROZEN_PEER, "5")
    try:
        out, _ = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 1, out[-3000:]
        waited = float(out.split("FAILED after ")[1].split(" s")[0])
        assert 4.0 <= waited < 20.0, out[-3000:]  # the 5 s timeout, not PyTorch's 30 minutes
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_node(p)
                p.wait()


UNWRITABLE = """
import sys
from precise_fast.train.config import ConfigError
from precise_fast.train.policy.distributed import check_shared_folder, init_distributed
init_distributed("cpu", timeout_s=60.0)
try:
    check_shared_folder(sys.argv[1], "run.output_dir")
except ConfigError as err:
    print("REFUSED", err, flush=True)
"""


def test_a_run_folder_rank_0_cannot_create_is_one_error_on_every_rank(tmp_path):
    """A regular file as run.output_dir: rank 0's failure reaches every rank at once (rank 1
    does not wait out the collective timeout for a probe that never comes)."""
    taken = tmp_path / "a_file"
    taken.write_text("")
    procs = _two_ranks(UNWRITABLE, str(taken))
    try:
        outs = [p.communicate(timeout=50)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_node(p)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert f"REFUSED run.output_dir: rank 0 cannot write into {taken} (File exists)" in out, out[-3000:]


def _dry_run(capsys, *argv) -> list[str]:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_dry_run_prints_every_nodes_command(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    lines = _dry_run(capsys, "train", "--reward", "mix", "--sde", "precise", "--num-nodes", "3", "--node-rank", "1",
                     "--master-addr", "10.1.2.3", "--num-gpus", "4", "--master-port", "29610", "--dry-run")
    info = json.loads(lines[0])
    assert (info["nodes"], info["mode"]) == (3, "no_ssh")
    commands = [shlex.split(line) for line in lines[1:] if not line.startswith("#")]
    assert len(commands) == 3
    for r, cmd in enumerate(commands):
        assert cmd[0].endswith("deepspeed")
        hostfile = Path(cmd[cmd.index("--hostfile") + 1])
        assert hostfile.name == "precise_fast-hostfile-3x4"
        assert cmd[cmd.index("--hostfile") + 2:] == [
            "--no_ssh", "--node_rank", str(r), "--num_nodes", "3", "--num_gpus", "4", "--master_addr", "10.1.2.3",
            "--master_port", "29610", "--module", "precise_fast.train", "--config", "configs/flux2_klein/mix_precise.yaml"]

    hosts = tmp_path / "hostfile"
    hosts.write_text("gpu-a slots=8\ngpu-b slots=8\n")
    lines = _dry_run(capsys, "train", "--config", TOY, "--hostfile", str(hosts), "--dry-run")
    assert json.loads(lines[0])["mode"] == "ssh" and lines[1].startswith("# on the first host")
    # The hostfile's slots, not the default 8 (deepspeed would start 8 on every host).
    assert shlex.split(lines[2])[1:] == ["--hostfile", str(hosts), "--module", "precise_fast.train", "--config", TOY]

    paper = '0|ode|0|4|pickscore|{"jpeg_incompressibility": 1}'  # step 0: the base model, no folder needed
    lines = _dry_run(capsys, "eval", "--ckpt-base", "runs/x", "--eval-config", paper, "--num-nodes", "2", "--node-rank",
                     "0", "--master-addr", "10.1.2.3", "--num-gpus", "2", "--config", TOY, "--dry-run")
    evals = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert [c[c.index("--node_rank") + 1] for c in evals] == ["0", "1"]
    assert evals[1][evals[1].index("--module"):] == ["--module", "precise_fast.eval", "--ckpt-base", "runs/x",
                                                     "--eval-config", paper, "--config", TOY]


@pytest.mark.parametrize("argv, message", [
    (["--num-nodes", "2"], "--num-nodes 2: give --hostfile"),
    (["--num-nodes", "2", "--node-rank", "0", "--num-gpus", "1"], "needs --master-addr"),
    (["--num-nodes", "2", "--node-rank", "2", "--master-addr", "h", "--num-gpus", "1"], "must lie in [0, 2)"),
    (["--hostfile", "/nonexistent/hosts"], "--hostfile /nonexistent/hosts: no such file"),
    (["--num-gpus", "0"], "--num-gpus must be >= 1"),
])
def test_launcher_option_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["train", "--config", TOY, *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train: ") and message in err[-1]


def test_one_launcher_over_ssh_cannot_serve_geneval_to_other_hosts(capsys, monkeypatch, tmp_path):
    """The GenEval recipe reaches its server on each node's loopback: no-ssh mode starts one per
    node (each node's launcher), ssh mode with several hosts is refused unless told they run."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PRECISE_SDE_AUTO_START_GENEVAL", "1")
    hosts = tmp_path / "hostfile"
    hosts.write_text("gpu-a slots=8\ngpu-b slots=8\n")
    assert cli.main(["train", "--reward", "geneval", "--sde", "precise", "--hostfile", str(hosts), "--dry-run"]) == 2
    assert "starts none on the other hosts" in capsys.readouterr().err
    lines = _dry_run(capsys, "train", "--reward", "geneval", "--sde", "precise", "--hostfile", str(hosts),
                     "--no-geneval-server", "--dry-run")
    assert json.loads(lines[0])["geneval_server"] is None
    lines = _dry_run(capsys, "train", "--reward", "geneval", "--sde", "precise", "--num-nodes", "2", "--node-rank", "0",
                     "--master-addr", "h", "--num-gpus", "8", "--dry-run")
    assert json.loads(lines[0])["geneval_server"] == "http://127.0.0.1:18085"
    assert lines[1].startswith("# on each node, if nothing answers at http://127.0.0.1:18085/health")


# ----------------------------------------------------------------------------- the tiny model's cache


RACE = """
import sys
from precise_fast.models import tiny
built = []
real = tiny.build_tiny_pipeline
tiny.build_tiny_pipeline = lambda *a, **k: built.append(1) or real(*a, **k)
path = tiny.tiny_pipeline_path(cache_dir=sys.argv[1])
from precise_fast.models import load_pipeline
load_pipeline(path)
print("BUILT", len(built), path, flush=True)
"""


def test_processes_sharing_a_cache_build_the_tiny_model_once(tmp_path):
    """Two processes (the nodes of a job on one shared filesystem) ask for the tiny model in an
    empty cache at once: one builds, both load the complete folder, nothing is left over.
    Before the lock, 2 of 3 such processes failed ('Directory not empty' publishing a build)."""
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(cache)], env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    built = sorted(int(out.split("BUILT ")[1].split()[0]) for out, _ in outs)
    assert built == [0, 1]
    (folder,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert (folder / "precise_fast_tiny.json").is_file() and (folder / "model_index.json").is_file()


# ----------------------------------------------------------------------------- the SLURM example


def test_the_slurm_script_starts_one_launcher_per_node_with_its_rank(tmp_path):
    """scripts/slurm/multinode.sbatch under stand-ins for ``scontrol`` and ``srun`` (which runs
    its command once per node with that node's SLURM_NODEID): every node gets node 0's address
    and its own --node-rank."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    (bin_dir / "srun").write_text('#!/bin/bash\nshift\nfor n in 0 1; do SLURM_NODEID=$n "$@" || exit $?; done\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**child_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_NNODES": "2",
           "SLURM_GPUS_ON_NODE": "4", "SLURM_SUBMIT_DIR": str(REPO),
           "PRECISE_FAST": str(Path(sys.executable).parent / "precise-fast")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "multinode.sbatch"), "train", "--config", TOY,
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = [line for line in proc.stdout.splitlines() if "this node's" in line]
    assert mine == ["# node 0 of 2 (no ssh: every node runs its own line, this node's)",
                    "# node 1 of 2 (no ssh: every node runs its own line, this node's)"]
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if "deepspeed" in line]
    assert len(commands) == 4 and all(c[c.index("--master_addr") + 1] == "gpu-a" for c in commands)
    assert all(c[c.index("--num_gpus") + 1] == "4" and c[c.index("--master_port") + 1] == "29500" for c in commands)
