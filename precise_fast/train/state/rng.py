"""Every random-number generator state a rank has, captured and restored as one object.

The trainer's own randomness is counter-based (Philox noise keyed by sample seeds, seeded
permutations), so a resumed run does not need these states to reproduce itself; they are
saved anyway so that any library code drawing from the global generators (dropout, a
scorer's augmentation) also continues exactly where it stopped.
"""

from __future__ import annotations

import random
from enum import IntEnum

import numpy as np
import torch

from ...rollout.seeds import mix_seed


class Stream(IntEnum):
    """The trainer's seeded random streams: ``mix_seed(run seed, stream, keys...)`` seeds each draw.

    One table so that no two streams share a tag (two streams with one tag would draw the same
    numbers). The values are part of a run's identity: changing one changes every run's samples
    and breaks the exact resume of runs saved before, so they never change.
    """

    PROMPT_ORDER = 1  # the endless prompt stream's shuffle of each pass (phases/prompt_groups.py)
    SLOTS = 2  # which rank samples which slot of an epoch (phases/prompt_groups.py)
    SHUFFLE = 3  # minibatch order and timestep order of the update (phases/update.py)
    PADDING = 4  # the zero-advantage samples that pad the paper's schedule (phases/credit.py)
    NOISE = 5  # each sample's noise and initial-latent seeds (phases/trajectories.py)
    SDE_WINDOW = 11  # the SDE window's position per epoch (phases/sample.py)
    G2RPO_STEPS = 13  # the branching steps a G2RPO batch trains (phases/sample.py)
    EVAL = 17  # held-out eval item seeds (report/evaluator.py)


def stream_seed(seed: int, stream: Stream, *keys: int) -> int:
    """The seed of one draw of ``stream`` under the run seed ``seed``, keyed by ``keys`` (epoch, rank...)."""
    return mix_seed(seed, stream, *keys)


def stream_generator(seed: int, stream: Stream, *keys: int) -> torch.Generator:
    """A CPU generator seeded for one draw of ``stream`` (see :func:`stream_seed`)."""
    return torch.Generator().manual_seed(stream_seed(seed, stream, *keys))


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This rank's own device only: a rank sees every GPU of its host, and a resumed process
        # may see fewer (restoring all of them by index would fail there).
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        device = torch.cuda.current_device()
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
