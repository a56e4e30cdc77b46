"""Exact metrics from logits, their per-rank parts, and the loop's choice of the best evaluation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eain_dist.config import ConfigError, load_config
from eain_dist.distributed.checkpoint import shard_files_to_read
from eain_dist.distributed.row_optimizers import RowWiseAdagrad
from eain_dist.train import metrics
from eain_dist.train.loop import TrainingState
from eain_dist.train.worker import Worker, set_learning_rates


def pair_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC by counting every (positive, negative) pair, ties half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def reference_metrics(logits, labels, users) -> dict:
    per_user = [(pair_auc(logits[users == u], labels[users == u]), (users == u).sum()) for u in np.unique(users)]
    per_user = [(a, n) for a, n in per_user if not math.isnan(a)]
    p = np.clip(1 / (1 + np.exp(-logits.astype(np.float64))), 1e-7, 1 - 1e-7)
    return {"auc": pair_auc(logits, labels),
            "gauc": sum(a * n for a, n in per_user) / sum(n for _, n in per_user),
            "logloss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))}


def rows(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(size=n), 1).astype(np.float32)  # rounded: many ties
    labels = (rng.random(n) < 1 / (1 + np.exp(-2 * logits))).astype(np.float32)
    return logits, labels, rng.integers(0, 30, n)


def test_metrics_equal_pair_counting_with_ties():
    logits, labels, users = rows()
    got = metrics.evaluate(logits, labels, users)
    for name, value in reference_metrics(logits, labels, users).items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
    assert got["impressions"] == len(labels)


def test_scores_are_ranked_by_logit_not_by_a_float32_sigmoid():
    logits = np.float32([17.5, 18.0, 19.0, 20.0, 21.0, 22.0])
    labels = np.float32([0, 0, 0, 1, 1, 1])
    assert torch.sigmoid(torch.from_numpy(logits)).unique().tolist() == [1.0]  # all tie after a sigmoid
    assert metrics.evaluate(logits, labels, np.zeros(6, np.int64))["auc"] == 1.0
    assert metrics.evaluate(logits, labels, np.zeros(6, np.int64))["gauc"] == 1.0


def test_parts_of_rows_partitioned_as_the_ranks_do_add_up_to_the_whole():
    """By logit range for AUC (each part knowing the negatives below it), by user for gAUC."""
    logits, labels, users = rows(seed=1)
    bounds = np.quantile(logits, [1 / 3, 2 / 3])
    by_range = np.searchsorted(bounds, logits, side="right")
    total, negatives_below = metrics.Parts(), 0.0
    for part in range(3):
        mine = by_range == part
        auc = metrics.auc_parts(logits[mine], labels[mine], negatives_below)
        negatives_below += auc.negatives
        mine = users % 3 == part
        weighted, weight = metrics.gauc_parts(logits[mine], labels[mine], users[mine])
        total = metrics.Parts.from_array(total.to_array() + metrics.Parts(
            u=auc.u, positives=auc.positives, negatives=auc.negatives, gauc_weighted=weighted, gauc_weight=weight,
            logloss_sum=metrics.logloss_sum(logits[mine], labels[mine]), rows=mine.sum()).to_array())
    whole = metrics.evaluate(logits, labels, users)
    assert total.metrics() == pytest.approx(whole, rel=1e-12)


def test_one_class_gives_nan_auc_not_an_error():
    out = metrics.evaluate(np.float32([0.1, 0.2]), np.float32([1, 1]), np.int64([1, 2]))
    assert math.isnan(out["auc"]) and math.isnan(out["gauc"]) and out["logloss"] > 0


def row(auc: float) -> dict:
    return {"valid_auc": auc, "epoch": 1, "steps": 0}


def test_a_nan_validation_auc_still_gives_a_best_evaluation():
    state = TrainingState()
    assert state.record(row(float("nan"))) and state.best_evaluation == 1
    assert not state.record(row(float("nan")))
    assert state.record(row(0.6)) and state.best["valid_auc"] == 0.6  # a number beats an undefined AUC
    assert not state.record(row(float("nan"))) and state.best_evaluation == 3


def test_patience_counts_evaluations_and_zero_never_stops():
    state = TrainingState()
    for auc in (0.70, 0.72, 0.71):
        state.record(row(auc))
    assert state.patience_left(2) and not state.patience_left(1)
    state.record(row(0.70))
    assert not state.patience_left(2) and state.patience_left(0)


def test_each_evaluation_without_a_better_validation_auc_decays_every_learning_rate():
    config = load_config(overrides=["train.lr=0.01", "train.embedding_lr=0.2", "train.lr_decay=0.1"])
    weights = torch.nn.Linear(2, 1)
    worker = Worker(model=weights, ddp=weights, collection=SimpleNamespace(optimizer=RowWiseAdagrad(lr=0.2)),
                    dense_optimizer=torch.optim.Adam(weights.parameters(), lr=0.01), config=config, max_history=1,
                    device=torch.device("cpu"))
    state = TrainingState()
    for auc in (0.70, 0.69, 0.72, 0.71, 0.70):  # two stalls after the best so far, one before it
        state.record(row(auc))
    assert state.stalls == 3
    set_learning_rates(worker, config.train.lr_decay ** state.stalls)
    assert math.isclose(worker.dense_optimizer.param_groups[0]["lr"], 1e-5)
    assert math.isclose(worker.collection.optimizer.lr, 2e-4)


@pytest.mark.parametrize("setting, message", [
    ("train.lr_decay=0", "train.lr_decay must be in \\(0, 1\\]"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience must be >= 0 \\(0 = no early stopping\\)"),
    ("train.eval_every_steps=-5", "train.eval_every_steps must be >= 0"),
    ("train.shuffle=rows", "train.shuffle must be files, global or none"),
])
def test_bad_training_values_are_one_line_errors(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[setting])


def test_restoring_on_the_same_world_size_reads_only_the_ranks_own_shard():
    names = ["dense.pt", "shards-rank=0.pt", "shards-rank=1.pt", "state.json"]
    assert shard_files_to_read(names, rank=1, world_size=2) == ["shards-rank=1.pt"]
    assert shard_files_to_read(names, rank=0, world_size=1) == ["shards-rank=0.pt", "shards-rank=1.pt"]
    assert shard_files_to_read(names, rank=3, world_size=4) == ["shards-rank=0.pt", "shards-rank=1.pt"]
