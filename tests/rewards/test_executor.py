"""RewardExecutor: scoring overlapped with the caller, bounded, errors delivered."""

import threading
import time

import pytest
import torch

from precise_fast.rewards import MultiReward, RewardExecutor, RewardModel, ScoreOutput


class Sleepy(RewardModel):
    name = "sleepy"

    def __init__(self, delay=0.1):
        self.delay = delay
        self.threads = set()

    def __call__(self, images, prompts, metadata):
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        return ScoreOutput.from_scores(images.mean(dim=(1, 2, 3)))


def test_thread_mode_overlaps_and_keeps_order():
    scorer = Sleepy(0.3)
    reward = MultiReward({"s": scorer})
    batches = [torch.full((2, 3, 4, 4), v) for v in (0.1, 0.2, 0.3)]
    with RewardExecutor(reward, mode="thread", max_pending=4) as executor:
        start = time.monotonic()
        futures = [executor.submit(b, ["a", "b"]) for b in batches]
        assert time.monotonic() - start < 0.25  # submit does not wait for 3 x 0.3 s of scoring
        results = [f.result(timeout=5) for f in futures]
    assert [round(r.combined[0].item(), 4) for r in results] == [0.1, 0.2, 0.3]
    assert threading.get_ident() not in scorer.threads  # scored on the worker


def test_bounded_queue_applies_back_pressure():
    reward = MultiReward({"s": Sleepy(0.2)})
    executor = RewardExecutor(reward, mode="thread", max_pending=1)
    try:
        x = torch.zeros(1, 3, 4, 4)
        start = time.monotonic()
        futures = [executor.submit(x, ["a"]) for _ in range(3)]  # 1 running + 1 queued, 3rd waits
        assert time.monotonic() - start > 0.15
        assert all(f.result(timeout=5).valid.all() for f in futures)
    finally:
        executor.close()


def test_errors_come_back_through_the_future():
    class Broken(RewardModel):
        name = "broken"

        def __call__(self, images, prompts, metadata):
            raise RuntimeError("scorer exploded")

    with RewardExecutor(MultiReward({"b": Broken()}), mode="thread") as executor:
        future = executor.submit(torch.zeros(1, 3, 4, 4), ["a"])
        with pytest.raises(RuntimeError, match="exploded"):
            future.result(timeout=5)
        # The worker survives a failed job.
        ok = RewardExecutor(MultiReward({"s": Sleepy(0.0)}), mode="thread")
        assert ok.submit(torch.zeros(1, 3, 4, 4), ["a"]).result(timeout=5).valid.all()
        ok.close()


def test_inline_mode_scores_on_the_calling_thread():
    scorer = Sleepy(0.0)
    executor = RewardExecutor(MultiReward({"s": scorer}), mode="inline")
    future = executor.submit(torch.ones(2, 3, 4, 4), ["a", "b"])
    assert future.done() and scorer.threads == {threading.get_ident()}
    executor.close()


def test_close_without_wait_cancels_queued_jobs():
    executor = RewardExecutor(MultiReward({"s": Sleepy(0.2)}), mode="thread", max_pending=4)
    x = torch.zeros(1, 3, 4, 4)
    futures = [executor.submit(x, ["a"]) for _ in range(3)]
    time.sleep(0.05)  # the first one is running
    executor.close(wait=False)
    assert futures[-1].cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit(x, ["a"])
    assert futures[0].result(timeout=5).valid.all()  # the running job still finishes


def test_close_without_wait_lets_the_running_job_finish_before_it_returns():
    """A stopped run closes the executor without waiting for the queue, then ends the process:
    a daemon worker still inside the reward's torch code at interpreter exit aborted the process
    ("terminate called without an active exception", rc -6: test_main_exit's stopped run under
    torch 2.11 in the device rehearsal, 2 of 3 whole-suite runs). close(wait=False) cancels the
    queued jobs but returns only once the job in progress is done (or join_timeout_s passed)."""
    executor = RewardExecutor(MultiReward({"s": Sleepy(0.5)}), mode="thread", max_pending=4)
    x = torch.zeros(1, 3, 4, 4)
    running = executor.submit(x, ["a"])
    queued = executor.submit(x, ["a"])
    time.sleep(0.05)  # the first one is running
    executor.close(wait=False)
    assert running.done() and running.result().valid.all()
    assert queued.cancelled()
    assert not executor._worker.is_alive()


def test_close_without_wait_gives_up_on_a_job_past_its_bound():
    executor = RewardExecutor(MultiReward({"s": Sleepy(2.0)}), mode="thread", max_pending=4)
    running = executor.submit(torch.zeros(1, 3, 4, 4), ["a"])
    time.sleep(0.05)
    started = time.monotonic()
    executor.close(wait=False, join_timeout_s=0.2)
    assert time.monotonic() - started < 1.5 and not running.done()


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        RewardExecutor(lambda *a: None, mode="process")
    with pytest.raises(ValueError, match="max_pending"):
        RewardExecutor(lambda *a: None, max_pending=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_side_stream_sees_finished_images():
    device = torch.device("cuda")
    streams = []

    class Probe(RewardModel):
        name = "probe"

        def __call__(self, images, prompts, metadata):
            streams.append(torch.cuda.current_stream(device))
            return ScoreOutput.from_scores(images.flatten(1).sum(1))

    with RewardExecutor(MultiReward({"p": Probe()}), device=device) as executor:
        assert executor.side_stream
        x = torch.zeros(4, 3, 256, 256, device=device)
        torch.cuda._sleep(50_000_000)  # keep the main stream busy, then write the images
        x += 1.0
        result = executor.submit(x, ["a"] * 4).result(timeout=30)
    assert streams[0] != torch.cuda.default_stream(device)
    torch.testing.assert_close(result.combined.cpu(), torch.full((4,), 3 * 256 * 256.0))
