"""The GRPO trainer: builds the run from its config and walks the epochs.

One epoch (shared/DESIGN.md "Training loop", docs/ARCHITECTURE.md) is four calls: sample every
batch with rewards overlapped (phases/sample.py) -> gather, normalise, advantages, drop, balance
(phases/credit.py) -> train with guarded DeepSpeed steps and the EMA (phases/update.py) -> the
epoch's metrics (report/epoch.py); then eval when due, logs, PNGs, an atomic checkpoint.
Everything that decides what happens next is in the checkpoint, so ``resume`` continues
exactly (bitwise on CPU with the same world size).
"""

from __future__ import annotations

import collections
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import lora_state_dict, save_lora
from ..prompts import load_prompts
from ..rewards import RewardExecutor
from .config import Config, check_world, dump_config
from .grpo.advantages import AdvantageTracker
from .grpo.transitions import Transitions
from .lifecycle.health import RewardHealth, check_trained, warn_if_nothing_kept
from .lifecycle.signals import StopRequest, StopRequested
from .lifecycle.validation import build_checked_reward, check_start_lora
from .phases.credit import Credit, CreditSettings, assign_credit, epoch_rows
from .phases.divergence import check_rollouts, check_updated_policy
from .phases.prompt_groups import GroupSampler
from .phases.sample import EpochRollouts, SampleSettings, TimedReward, sample_epoch
from .phases.trajectories import Rollouts
from .phases.update import TrainStats, UpdateSettings, count_minibatches, probe_per_forward, train_epoch
from .policy.build import build_policy, model_path
from .policy.distributed import DistInfo, all_reduce_, all_reduce_max_, barrier, broadcast_object
from .policy.zero import deepspeed_config
from .report.epoch import epoch_line, guard_metrics, reward_metrics, run_summary, update_metrics
from .report.evaluator import Evaluator, evaluate, resolve_targets
from .report.plots import save_reward_curve, save_sample_grid
from .report.progress import ProgressBar
from .report.throughput import Throughput, device_peak_flops
from .report.tracking import RunLogger
from .state.checkpoint import CheckpointError, CheckpointManager, checkpoint_tag, set_aside_later
from .state.resume import (RunFolderError, apply_optimizer_settings, changed_settings, check_optimizer_settings, check_prompt_set,
                     choose_start, prompt_set_identity, saved_config)
from .state.rng import capture_rng, restore_rng, seed_everything

logger = logging.getLogger("precise_fast.train")

@dataclass
class _Sampled:
    epoch_key: int
    rollouts: EpochRollouts
    forward_rows: collections.Counter  # transformer rows the rollouts ran, by text length (throughput)


@dataclass
class _Credited:
    credit: Credit
    tracked: dict  # the advantage tracker's statistics
    rows: Transitions | None  # this rank's rows to train on; None: the epoch trains nothing


@dataclass
class _Trained:
    stats: TrainStats | None
    seconds: float


class Trainer:
    def __init__(self, cfg: Config, dist: DistInfo, *, resume: str | None = None, resume_or_start: bool = False,
                 fresh: bool = False, stop: StopRequest | None = None):
        self.cfg = cfg
        self.dist = dist
        self.out_dir = Path(cfg.run.output_dir)
        self.main = dist.is_main
        self.stop = stop
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        check_world(cfg, dist.world_size)
        deepspeed_config(cfg)  # a DeepSpeed setup the engine would refuse fails now, before anything loads
        # Where to start is settled (and a refused resume reported) before any model loads.
        self.resumed_from = self._choose_start(resume, resume_or_start, fresh)
        self.resume_changes = (changed_settings(saved_config(self.resumed_from), cfg, self.resumed_from)
                               if self.resumed_from else [])
        # The same seed on every rank: initial weights (a LoRA's A) must agree, ZeRO-3
        # assembles parameters from every rank's partition. Per-rank randomness is keyed.
        seed_everything(cfg.run.seed)
        device = dist.device

        self.train_set = load_prompts(cfg.prompts.train)
        self.train_set_identity = prompt_set_identity(self.train_set)  # every manifest records it
        if self.resumed_from:
            check_prompt_set(self.resumed_from, self.train_set)
        needs_eval = cfg.eval.every > 0 or cfg.eval.at_start
        self.test_set = load_prompts(cfg.prompts.test) if needs_eval else None
        # The reward before the model: a bad reward setup fails in seconds, not after a 4B load.
        m = cfg.model
        r = cfg.reward
        reward_device = device if r.device == "auto" else torch.device(r.device)
        # The paper scores in float32 (HPS under fp16 autocast on CUDA: rewards/hps.py); "pure" in model.dtype.
        pure = m.precision == "pure" and reward_device.type != "cpu"
        reward_dtype = getattr(torch, m.dtype) if pure else torch.float32
        self.reward = build_checked_reward(cfg, device=reward_device, dtype=reward_dtype,
                                           prompt_sets={"prompts.train": self.train_set, "prompts.test": self.test_set})
        self.reward_health = RewardHealth(r.abort_invalid_fraction, r.abort_window)

        path = model_path(cfg, main=self.main)
        check_start_lora(cfg, path)
        built = build_policy(cfg, path, device)
        self.pipeline, self.policy, self.lora = built.pipeline, built.engine, built.lora
        self.reference, self.ema = built.reference, built.ema
        transformer = self.pipeline.transformer

        self.rollouts = Rollouts(self.pipeline, cfg)
        # What each phase reads of the config, fixed for the run.
        self.sample_settings = SampleSettings.from_config(cfg)
        self.credit_settings = CreditSettings.from_config(cfg)
        self.update_settings = UpdateSettings.from_config(cfg)
        self.throughput = Throughput(transformer.config, self.rollouts.engine.layout.seq_len,
                                     lora_rank=m.lora_rank if self.lora else 0, lora_targets=m.lora_targets,
                                     reference=self.reference is not None, inner_epochs=cfg.train.num_inner_epochs,
                                     world_size=dist.world_size, peak_flops=device_peak_flops(device))

        self.timed_reward = TimedReward(self.reward)
        self.executor = RewardExecutor(self.timed_reward, mode="thread" if r.overlap else "inline",
                                       max_pending=r.max_pending, device=reward_device)
        self.evaluator = Evaluator(self.pipeline, cfg, reward_device=reward_device, reward_dtype=reward_dtype,
                                   train_rollouts=self.rollouts, train_reward=self.reward,
                                   prompt_sets={cfg.prompts.test: self.test_set} if self.test_set is not None else None)
        if needs_eval:
            # A missing prompt file or an eval reward that cannot be built (weights, packages) fails
            # now, not at the first eval hours in; and the eval's reward models take their memory
            # before epoch 1's probe measures what the update may use.
            for target in resolve_targets(cfg):
                self.evaluator.prompt_set(target)
                self.evaluator.reward(target)

        s = cfg.sampler
        self.sampler = GroupSampler(
            len(self.train_set), group_size=s.images_per_prompt, batch_size=s.batch_size,
            num_batches=s.num_batches_per_epoch, world_size=dist.world_size, rank=dist.rank,
            seed=cfg.run.seed, spread=cfg.algorithm.name != "g2rpo",
        )
        self.tracker = AdvantageTracker()
        self.history: list[dict] = []
        self.epoch = 0  # completed epochs
        self.per_forward = cfg.train.timesteps_per_forward if cfg.train.timesteps_per_forward else (0 if device.type == "cpu" else None)

        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last,
                                      rank=dist.rank, world_size=dist.world_size, barrier=barrier)
        self.ckpt.remove_stale()
        if self.resumed_from is not None:
            self._load(self.resumed_from)
        check_optimizer_settings(self.policy.engine, cfg)
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(dump_config(cfg))
        self.logger = RunLogger(self.out_dir, cfg, enabled=self.main, resumed_epoch=self.epoch if self.resumed_from else None)

    # ------------------------------------------------------------------ checkpoint state

    def _trainer_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "sampler": self.sampler.state_dict(),
            "tracker": self.tracker.state_dict(),
            "history": self.history,
            "policy": self.policy.state_dict(),
            "ema": self.ema.state_dict() if self.ema and self.cfg.train.zero_stage != 3 else None,
            "per_forward": self.per_forward,
            "config": self.cfg.to_dict(),
        }

    def _rank_state(self) -> dict:
        state = {"rng": capture_rng()}
        if self.ema and self.cfg.train.zero_stage == 3:  # partitioned: each rank owns its shard
            state["ema"] = self.ema.state_dict()
        return state

    def _lora_exports(self) -> dict[str, dict]:
        """The live and EMA adapters as full tensors. Every rank calls this (a ZeRO-3 gather
        is collective); rank 0 writes them as diffusers LoRA files."""
        if not (self.lora and self.cfg.checkpoint.export_lora):
            return {}
        module = self.policy.module
        with self.policy.gathered():
            out = {"lora": {k: v.clone() for k, v in lora_state_dict(module).items()}}
        if self.ema is not None:
            with self.ema.applied(), self.policy.gathered():
                out["lora_ema"] = {k: v.clone() for k, v in lora_state_dict(module).items()}
        return out

    def save(self) -> Path:
        exports = self._lora_exports()

        def export(folder: Path) -> None:
            for name, state in exports.items():
                save_lora(self.policy.module, folder / name, state_dict=state)

        return self.ckpt.save(
            self.epoch,
            write_engine=lambda p: self.policy.save(p, exclude_frozen=self.lora),
            # Rank 0 writes trainer.pt: the others skip building it (with a full fine-tune's EMA,
            # a host copy of every shadow on every rank).
            trainer_state=self._trainer_state() if self.main else None,
            rank_state=self._rank_state(),
            export=export,
            meta={"zero_stage": self.cfg.train.zero_stage, "finetune": self.cfg.model.finetune,
                  "config": self.cfg.to_dict(), "prompt_set": self.train_set_identity},
        )

    def _choose_start(self, resume: str | None, resume_or_start: bool, fresh: bool = False) -> Path | None:
        """Rank 0 decides (it may move files aside); every rank gets the answer or the same error."""
        answer = None
        if self.main:
            try:
                folder = choose_start(self.out_dir, resume, or_start=resume_or_start, fresh=fresh, warn=logger.warning)
                answer = ("ok", None if folder is None else str(folder))
            except (CheckpointError, RunFolderError) as err:
                answer = ("error", str(err))
        kind, value = broadcast_object(answer)  # a rank-0 failure of any other kind kills the job (launcher)
        if kind != "ok":
            raise CheckpointError(value)
        return None if value is None else Path(value)

    def _load(self, folder: Path) -> None:
        _, ts, rs = self.ckpt.load(folder, read_engine=lambda p: self.policy.load(p, exclude_frozen=self.lora))
        # The optimizer state just loaded carries the interrupted run's settings; the config's win.
        apply_optimizer_settings(self.policy.engine, self.cfg)
        try:  # the states check that they fit this run (prompt set size, seed, adapter shapes)
            self.sampler.load_state_dict(ts["sampler"])
            self.tracker.load_state_dict(ts["tracker"])
            if self.ema is not None:
                self.ema.load_state_dict(rs["ema"] if self.cfg.train.zero_stage == 3 else ts["ema"])
        except ValueError as err:
            raise CheckpointError(f"--resume {folder}: {err}") from None
        self.epoch = ts["epoch"]
        self.history = ts["history"]
        self.policy.load_state_dict(ts["policy"])
        self.per_forward = ts["per_forward"]
        restore_rng(rs["rng"])
        if self.resume_changes and self.main:
            logger.warning("resuming %s with changed settings %s: the run will not match an uninterrupted one",
                           folder, self.resume_changes)
        if self.main:  # only once the resume is accepted: the later checkpoints are an abandoned timeline
            moved = set_aside_later(self.ckpt.root, self.epoch, warn=logger.warning)
            if moved and (self.out_dir / "metrics.jsonl").is_file():  # its metrics go with it
                shutil.copy2(self.out_dir / "metrics.jsonl", moved[0].parent / "metrics.jsonl")
        barrier()
        if self.main:
            logger.info("resumed from %s (epoch %d done)", folder, self.epoch)

    # ------------------------------------------------------------------ one epoch

    def _due(self, every: int, epoch: int) -> bool:
        return every > 0 and (epoch % every == 0 or epoch == self.cfg.run.epochs)

    def _checkpoint_due(self, epoch: int) -> bool:
        """``checkpoint.every`` epochs, and always the last one (also with ``every: 0``)."""
        return self._due(self.cfg.checkpoint.every, epoch) or epoch == self.cfg.run.epochs

    def _stop_check(self, where: str):
        return None if self.stop is None else (lambda: self.stop.check(where))

    def _on_update(self, applied: bool) -> None:
        if applied and self.ema is not None and not self.ema.per_minibatch:
            self.ema.step(self.policy.applied_steps)

    def _on_minibatch(self) -> None:
        if self.ema is not None and self.ema.per_minibatch:
            self.ema.step(self.policy.applied_steps)

    def _resolve_per_forward(self, data) -> int:
        if self.per_forward is None:  # CUDA "auto": probe once, then it is part of the run's state
            self.per_forward = probe_per_forward(self.policy, data, self.update_settings)
        return self.per_forward

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch: its four phases in run order (train/phases/), one call each; returns its metrics."""
        start = time.perf_counter()
        sampled = self.sample(epoch)
        credited = self.credit(sampled)
        trained = self.update(epoch, sampled.epoch_key, credited.rows)
        self.epoch = epoch
        return self.report(epoch, sampled, credited, trained, epoch_s=time.perf_counter() - start)

    def sample(self, epoch: int) -> _Sampled:
        """Every batch of this rank's share of the epoch, rewards scored while the next batch samples."""
        epoch_key, batches, _ = self.sampler.next_epoch()
        forward_rows = self.rollouts.engine.forward_rows.copy()
        show = self.main and self.cfg.log.progress
        bar = ProgressBar(show, total=len(batches), desc=f"epoch {epoch} sampling", position=0,
                   on_update=self._stop_check(f"while sampling epoch {epoch} (the epoch is abandoned)"))
        reward_bar = ProgressBar(show, total=len(batches), desc=f"epoch {epoch} rewards", position=1)
        self.policy.module.eval()
        want_images = self.main and self._due(self.cfg.log.image_every, epoch)
        rollouts = sample_epoch(
            self.rollouts, self.executor, self.timed_reward, batches,
            prompts=self.train_set.prompts, metadata=self.train_set.metadata, settings=self.sample_settings,
            epoch_key=epoch_key, keep_preview=self.cfg.log.num_images if want_images else 0, progress=bar,
            reward_progress=reward_bar, gathered=self.policy.gathered,
        )
        bar.close()
        reward_bar.close()
        check_rollouts(epoch, rollouts.transitions, self.policy.params, all_reduce_max=all_reduce_max_,
                       checkpoints_root=self.ckpt.root, lora_path=self.cfg.train.lora_path or "")
        return _Sampled(epoch_key, rollouts, self.rollouts.engine.forward_rows - forward_rows)

    def credit(self, sampled: _Sampled) -> _Credited:
        """Rewards of every rank to advantages; this rank's rows to train on (None: the epoch trains nothing)."""
        er = sampled.rollouts
        credit = assign_credit(er, weights=self.reward.weights, settings=self.credit_settings, rank=self.dist.rank,
                               num_steps=er.transitions.num_steps)
        tracked = self.tracker.update(credit.global_prompt_index.tolist(), credit.global_raw, credit.global_valid,
                                      credit.global_keep)
        rows = epoch_rows(er.transitions, credit, settings=self.credit_settings, epoch_key=sampled.epoch_key,
                          rank=self.dist.rank)
        del er.transitions  # the kept rows are all the update needs
        return _Credited(credit, tracked, rows)

    def update(self, epoch: int, epoch_key: int, rows: Transitions | None) -> _Trained:
        """Guarded DeepSpeed steps over the kept rows (nothing when this rank has none to train on).

        Its seconds (``time/train_s``, the update's throughput and MFU) are the steps' own, the
        GPU's work finished: not epoch 1's memory probe, nor the check of the updated policy."""
        if rows is None:
            return _Trained(None, 0.0)
        per_forward = self._resolve_per_forward(rows)
        start = time.perf_counter()
        bar = ProgressBar(self.main and self.cfg.log.progress, total=count_minibatches(rows, self.update_settings),
                   desc=f"epoch {epoch} training")
        self.policy.module.train()
        stats = train_epoch(
            self.policy, rows, settings=self.update_settings, epoch_key=epoch_key, rank=self.dist.rank,
            world_size=self.dist.world_size, per_forward=per_forward, reference=self.reference, on_update=self._on_update,
            on_minibatch=self._on_minibatch, progress=bar,
        )
        if rows.x.device.type == "cuda":
            torch.cuda.synchronize(rows.x.device)
        seconds = time.perf_counter() - start
        self.policy.module.eval()
        bar.close()
        check_updated_policy(epoch, self.policy, rows, self.update_settings, lr=self.cfg.train.lr,
                             every_update_skipped=stats.updates > 0 and not stats.applied, all_reduce_max=all_reduce_max_,
                             checkpoints_root=self.ckpt.root)
        return _Trained(stats, seconds)

    def report(self, epoch: int, sampled: _Sampled, credited: _Credited, trained: _Trained, *,
               epoch_s: float) -> dict[str, float]:
        """The epoch's metrics (every rank: some are all-reduced) and, when due, its sample grid (rank 0)."""
        er, credit = sampled.rollouts, credited.credit
        metrics = update_metrics(trained.stats) if trained.stats is not None else {}
        metrics.update(reward_metrics(credit, credited.tracked))
        metrics.update({f"time/{k}": v for k, v in er.timings.items()})
        metrics["time/train_s"] = trained.seconds
        metrics["time/epoch_s"] = epoch_s
        metrics.update(self.throughput.epoch_metrics(sampled.forward_rows, er, credited.rows, trained.seconds))
        metrics.update(guard_metrics(self.policy.guard))
        if er.preview_images is not None:  # kept (rank 0) only in epochs whose images are due
            raw = credit.global_raw.reshape(credit.global_raw.shape[0], -1)[:, 0]
            rewards = [float(raw[i]) for i in er.preview_rows]
            png = save_sample_grid(self.out_dir / "images" / f"samples_epoch_{epoch:04d}.png", er.preview_images,
                                   [er.prompts[i] for i in er.preview_rows], rewards,
                                   title=f"{self.cfg.run.name} epoch {epoch}")
            self.logger.log_image("samples", png, epoch)
        return metrics

    # ------------------------------------------------------------------ eval and the loop

    def run_eval(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        keep = cfg.log.num_images if self.main else 0
        weights = self.ema.applied if (self.ema is not None and cfg.eval.use_ema) else None
        metrics, previews = evaluate(self.evaluator, cfg=cfg, rank=self.dist.rank, world_size=self.dist.world_size,
                                     weights_context=weights, gathered=self.policy.gathered, keep_preview=keep)
        for i, (name, preview) in enumerate(previews.items()):
            if self.main and preview["images"]:
                stem = "eval" if i == 0 and not cfg.eval.targets else f"eval_{name}"
                png = save_sample_grid(self.out_dir / "images" / f"{stem}_epoch_{epoch:04d}.png",
                                       torch.stack(preview["images"]), preview["prompts"], preview["rewards"],
                                       title=f"{cfg.run.name}: eval target {name!r} after epoch {epoch}")
                self.logger.log_image(f"{stem}_samples", png, epoch)
        return metrics

    def run(self) -> dict:
        cfg = self.cfg
        if cfg.eval.at_start and self.epoch == 0:
            base = self.run_eval(0)
            self.logger.log(base, 0)
            self.history.append({"epoch": 0, "eval_reward_mean": base["eval/reward_mean"]})  # the summary's base
        for epoch in range(self.epoch + 1, cfg.run.epochs + 1):
            metrics = self.run_epoch(epoch)
            warn_if_nothing_kept(epoch, metrics["advantage/kept_fraction"], main=self.main)
            if self._due(cfg.eval.every, epoch):
                metrics.update(self.run_eval(epoch))
            record = {"epoch": epoch, "reward_mean": metrics["reward_mean"], "reward_std": metrics["reward_std"]}
            if "eval/reward_mean" in metrics:
                record["eval_reward_mean"] = metrics["eval/reward_mean"]
            self.history.append(record)
            self.logger.log(metrics, epoch)
            if self.main:
                print(epoch_line(epoch, cfg.run.epochs, metrics), flush=True)
                if self._due(cfg.log.image_every, epoch):
                    save_reward_curve(self.out_dir / "reward_curve.png", self.history, title=cfg.run.name)
            if self._checkpoint_due(epoch):
                self.save()
            self.reward_health.update(epoch, metrics["reward/invalid_fraction"])
            signum = self.stop.agreed() if self.stop is not None else 0
            if signum:
                if not self._checkpoint_due(epoch):
                    self.save()  # the finished epoch is kept
                raise StopRequested(signum, f"after epoch {epoch} (checkpoint {checkpoint_tag(epoch)} complete)")
        check_trained(epochs=self.epoch, applied_steps=self.policy.applied_steps,
                      skipped_updates=int(self.policy.guard.skipped_updates), images_per_prompt=cfg.sampler.images_per_prompt)
        summary = run_summary(self.history, name=cfg.run.name, out_dir=self.out_dir)
        if self.main:
            save_reward_curve(self.out_dir / "reward_curve.png", self.history, title=cfg.run.name)
            note = self.ema.unreached_decay_note(self.policy.applied_steps) if self.ema is not None else None
            if note:
                print(f"[precise_fast] note: {note}", flush=True)
            print(summary["line"], flush=True)
        return summary

    def close(self) -> None:
        self.executor.close(wait=False)
        self.evaluator.close()
        self.logger.close()
