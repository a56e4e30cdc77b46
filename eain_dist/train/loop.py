"""`train_loop_per_worker`: what every Ray Train worker runs, top to bottom."""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch

from eain_dist.config import Config, load_config_dict
from eain_dist.distributed import checkpoint
from eain_dist.distributed.collectives import gather_from_ranks
from eain_dist.train.data import without_padding
from eain_dist.train.evaluation import evaluate
from eain_dist.train.tracking import Tracker
from eain_dist.train.worker import (Worker, build_worker, placement_plan, set_learning_rates, synchronized_batches,
                                     train_step)


@dataclass
class TrainingState:
    """Everything a resumed run needs besides the weights; saved in each checkpoint."""

    epoch: int = 0  # epochs completed
    steps: int = 0  # optimizer steps of the weights in hand
    restarts: int = 0  # times this run resumed from a checkpoint after a failure
    best_evaluation: int = 0  # 1-based index into `history` of the best validation AUC; 0 = none yet
    best_valid_auc: float = -math.inf
    stalls: int = 0  # evaluations without a better validation AUC (each one decays the rates by train.lr_decay)
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    def record(self, row: dict) -> bool:
        """Add an evaluation; True when it is the best so far. The first evaluation always is
        (even with an undefined AUC, e.g. a split of one class); a later one must beat it."""
        self.history.append(row)
        auc = row["valid_auc"]
        if self.best_evaluation == 0 or (not math.isnan(auc) and (math.isnan(self.best_valid_auc)
                                                                   or auc > self.best_valid_auc)):
            self.best_evaluation, self.best_valid_auc = len(self.history), auc
            return True
        self.stalls += 1
        return False

    def patience_left(self, patience: int) -> bool:
        """Early stopping: fewer than `patience` evaluations since the best (0 = never stop)."""
        return patience == 0 or len(self.history) - max(self.best_evaluation, 0) < patience

    @property
    def best(self) -> dict:
        return self.history[self.best_evaluation - 1]


@dataclass
class EpochProgress:
    """This rank's training since the epoch began; evaluation time is kept out of the throughput."""

    started: float = field(default_factory=time.perf_counter)
    evaluation_s: float = 0.0
    samples: int = 0
    losses: list[float] = field(default_factory=list)

    def stats(self, worker: Worker) -> dict:
        per_rank = [int(n) for n in gather_from_ranks(np.array([self.samples], dtype=np.int64), worker.device)[:, 0]]
        seconds = max(time.perf_counter() - self.started - self.evaluation_s, 1e-9)
        return {"train_loss": float(np.nanmean(self.losses)) if self.losses else float("nan"),
                "samples": sum(per_rank), "samples_per_rank": per_rank, "samples_per_s": sum(per_rank) / seconds}


def train_loop_per_worker(loop_config: dict) -> dict:
    config: Config = load_config_dict(loop_config["config"])
    meta, run_dir = loop_config["meta"], loop_config["run_dir"]
    rank = ray.train.get_context().get_world_rank()
    worker = build_worker(config, meta, ray.train.torch.get_device())
    state = _restore(worker, ray.train.get_checkpoint())
    tracker = Tracker(config, rank, run_dir, name=loop_config.get("run_name"))
    if rank == 0:
        print("\n".join(placement_plan(worker)), flush=True)
    while state.epoch < config.train.epochs and state.patience_left(config.train.early_stopping_patience):
        _train_epoch(worker, state, tracker, config, loop_config)
    if rank == 0:
        tracker.log_curves(state.history, state.loss_curve, os.path.join(run_dir, "curves.png"))
    tracker.finish({"best_epoch": state.best["epoch"], "best_steps": state.best["steps"],
                    **{k: v for k, v in state.best.items() if k.startswith(("valid_", "test_"))}})
    return asdict(state)  # rank 0's reaches the driver as Result.return_value


def evaluate_loop_per_worker(loop_config: dict) -> dict:
    """Restore a checkpoint (any world size) and compute exact metrics of one split."""
    config: Config = load_config_dict(loop_config["config"])
    worker = build_worker(config, loop_config["meta"], ray.train.torch.get_device())
    saved = ray.train.Checkpoint(loop_config["checkpoint"])
    checkpoint.load(saved.path, filesystem=saved.filesystem, model=worker.model, dense_optimizer=None,
                    collection=worker.collection)
    return evaluate(worker, _batches(loop_config["split"], config.train.eval_batch_size, config))


def _train_epoch(worker: Worker, state: TrainingState, tracker: Tracker, config: Config, loop_config: dict) -> None:
    """One pass over this rank's share, evaluating every train.eval_every_steps steps and at the end."""
    progress, every = EpochProgress(), config.train.eval_every_steps
    for batch in synchronized_batches(_training_batches(config, state.epoch), worker):
        _maybe_inject_fault(config, [state.epoch + 1, len(progress.losses)], loop_config)
        progress.losses.append(train_step(worker, batch))
        progress.samples += len(batch["label"])
        state.steps += 1
        _log_loss(state, tracker, progress.losses, config.train.log_every_steps)
        if every and state.steps % every == 0:
            _evaluate_and_report(worker, state, tracker, config, progress, epoch_done=False)
            if not state.patience_left(config.train.early_stopping_patience):
                return  # every rank sees the same metrics, so every rank stops at this step
    state.epoch += 1
    _evaluate_and_report(worker, state, tracker, config, progress, epoch_done=True)


def _log_loss(state: TrainingState, tracker: Tracker, losses: list[float], every: int) -> None:
    if state.steps % every == 0:
        recent = float(np.nanmean(losses[-every:]))
        state.loss_curve.append((state.steps, recent))
        tracker.log({"train/loss": recent, "train/epoch": state.epoch}, step=state.steps)


def _evaluate_and_report(worker: Worker, state: TrainingState, tracker: Tracker, config: Config,
                         progress: EpochProgress, epoch_done: bool) -> None:
    started = time.perf_counter()
    training = progress.stats(worker)
    valid = evaluate(worker, _batches("valid", config.train.eval_batch_size, config))
    test = evaluate(worker, _batches("test", config.train.eval_batch_size, config))
    row = {"evaluation": len(state.history) + 1, "epoch": state.epoch if epoch_done else state.epoch + 1,
           "epoch_done": epoch_done, "steps": state.steps, **training,
           **_prefixed("valid", valid), **_prefixed("test", test)}
    is_best = state.record(row)
    set_learning_rates(worker, config.train.lr_decay ** state.stalls)
    tracker.log(row, step=state.steps)
    _report(worker, state, is_best)
    progress.evaluation_s += time.perf_counter() - started


def _training_batches(config: Config, epoch: int):
    shuffle = {}
    if config.train.shuffle_buffer > 0:  # a new order every epoch (and on every rank)
        rank = ray.train.get_context().get_world_rank()
        shuffle = {"local_shuffle_buffer_size": config.train.shuffle_buffer,
                   "local_shuffle_seed": (config.train.seed * 1_000_003 + epoch) * 1_009 + rank}
    return _batches("train", config.train.batch_size, config, **shuffle)


def _batches(split: str, batch_size: int, config: Config, **shuffle):
    shard = ray.train.get_dataset_shard(split)
    batches = shard.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                 prefetch_batches=config.train.prefetch_batches, **shuffle)
    return (without_padding(batch) for batch in batches)


def _prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _restore(worker: Worker, saved) -> TrainingState:
    """The state of the latest checkpoint (a run resumed after a failure redoes the epoch it was in)."""
    if saved is None:
        return TrainingState()
    state = TrainingState(**checkpoint.load(saved.path, filesystem=saved.filesystem, model=worker.model,
                                            dense_optimizer=worker.dense_optimizer, collection=worker.collection))
    state.loss_curve = [tuple(p) for p in state.loss_curve]
    set_learning_rates(worker, worker.config.train.lr_decay ** state.stalls)
    state.restarts += 1
    return state


def _report(worker: Worker, state: TrainingState, is_best: bool) -> None:
    """Every rank writes its shard; Ray Train merges them into one checkpoint directory.

    Ray keeps the checkpoints of the two highest `selection_rank`s and the latest: the rank is
    the evaluation's number when it became the best so far (else -1), so the best is always kept.
    """
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as directory:
        checkpoint.save(directory, rank=rank, model=worker.model, dense_optimizer=worker.dense_optimizer,
                        collection=worker.collection, state=asdict(state))
        ray.train.report({**state.history[-1], "best_valid_auc": state.best_valid_auc,
                          "selection_rank": state.best_evaluation if is_best else -1},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def _maybe_inject_fault(config: Config, epoch_and_step: list[int], loop_config: dict) -> None:
    """Testing aid: the last rank dies once, at a chosen step, as a crashed worker would."""
    marker = Path(loop_config["run_dir"]) / "fault-injected"
    last_rank = ray.train.get_context().get_world_rank() == ray.train.get_context().get_world_size() - 1
    if epoch_and_step == config.train.inject_fault and last_rank and not marker.exists():
        ray.train.get_all_reported_checkpoints()  # a crash after the last checkpoint is registered
        marker.write_text(f"worker died in epoch {epoch_and_step[0]} at step {epoch_and_step[1]}\n")
        os._exit(1)
