"""Run the training job (the ``deepspeed`` launcher and its ranks) so that TERM / INT stop it cleanly.

``python -m precise_fast.train.supervise [--grace S] -- deepspeed --num_gpus 2 --module precise_fast.train ...``
(what ``make train`` runs; ``precise-fast train`` / ``eval`` run their launch through
:func:`run_job`, the same in their own process). Why it exists: on one node DeepSpeed's ``deepspeed`` runner
installs no signal handler, so a TERM kills the runner alone and its per-node launcher and
ranks are re-parented and go on training and writing checkpoints.

The command runs in its own session (process group). On the first TERM or INT this
process sends that signal to every rank (the children of DeepSpeed's per-node launcher, or
the command itself when it is a plain process), again to ranks that start later; each rank
stops at its next safe point (:mod:`.signals`: a checkpoint being written is finished, a
partial epoch abandoned) and exits 128 + N. If the job is still running ``--grace``
seconds later, or on a second signal, the whole group is SIGKILLed (checkpoints are
atomic, so even that loses only the current epoch). A signal sent to the runner alone
(which then dies, orphaning its ranks) is handled the same way: its last-seen ranks get it.
When the job ends, anything left in its group is SIGKILLed: no process outlives this one. Exit status: 128 + N after signal N
(non-zero even when the ranks had just finished), else the job's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import psutil

GRACE_ENV = "PRECISE_FAST_STOP_GRACE_S"
DEFAULT_GRACE_S = 120.0
_NODE_LAUNCHER = "deepspeed.launcher.launch"


def training_processes(job_pid: int) -> list[psutil.Process]:
    """The ranks under ``job_pid``: the children of DeepSpeed's per-node launcher (never the
    runner or launcher themselves, whose own handlers would kill the ranks at once), or the
    job itself when no launcher runs under it."""
    try:
        job = psutil.Process(job_pid)
        below = job.children(recursive=True)
    except psutil.Error:
        return []
    launchers = []
    for p in [job, *below]:
        try:
            if _NODE_LAUNCHER in p.cmdline():
                launchers.append(p)
        except psutil.Error:
            continue
    if not launchers:
        try:
            runner = any("deepspeed" in os.path.basename(part) for part in job.cmdline()[:2])
        except psutil.Error:
            return []
        return [] if runner else [job]  # a runner whose launcher has not started yet: ask again later
    ranks = []
    for launcher in launchers:
        try:
            ranks.extend(launcher.children())
        except psutil.Error:
            continue
    return ranks


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    def __init__(self, command: list[str], grace_s: float):
        self.command = command
        self.grace_s = float(grace_s)
        self.signum = 0
        self.forced = False
        self.signalled: set[int] = set()
        self.deadline: float | None = None

    def _on_signal(self, signum, frame) -> None:
        if self.signum:  # a second signal: do not wait for the safe point
            self.forced = True
            return
        self.signum = signum
        self.deadline = time.monotonic() + self.grace_s
        print(f"[precise_fast] {signal.Signals(signum).name}: asking the ranks to stop at a safe point "
              f"(SIGKILL in {self.grace_s:g} s or on a second signal)", file=sys.stderr, flush=True)

    def _forward(self, procs: list[psutil.Process]) -> None:
        for p in procs:
            if p.pid in self.signalled:
                continue
            try:
                p.send_signal(self.signum)
                self.signalled.add(p.pid)
            except psutil.Error:
                continue

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            job = subprocess.Popen(self.command, start_new_session=True)
        except OSError as err:
            print(f"[precise_fast] error: cannot start {self.command[0]}: {err.strerror}", file=sys.stderr)
            return 127
        ranks: list[psutil.Process] = []  # last seen: they outlive a runner that was signalled directly
        try:
            last_look = 0.0
            while True:
                try:
                    rc = job.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - last_look > 1.0:
                    ranks = training_processes(job.pid) or ranks
                    last_look = time.monotonic()
                if self.signum:
                    self._forward(training_processes(job.pid))
                    self._kill_if_overdue(job.pid)
            if -rc in (signal.SIGTERM, signal.SIGINT) and not self.signum:
                self._on_signal(-rc, None)  # the runner itself got the signal: stop its orphaned ranks the same way
            if self.signum:
                while self._alive(ranks):
                    self._forward(ranks)
                    if self._kill_if_overdue(job.pid):
                        break
                    time.sleep(0.2)
        finally:
            _kill_group(job.pid)  # whatever the job left behind (its group outlives its leader)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.signum:
            return 128 + self.signum
        return rc if rc >= 0 else 128 - rc

    @staticmethod
    def _alive(procs: list[psutil.Process]) -> bool:
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    return True
            except psutil.Error:
                continue
        return False

    def _kill_if_overdue(self, pgid: int) -> bool:
        if not (self.forced or time.monotonic() > self.deadline):
            return False
        why = "second signal" if self.forced else f"still running {self.grace_s:g} s after the signal"
        print(f"[precise_fast] {why}: SIGKILL to the job (checkpoints stay atomic)", file=sys.stderr, flush=True)
        _kill_group(pgid)
        return True


def run_job(command: list[str]) -> int:
    """Run ``command`` (a ``deepspeed`` launch) supervised, in this process: what ``precise-fast
    train`` / ``eval`` do with their launch, so a TERM or Ctrl-C to them stops the ranks at a
    safe point (``$PRECISE_FAST_STOP_GRACE_S`` before SIGKILL)."""
    return Supervisor(command, float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m precise_fast.train.supervise", description=__doc__.split("\n")[0])
    parser.add_argument("--grace", type=float, default=float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)),
                        help=f"seconds the ranks get to stop after TERM/INT before SIGKILL (default {DEFAULT_GRACE_S:g}, ${GRACE_ENV})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the job, e.g. deepspeed --num_gpus 2 --module precise_fast.train ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run (after --)")
    if args.grace <= 0:
        parser.error("--grace must be > 0")
    return Supervisor(command, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
