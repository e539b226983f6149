"""Every random-number generator state a rank has, captured and restored as one object.

The trainer's own randomness is counter-based (Philox noise keyed by sample seeds, seeded
permutations), so a resumed run does not need these states to reproduce itself; they are
saved anyway so that any library code drawing from the global generators (dropout, a
scorer's augmentation) also continues exactly where it stopped.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
