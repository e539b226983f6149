"""RewardExecutor's CUDA side stream on a real GPU (skipped without one): the worker waits
for the sampling stream's images, keeps their memory from being reused while it reads
them (``record_stream``), and hands results back usable on the caller's stream; the
scores equal inline scoring on the caller's stream (precise_fast/rewards/executor.py)."""

import pytest
import torch

from precise_fast.rewards import MultiReward, RewardExecutor, RewardModel, ScoreOutput

pytestmark = pytest.mark.gpu


class MatmulScore(RewardModel):
    """A GPU-heavy deterministic score: per image, the mean of (image @ image^T)."""

    name = "matmul"

    def __init__(self):
        self.streams = []

    def __call__(self, images, prompts, metadata):
        self.streams.append(torch.cuda.current_stream(images.device))
        flat = images.flatten(2)
        return ScoreOutput.from_scores((flat @ flat.transpose(1, 2)).flatten(1).mean(1))


def _images(value, device):
    torch.cuda._sleep(50_000_000)  # the sampling stream is still busy when the worker starts
    return torch.full((4, 3, 128, 128), value, device=device)


def test_side_stream_scores_match_inline_and_images_are_not_reused():
    device = torch.device("cuda")
    scorer = MatmulScore()
    with RewardExecutor(MultiReward({"m": scorer}), device=device) as executor:
        assert executor.side_stream
        futures = []
        for value in (0.25, 0.5, 1.0):
            images = _images(value, device)
            futures.append(executor.submit(images, ["a"] * 4))
            del images
            # Without record_stream the allocator could hand the images' block to this
            # write on the sampling stream while the side stream is still reading it.
            torch.full((4, 3, 128, 128), 99.0, device=device).mul_(2)
        results = [f.result(timeout=60) for f in futures]
    assert all(s != torch.cuda.default_stream(device) for s in scorer.streams)
    with RewardExecutor(MultiReward({"m": MatmulScore()}), mode="inline", device=device) as inline:
        want = [inline.submit(torch.full((4, 3, 128, 128), v, device=device), ["a"] * 4).result() for v in (0.25, 0.5, 1.0)]
    for got, ref in zip(results, want):
        # Consumed at once on the caller's stream: the future resolved after the side stream finished.
        torch.testing.assert_close(got.combined * 1, ref.combined, rtol=1e-5, atol=1e-5)


def test_side_stream_overlaps_the_sampling_stream():
    """The worker's scoring runs while the caller's stream is still busy with the next batch."""
    device = torch.device("cuda")
    with RewardExecutor(MultiReward({"m": MatmulScore()}), device=device) as executor:
        images = torch.rand(4, 3, 128, 128, device=device)
        # One scoring first: torch loads CUDA kernels lazily, and loading one may synchronize
        # the context, which would wait for the sleep below whatever the streams do.
        executor.submit(images, ["a"] * 4).result(timeout=60)
        future = executor.submit(images, ["a"] * 4)
        torch.cuda._sleep(2_000_000_000)  # ~1 s of "sampling" on the caller's stream
        done_early = future.result(timeout=60) is not None and not torch.cuda.current_stream(device).query()
    assert done_early, "the side stream waited for the caller's later work"
