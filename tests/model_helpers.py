"""Fake meta.json and batches in the data pipeline's layout, for the model tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

FEATURE_TABLES = {
    "user": "user", "item": "item", "hist_item": "item", "category": "category",
    "hist_category": "category", "hour": "hour", "weekday": "weekday", "gap": "gap",
}


def fake_meta(*, users: int = 300, items: int = 200, categories: int = 12, max_history: int = 20) -> dict:
    """meta.json as prepare writes it: rows include the padding row 0."""
    return {
        "tables": {"user": users + 1, "item": items + 1, "category": categories + 1, "hour": 24, "weekday": 7,
                   "gap": 32},
        "features": dict(FEATURE_TABLES),
        "max_history": max_history,
    }


def random_batch(meta: dict, size: int, seed: int, *, min_history: int = 0) -> dict[str, Tensor]:
    """Random ids; histories left-padded with 0 behind `hist_len` real entries (ids >= 1)."""
    g = torch.Generator().manual_seed(seed)
    tables, length = meta["tables"], meta["max_history"]

    def ids(table: str, *shape: int, low: int = 0) -> Tensor:
        return torch.randint(low, tables[table], shape, generator=g)

    hist_len = torch.randint(min_history, length + 1, (size,), generator=g)
    real = torch.arange(length) >= (length - hist_len).unsqueeze(1)  # B x L
    return {
        "user": ids("user", size), "item": ids("item", size), "category": ids("category", size),
        "hour": ids("hour", size), "weekday": ids("weekday", size), "gap": ids("gap", size),
        "hist_item": ids("item", size, length, low=1) * real,
        "hist_category": ids("category", size, length, low=1) * real,
        "hist_len": hist_len.to(torch.int32),
        "position": torch.zeros(size, dtype=torch.int32),
        "label": torch.randint(0, 2, (size,), generator=g).float(),
        "request_id": torch.arange(size), "timestamp": torch.zeros(size, dtype=torch.int64),
    }


def learnable_batch(meta: dict, size: int, seed: int) -> dict[str, Tensor]:
    """A batch whose label is a hidden function of the target item and the history.

    label = 1 when the target item's hidden score plus the mean hidden score of the history's
    items is above the median: a signal that needs the history, which every model can reach.
    """
    batch = random_batch(meta, size, seed, min_history=1)
    g = torch.Generator().manual_seed(seed + 1)
    item_score = torch.randn(meta["tables"]["item"], generator=g)
    mask = torch.arange(meta["max_history"]) >= (meta["max_history"] - batch["hist_len"]).unsqueeze(1)
    history_score = (item_score[batch["hist_item"]] * mask).sum(1) / batch["hist_len"]
    score = item_score[batch["item"]] + history_score
    batch["label"] = (score > score.median()).float()
    return batch


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank-based AUC (Mann-Whitney U), ties given their average rank."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
