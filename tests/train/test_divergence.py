"""A diverging run stops with exit 3 naming the epoch, and saves and prunes nothing of it
(issue 25 item 9; train/phases/divergence.py).

Seen before: with ``train.lr=1e8`` every later epoch sampled NaN latents, decoded them as black
images that scored as valid, kept 0% and exited 0, and pruning deleted the good checkpoints
for broken ones; a LoRA file full of NaN trained on garbage the same way.
"""

import json
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

from precise_fast.train import main as train_main
from precise_fast.train.state.checkpoint import list_checkpoints, verify_checkpoint

from .conftest import TINY_CONFIG

_SMALL = ("run.epochs=1", "log.progress=false", "log.image_every=0", "eval.every=0", "sampler.num_batches_per_epoch=2",
          "sampler.num_steps=4", "sampler.images_per_prompt=4", "checkpoint.every=1", "checkpoint.keep_last=1")


def _train(out, *overrides, resume=False):
    sets = [f"run.output_dir={out}", *_SMALL, *overrides]
    return train_main.main(["--config", str(TINY_CONFIG), *(["--resume"] if resume else []),
                            *[a for o in sets for a in ("--set", o)]])


def _metric_epochs(out) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, dist1):
    out = tmp_path_factory.mktemp("divergence") / "good"
    assert _train(out) == 0
    return out


def test_lr_1e8_stops_at_the_epoch_it_diverged_and_keeps_the_good_checkpoint(good_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    capsys.readouterr()
    # keep_last 1: had the diverged epoch 2 been saved, it would have pruned the good epoch 1.
    code = _train(out, "run.epochs=4", "train.lr=1e8", resume=True)
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    assert "epoch 2 diverged" in err and "nothing of epoch 2 was saved" in err
    assert "epoch-000001" in err  # where to go on from
    assert [e for e, _ in list_checkpoints(out / "checkpoints")] == [1]
    assert verify_checkpoint(out / "checkpoints" / "epoch-000001") is None
    assert (out / "checkpoints" / "latest").read_text().strip() == "epoch-000001"
    assert _metric_epochs(out) == [1]  # the diverged epoch is not logged either


def test_a_lora_file_full_of_nan_stops_at_epoch_1(good_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    lora = good_run / "checkpoints" / "epoch-000001" / "export" / "lora" / "pytorch_lora_weights.safetensors"
    poisoned = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(lora)).items()}, str(poisoned))
    out = tmp_path / "run"
    capsys.readouterr()
    code = _train(out, "run.epochs=3", f"train.lora_path={poisoned}")
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    assert "epoch 1 diverged: its rollouts hold non-finite latents" in err
    assert f"train.lora_path {poisoned}" in err and "no checkpoint was written" in err
    assert list_checkpoints(out / "checkpoints") == [] and _metric_epochs(out) == []


def _rank_main(rank: int, port: int, root, results):
    """Only rank 1 holds a NaN latent: both ranks must raise, with the same message."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from precise_fast.train.policy.distributed import all_reduce_max_
    from precise_fast.train.phases.divergence import Diverged, check_rollouts

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x = torch.zeros(2, 3, 4, 5)
    if rank == 1:
        x[1, 2, 3, 4] = float("nan")
    data = SimpleNamespace(x=x, x_next=torch.zeros_like(x), old_mean=torch.zeros_like(x),
                           old_log_prob=torch.zeros(2, 3))
    try:
        check_rollouts(7, data, [torch.nn.Parameter(torch.ones(3))], all_reduce_max=all_reduce_max_,
                       checkpoints_root=root)
        results[rank] = "went on"
    except Diverged as err:
        results[rank] = str(err)
    dist.destroy_process_group()


def test_every_rank_stops_when_one_rank_sees_a_non_finite_latent(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(port, tmp_path / "checkpoints", results), nprocs=2, join=True)
    assert results[0] == results[1]
    assert results[0].startswith("epoch 7 diverged: its rollouts hold non-finite latents")
