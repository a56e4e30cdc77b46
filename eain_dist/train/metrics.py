"""Exact evaluation metrics over a whole split: AUC, gAUC and logloss.

The trainer gathers every rank's (score, label, user) before calling these, so the figures are
those of the whole split, never a mean of per-worker values.
"""

from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    positives = labels > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> float:
    """Per-user AUC weighted by the user's impressions; users with one class are skipped."""
    order = np.lexsort((scores, users))
    users, scores, positives = users[order], scores[order], labels[order] > 0.5
    user_start = _group_starts(users)
    ranks = _average_ranks_within(users, scores, user_start)
    group = np.cumsum(np.r_[True, users[1:] != users[:-1]]) - 1
    n = np.bincount(group)
    n_pos = np.bincount(group, weights=positives)
    n_neg = n - n_pos
    rank_sum = np.bincount(group, weights=ranks * positives)
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return float("nan")
    per_user = (rank_sum[both] - n_pos[both] * (n_pos[both] + 1) / 2) / (n_pos[both] * n_neg[both])
    return float(np.average(per_user, weights=n[both]))


def logloss(probabilities: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(probabilities.astype(np.float64), eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def evaluate(probabilities: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, float]:
    return {"auc": auc(probabilities, labels), "gauc": gauc(probabilities, labels, users),
            "logloss": logloss(probabilities, labels), "impressions": int(len(labels))}


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    tie_start = _group_starts(sorted_values)
    tie_end = np.r_[tie_start[1:], len(values)]
    tie_of = np.repeat(np.arange(len(tie_start)), tie_end - tie_start)
    average = (tie_start + tie_end + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values))
    ranks[order] = average[tie_of]
    return ranks


def _average_ranks_within(users: np.ndarray, scores: np.ndarray, user_start: np.ndarray) -> np.ndarray:
    """Ranks inside each user's group of rows (rows sorted by user, then score)."""
    new_tie = np.r_[True, (users[1:] != users[:-1]) | (scores[1:] != scores[:-1])]
    tie_start = np.flatnonzero(new_tie)
    tie_end = np.r_[tie_start[1:], len(scores)]
    first_row_of_user = np.repeat(user_start, np.diff(np.r_[user_start, len(scores)]))
    average = (tie_start + tie_end + 1) / 2.0
    tie_of = np.repeat(np.arange(len(tie_start)), tie_end - tie_start)
    return average[tie_of] - first_row_of_user


def _group_starts(sorted_values: np.ndarray) -> np.ndarray:
    if len(sorted_values) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
