"""The trainer's random streams (train/state/rng.py ``Stream``): one table, distinct tags, fixed values.

A run's samples, minibatch order and eval seeds are functions of ``mix_seed(run seed, tag, keys)``;
two streams sharing a tag would draw the same numbers, and a changed value would change every run
and break the exact resume of runs saved before it.
"""

import ast
from pathlib import Path

import torch

from precise_fast.rollout.seeds import mix_seed
from precise_fast.train.state.rng import Stream, stream_generator, stream_seed

TRAIN = Path(__file__).resolve().parents[2] / "precise_fast" / "train"


def test_tags_are_distinct_and_keep_their_values():
    assert {s.name: int(s) for s in Stream} == {
        "PROMPT_ORDER": 1, "SLOTS": 2, "SHUFFLE": 3, "PADDING": 4, "NOISE": 5, "SDE_WINDOW": 11,
        "G2RPO_STEPS": 13, "EVAL": 17,
    }
    assert len({int(s) for s in Stream}) == len(Stream)


def test_a_stream_seed_is_the_mix_of_run_seed_tag_and_keys():
    assert stream_seed(7, Stream.SHUFFLE, 2, 0, 1) == mix_seed(7, 3, 2, 0, 1)
    assert stream_seed(7, Stream.SHUFFLE, 2) != stream_seed(7, Stream.PADDING, 2)
    a = torch.randperm(10, generator=stream_generator(7, Stream.PADDING, 1, 0))
    b = torch.randperm(10, generator=torch.Generator().manual_seed(mix_seed(7, 4, 1, 0)))
    assert torch.equal(a, b)


def test_no_trainer_module_mixes_a_seed_with_its_own_tag():
    """Every seeded draw of the trainer goes through the table: only state/rng.py calls mix_seed."""
    callers = []
    for path in TRAIN.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "mix_seed":
                callers.append(str(path.relative_to(TRAIN)))
    assert sorted(set(callers)) == ["state/rng.py"]


def test_a_checkpoint_keeps_the_cuda_generator_of_its_own_device(monkeypatch):
    """A rank saves its own device's CUDA generator and restores it on the device it resumes on
    (torch.cuda stood in for): a resumed process may see fewer GPUs than the one that saved.
    Older checkpoints held every visible device's state; the rank's own entry is taken."""
    from precise_fast.train.state.rng import capture_rng, restore_rng

    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    current, restored = [1], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[device])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state), device)))
    saved = capture_rng()
    assert int(saved["cuda"]) == 1
    current[0] = 0  # resumed where this rank's GPU is device 0
    restore_rng(saved)
    restore_rng({**saved, "cuda": [states[0], states[1]]})
    restore_rng({**saved, "cuda": []})  # more devices then than now: nothing to restore
    assert restored == [(1, 0), (0, 0)]
