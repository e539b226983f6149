"""Which prompts each rank samples in an epoch: k images per prompt, spread across ranks.

Per epoch the sampler takes the next P prompts of an endless stream of seeded
permutations of the prompt set (each pass visits every prompt once), repeats each k times
(one group per prompt), and deals the P * k slots out to ``world x batches x batch_size``:

- ``spread=True`` (GRPO, SDE window): the slots are shuffled with a seeded permutation
  before being cut rank-major, so a group's members land on different ranks and batches
  (Flow-GRPO's ``DistributedKRepeatSampler`` does the same; a group's statistics then do
  not depend on one rank's batch);
- ``spread=False`` (G2RPO): whole groups go to a rank, since all members branch from the
  same anchor trajectory there.

Everything is a pure function of (seed, pass, position, epoch counter): the sampler's
position is three integers, saved in checkpoints, and a resumed run deals the same slots.
A slot's identity (epoch, group, member) also keys its noise seeds, so a sample does not
depend on how many ranks there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..state.rng import Stream, stream_generator



@dataclass(frozen=True)
class Slot:
    """One image to sample: dataset prompt index, epoch-global group id, member within the group."""

    prompt_index: int
    group: int
    member: int


class GroupSampler:
    def __init__(
        self,
        dataset_size: int,
        *,
        group_size: int,
        batch_size: int,
        num_batches: int,
        world_size: int,
        rank: int,
        seed: int,
        spread: bool = True,
    ):
        if dataset_size < 1:
            raise ValueError("the prompt set is empty")
        self.dataset_size = int(dataset_size)
        self.k = int(group_size)
        self.batch_size = int(batch_size)
        self.num_batches = int(num_batches)
        self.world = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.spread = bool(spread)
        if spread:
            total = self.world * self.batch_size * self.num_batches
            if total % self.k:
                raise ValueError(f"group size {self.k} does not divide the {total} images of an epoch")
            self.groups_per_epoch = total // self.k
        else:  # batch_size counts prompts (whole groups) per rank per batch
            self.groups_per_epoch = self.world * self.batch_size * self.num_batches
        self.pass_index = 0
        self.position = 0
        self.epochs_dealt = 0

    # ------------------------------------------------------------------ the prompt stream

    def _permutation(self, pass_index: int) -> torch.Tensor:
        gen = stream_generator(self.seed, Stream.PROMPT_ORDER, pass_index)
        return torch.randperm(self.dataset_size, generator=gen)

    def _next_prompts(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            perm = self._permutation(self.pass_index)
            take = min(count - len(out), self.dataset_size - self.position)
            out += perm[self.position : self.position + take].tolist()
            self.position += take
            if self.position == self.dataset_size:
                self.pass_index, self.position = self.pass_index + 1, 0
        return out

    # ------------------------------------------------------------------ dealing

    def next_epoch(self) -> tuple[int, list[list[Slot]], list[Slot]]:
        """Advance one epoch: ``(epoch_key, this rank's batches, every slot in global order)``.

        Global order is rank-major (rank 0's batches first), so gathered tensors line up.
        For ``spread=False`` each batch lists its groups' members group by group.
        """
        epoch_key = self.epochs_dealt
        prompts = self._next_prompts(self.groups_per_epoch)
        slots = [Slot(p, g, m) for g, p in enumerate(prompts) for m in range(self.k)]
        if self.spread:
            gen = stream_generator(self.seed, Stream.SLOTS, epoch_key)
            order = torch.randperm(len(slots), generator=gen).tolist()
            slots = [slots[i] for i in order]
            per_batch = self.batch_size
        else:
            per_batch = self.batch_size * self.k
        per_rank = per_batch * self.num_batches
        mine = slots[self.rank * per_rank : (self.rank + 1) * per_rank]
        batches = [mine[b * per_batch : (b + 1) * per_batch] for b in range(self.num_batches)]
        self.epochs_dealt += 1
        return epoch_key, batches, slots

    def state_dict(self) -> dict:
        return {"pass_index": self.pass_index, "position": self.position, "epochs_dealt": self.epochs_dealt,
                "dataset_size": self.dataset_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["dataset_size"] != self.dataset_size or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for {state['dataset_size']} prompts / seed {state['seed']}, "
                f"this run has {self.dataset_size} prompts / seed {self.seed}"
            )
        self.pass_index, self.position, self.epochs_dealt = state["pass_index"], state["position"], state["epochs_dealt"]
