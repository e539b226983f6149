"""Run reward scoring where the trainer asks, overlapped with sampling.

``RewardExecutor(reward_fn, mode=...)``:

* ``"inline"``: score at ``submit`` time on the caller's thread and CUDA stream (the
  future is already done). Simplest; no overlap.
* ``"thread"`` (default): a worker thread pulls jobs from a bounded queue, so the trainer
  can sample the next batch while this one is scored. ``submit`` blocks when
  ``max_pending`` jobs are waiting (back-pressure bounds the images kept alive). On CUDA the
  worker runs on its own side stream: it first waits for an event recorded on the caller's
  stream at ``submit`` (so the images are complete), marks the images as used by the side
  stream (``record_stream``, so the caching allocator does not hand their memory out while
  they are read), and marks the result tensors as used by the caller's stream before the
  future resolves. Remote scorers inside the reward spend that time in network waits on the
  background event loop, not on the worker.

The trainer gets ``concurrent.futures.Future[RewardResult]`` objects; ``result()`` re-raises
any scoring error.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass

import torch

MODES = ("thread", "inline")


def _tensors(obj):
    """Every tensor inside a result (dataclasses, dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


class RewardExecutor:
    """Overlap executor for a reward function ``fn(images, prompts, metadata)``."""

    _STOP = object()

    def __init__(
        self,
        reward_fn: Callable,
        *,
        mode: str = "thread",
        max_pending: int = 2,
        device=None,
        side_stream: bool | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.reward_fn = reward_fn
        self.mode = mode
        self.device = torch.device(device) if device is not None else None
        cuda = self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()
        self.side_stream = bool(cuda if side_stream is None else side_stream and cuda)
        self._stream = torch.cuda.Stream(device=self.device) if self.side_stream else None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._closed = False
        self._lock = threading.Lock()
        self._worker = None
        if mode == "thread":
            self._worker = threading.Thread(target=self._run, name="precise-fast-reward-worker", daemon=True)
            self._worker.start()

    def submit(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None
    ) -> concurrent.futures.Future:
        """Queue a batch for scoring; returns a future of the reward function's result."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardExecutor is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.mode == "inline":
            self._execute(future, images, list(prompts), metadata, None, None)
            return future
        ready, consumer = None, None
        if self.side_stream and images.is_cuda:
            consumer = torch.cuda.current_stream(images.device)
            ready = torch.cuda.Event()
            ready.record(consumer)
        self._queue.put((future, images, list(prompts), metadata, ready, consumer))
        return future

    def _execute(self, future, images, prompts, metadata, ready, consumer) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            if ready is not None:
                with torch.cuda.stream(self._stream):
                    self._stream.wait_event(ready)
                    images.record_stream(self._stream)
                    result = self.reward_fn(images, prompts, metadata)
                    for tensor in _tensors(result):
                        if tensor.is_cuda:
                            tensor.record_stream(consumer)
                    done = torch.cuda.Event()
                    done.record(self._stream)
                done.synchronize()  # blocks this worker only; results are complete when the future resolves
            else:
                result = self.reward_fn(images, prompts, metadata)
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is self._STOP:
                return
            self._execute(*job)

    @property
    def pending(self) -> int:
        """Jobs queued and not yet started."""
        return self._queue.qsize()

    # How long close(wait=False) waits for the job in progress. The worker is a daemon (a hung
    # remote reward must not keep the process alive), but one still inside the reward's torch
    # code at interpreter exit aborts the process ("terminate called without an active
    # exception": a stopped run, tests/rewards/test_executor.py), so close lets it finish.
    JOIN_TIMEOUT_S = 60.0

    def close(self, wait: bool = True, join_timeout_s: float | None = None) -> None:
        """Stop accepting work; with ``wait`` finish the queued jobs first, without it cancel
        them and wait for the job in progress only (at most ``join_timeout_s``, default
        :attr:`JOIN_TIMEOUT_S`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._worker is None:
            return
        if not wait:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not self._STOP:
                    job[0].cancel()
        self._queue.put(self._STOP)
        if wait:
            self._worker.join()
        else:
            self._worker.join(self.JOIN_TIMEOUT_S if join_timeout_s is None else join_timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(wait=True)
