"""Has the run diverged? A policy that produces non-finite values stops the run (exit 3).

The guard (policy/guard.py) skips one update whose forward or gradients hold a NaN/Inf: a
transient. A policy that itself produces non-finite values is not one: with ``train.lr``
1e8 (or a LoRA file full of NaN) every later epoch sampled NaN latents, decoded them as
black images that scored as valid, kept 0% of its samples, exited 0, and pruning deleted
the good checkpoints for broken ones. Two checks per epoch, each a device-side flag and one
all-reduce per phase (never a sync per step), so every rank raises at the same point:

- after sampling: the epoch's transitions (latents and log-probs) and the trained weights
  that sampled them;
- after training, before the epoch is logged or saved: the trained weights, the guard's
  verdict (every update of the epoch skipped for non-finite losses or gradients), and the
  updated policy's log-probs on one minibatch of the epoch's own (finite)
  transitions at one timestep. The epoch's last update is otherwise seen by no forward
  before its checkpoint is written: lr 1e8 leaves finite weights (|w| ~ 1e8) whose next
  rollout is NaN, and that state would be saved (and older checkpoints pruned) first.

Nothing of a diverged epoch is logged, saved or pruned; the message names the epoch and
the newest checkpoint kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..grpo.transitions import Transitions
from ..lifecycle.health import TrainingHealthError
from ..policy.ema import local_tensor
from ..state.checkpoint import list_checkpoints
from .rescore import transition_losses
from .update import UpdateSettings


class Diverged(TrainingHealthError):
    """The policy produces non-finite values (exit status 3)."""


def nonfinite(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor on ``device``: whether any of ``tensors`` holds a NaN/Inf (no host sync)."""
    flag = torch.zeros((), dtype=torch.bool, device=device)
    for t in tensors:
        flag |= ~torch.isfinite(t.detach()).all().to(device)
    return flag


def agreed(flags: dict[str, torch.Tensor], all_reduce_max: Callable[[torch.Tensor], torch.Tensor]) -> list[str]:
    """The names whose flag is set on some rank (one all-reduce for all of them)."""
    names = list(flags)
    values = torch.stack([flags[n].to(torch.int32) for n in names])
    all_reduce_max(values)
    return [n for n, hit in zip(names, values.tolist()) if hit]


def _weights(params: Sequence[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    return nonfinite([local_tensor(p) for p in params], device)  # ZeRO-3: this rank's partition


def _kept(checkpoints_root, sampled_by: int | None = None) -> str:
    """Where to go on from: the newest checkpoint, unless it is the diverged policy itself."""
    found = list_checkpoints(checkpoints_root)
    if not found:
        return "and no checkpoint was written"
    epoch, folder = found[-1]
    if epoch == sampled_by:
        return f"the newest checkpoint {folder} holds this policy: --resume an earlier one with a lower train.lr"
    return f"the newest checkpoint kept is {folder} (--resume it with a lower train.lr)"


def check_rollouts(epoch: int, data: Transitions, params, *, all_reduce_max, checkpoints_root,
                   lora_path: str = "") -> None:
    """Raise :class:`Diverged` when this epoch's rollouts or the weights that sampled them are non-finite."""
    device = data.x.device
    hits = agreed({"latents": nonfinite([data.x, data.x_next, data.old_mean], device),
                   "log-probs": nonfinite([data.old_log_prob], device),
                   "weights": _weights(params, device)}, all_reduce_max)
    if not hits:
        return
    cause = "the trained weights hold non-finite values" if "weights" in hits else "the policy diverged"
    if "weights" in hits and epoch == 1 and lora_path:
        cause += f" (train.lora_path {lora_path})"
    what = " and ".join(h for h in hits if h != "weights") or "values"
    raise Diverged(f"epoch {epoch} diverged: its rollouts hold non-finite {what} ({cause}); nothing of epoch {epoch} "
                   f"was saved, {_kept(checkpoints_root, sampled_by=epoch - 1)}")


def check_updated_policy(epoch: int, policy, data: Transitions, settings: UpdateSettings, *, lr: float,
                         every_update_skipped: bool, all_reduce_max, checkpoints_root) -> None:
    """Raise :class:`Diverged` when every update of the epoch was skipped for non-finite values,
    or when the weights after its updates, or their log-probs on the first minibatch of the
    epoch's transitions at one timestep, are non-finite. (The loss there is not checked: its
    ratio against the pre-update log-probs may overflow for a large but finite step.)"""
    t = settings
    device = data.x.device
    batch = data.select(torch.arange(min(t.batch_size, data.batch_size)))
    with torch.no_grad(), policy.gathered():  # the module itself, as the rollouts call it
        rows = transition_losses(policy.module, batch, [0], clip_range=t.clip_range, ratio_kind=t.ratio,
                                 step_backend=t.step_backend)
    hits = agreed({"weights": _weights(policy.params, device),
                   "log-probs": nonfinite([rows.approx_kl], device)}, all_reduce_max)  # 0.5 (logp - logp_old)^2
    if every_update_skipped:  # the guard's flags, already agreed over ranks at each step
        hits.append("losses or gradients in every update")
    if not hits:
        return
    raise Diverged(f"epoch {epoch} diverged: after its updates the policy has non-finite {' and '.join(hits)} "
                   f"(train.lr={lr:g}); nothing of epoch {epoch} was saved, {_kept(checkpoints_root)}")
