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
import torch

from eain_dist.config import Config, load_config_dict
from eain_dist.distributed import checkpoint
from eain_dist.distributed.collectives import sum_over_ranks
from eain_dist.train.steps import Worker, build_worker, evaluate, placement_plan, synchronized_batches, train_step
from eain_dist.train.tracking import Tracker


@dataclass
class TrainingState:
    """Everything a resumed run needs besides the weights; saved in each checkpoint."""

    epoch: int = 0  # epochs completed
    steps: int = 0  # optimizer steps of the weights in hand
    restarts: int = 0  # times this run resumed from a checkpoint after a failure
    best_epoch: int = -1
    best_valid_auc: float = -math.inf
    history: list[dict] = field(default_factory=list)  # one row per epoch
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    def record(self, row: dict) -> None:
        self.history.append(row)
        if row["valid_auc"] > self.best_valid_auc:
            self.best_valid_auc, self.best_epoch = row["valid_auc"], row["epoch"]

    def patience_left(self, patience: int) -> bool:
        """Early stopping: fewer than `patience` epochs since the best validation AUC."""
        return self.epoch - max(self.best_epoch, 0) < patience


def train_loop_per_worker(loop_config: dict) -> dict:
    config: Config = load_config_dict(loop_config["config"])
    meta, run_dir = loop_config["meta"], loop_config["run_dir"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    worker = build_worker(config, meta, ray.train.torch.get_device())
    state = _restore(worker, ray.train.get_checkpoint())
    tracker = Tracker(config, rank, run_dir, name=loop_config.get("run_name"))
    if rank == 0:
        print("\n".join(placement_plan(worker)), flush=True)
    while state.epoch < config.train.epochs and state.patience_left(config.train.early_stopping_patience):
        epoch_stats = _train_epoch(worker, state, tracker, config, loop_config)
        valid = evaluate(worker, _batches("valid", config.train.eval_batch_size, config))
        test = evaluate(worker, _batches("test", config.train.eval_batch_size, config))
        state.epoch += 1
        state.record({"epoch": state.epoch, **epoch_stats, **_prefixed("valid", valid), **_prefixed("test", test)})
        tracker.log(state.history[-1], step=state.steps)
        _report(worker, state, rank)
    best = next(h for h in state.history if h["epoch"] == state.best_epoch)
    if rank == 0:
        tracker.log_curves(state.history, state.loss_curve, os.path.join(run_dir, "curves.png"))
    tracker.finish({"best_epoch": state.best_epoch, **{k: v for k, v in best.items() if "_" in k}})
    return asdict(state)  # rank 0's reaches the driver as Result.return_value


def evaluate_loop_per_worker(loop_config: dict) -> dict:
    """Restore a checkpoint (any world size) and compute exact metrics of one split."""
    config: Config = load_config_dict(loop_config["config"])
    worker = build_worker(config, loop_config["meta"], ray.train.torch.get_device())
    with ray.train.Checkpoint(loop_config["checkpoint"]).as_directory() as directory:
        checkpoint.load(directory, model=worker.model, dense_optimizer=None, collection=worker.collection)
    return evaluate(worker, _batches(loop_config["split"], config.train.eval_batch_size, config))


def _train_epoch(worker: Worker, state: TrainingState, tracker: Tracker, config: Config, loop_config: dict) -> dict:
    losses, samples, started = [], 0, time.time()
    for batch in synchronized_batches(_training_batches(config, state.epoch), worker):
        _maybe_inject_fault(config, [state.epoch + 1, len(losses)], loop_config)
        loss = train_step(worker, batch)
        state.steps += 1
        samples += len(batch["label"])
        losses.append(loss)
        if state.steps % config.train.log_every_steps == 0:
            recent = float(np.nanmean(losses[-config.train.log_every_steps:]))
            state.loss_curve.append((state.steps, recent))
            tracker.log({"train/loss": recent, "train/epoch": state.epoch}, step=state.steps)
    seconds = time.time() - started
    world_samples = int(sum_over_ranks(samples, worker.device))
    return {"train_loss": float(np.nanmean(losses)) if losses else float("nan"), "samples": world_samples,
            "samples_per_s": world_samples / max(seconds, 1e-9), "steps": state.steps}


def _training_batches(config: Config, epoch: int):
    shuffle = {}
    if config.train.shuffle_buffer > 0:  # a new order every epoch (and on every rank)
        rank = ray.train.get_context().get_world_rank()
        shuffle = {"local_shuffle_buffer_size": config.train.shuffle_buffer,
                   "local_shuffle_seed": (config.train.seed * 1_000_003 + epoch) * 1_009 + rank}
    return _batches("train", config.train.batch_size, config, **shuffle)


def _batches(split: str, batch_size: int, config: Config, **shuffle):
    shard = ray.train.get_dataset_shard(split)
    return shard.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                              prefetch_batches=config.train.prefetch_batches, **shuffle)


def _prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _restore(worker: Worker, saved) -> TrainingState:
    if saved is None:
        return TrainingState()
    with saved.as_directory() as directory:
        state = TrainingState(**checkpoint.load(directory, model=worker.model, dense_optimizer=worker.dense_optimizer,
                                                collection=worker.collection))
    state.loss_curve = [tuple(p) for p in state.loss_curve]
    state.restarts += 1
    return state


def _report(worker: Worker, state: TrainingState, rank: int) -> None:
    """Every rank writes its shard; Ray Train merges them into one checkpoint directory."""
    with tempfile.TemporaryDirectory() as directory:
        checkpoint.save(directory, rank=rank, model=worker.model, dense_optimizer=worker.dense_optimizer,
                        collection=worker.collection, state=asdict(state))
        ray.train.report({**state.history[-1], "best_valid_auc": state.best_valid_auc},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def _maybe_inject_fault(config: Config, epoch_and_step: list[int], loop_config: dict) -> None:
    """Testing aid: the last rank dies once, at a chosen step, as a crashed worker would."""
    marker = Path(loop_config["run_dir"]) / "fault-injected"
    last_rank = ray.train.get_context().get_world_rank() == ray.train.get_context().get_world_size() - 1
    if epoch_and_step == config.train.inject_fault and last_rank and not marker.exists():
        ray.train.get_all_reported_checkpoints()  # a crash after the last checkpoint is registered
        marker.write_text(f"worker died in epoch {epoch_and_step[0]} at step {epoch_and_step[1]}\n")
        os._exit(1)
