"""Exact evaluation metrics over a whole split: AUC, gAUC and logloss, from logits.

Scores are ranked by logit, never by a float32 sigmoid: every logit above ~17 rounds to 1.0
in float32 and would tie. Each metric is a sum of parts that a rank computes on its own rows,
so that the trainer can evaluate a split spread over W ranks without any rank holding it all
(worker.evaluate routes the rows first; see there):

    logloss   sum over rows                                     any rows on any rank
    AUC       Mann-Whitney U = sum over positives of the negatives ranked below (ties half):
              with the rows range-partitioned by logit, a rank adds the negatives of the
              lower ranges to its own U
    gAUC      sum over users of n_u AUC_u, and of n_u: all rows of a user on one rank
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np

PROBABILITY_EPS = 1e-7  # logloss clips probabilities to [eps, 1 - eps]


@dataclass
class Parts:
    """One rank's share of the metrics (sums over ranks give the whole split's)."""

    u: float = 0.0  # Mann-Whitney U of the rank's rows, plus its positives x lower ranges' negatives
    positives: float = 0.0
    negatives: float = 0.0
    gauc_weighted: float = 0.0  # sum over the rank's users (both classes) of n_u AUC_u
    gauc_weight: float = 0.0  # sum over those users of n_u
    logloss_sum: float = 0.0
    rows: float = 0.0

    def to_array(self) -> np.ndarray:
        return np.array(astuple(self), dtype=np.float64)

    @staticmethod
    def from_array(values: np.ndarray) -> "Parts":
        return Parts(*map(float, values))

    def metrics(self) -> dict[str, float]:
        pairs = self.positives * self.negatives
        return {"auc": self.u / pairs if pairs else float("nan"),
                "gauc": self.gauc_weighted / self.gauc_weight if self.gauc_weight else float("nan"),
                "logloss": self.logloss_sum / self.rows if self.rows else float("nan"),
                "impressions": int(self.rows)}


def evaluate(logits: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """The metrics of rows all held here (one process)."""
    parts = auc_parts(logits, labels, negatives_below=0)
    parts.gauc_weighted, parts.gauc_weight = gauc_parts(logits, labels, users)
    parts.logloss_sum, parts.rows = logloss_sum(logits, labels), len(labels)
    return parts.metrics()


def auc_parts(logits: np.ndarray, labels: np.ndarray, negatives_below: float) -> Parts:
    """U of these rows, plus (their positives x `negatives_below`, the negatives of lower logits elsewhere)."""
    positives = labels > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    u = 0.0
    if n_pos:
        u = float(_average_ranks(logits)[positives].sum() - n_pos * (n_pos + 1) / 2) + n_pos * negatives_below
    return Parts(u=u, positives=n_pos, negatives=n_neg)


def gauc_parts(logits: np.ndarray, labels: np.ndarray, users: np.ndarray) -> tuple[float, float]:
    """(sum of n_u AUC_u, sum of n_u) over the users with both classes; every row of a user must be here."""
    if len(labels) == 0:
        return 0.0, 0.0
    order = np.lexsort((logits, users))
    users, logits, positives = users[order], logits[order], labels[order] > 0.5
    user_start = _group_starts(users)
    ranks = _average_ranks_within(users, logits, user_start)
    group = np.cumsum(np.r_[True, users[1:] != users[:-1]]) - 1
    n = np.bincount(group)
    n_pos = np.bincount(group, weights=positives)
    n_neg = n - n_pos
    rank_sum = np.bincount(group, weights=ranks * positives)
    both = (n_pos > 0) & (n_neg > 0)
    per_user = (rank_sum[both] - n_pos[both] * (n_pos[both] + 1) / 2) / (n_pos[both] * n_neg[both])
    return float((per_user * n[both]).sum()), float(n[both].sum())


def logloss_sum(logits: np.ndarray, labels: np.ndarray) -> float:
    """Sum of the rows' BCE, probabilities sigmoid(logit) in float64 clipped to [eps, 1 - eps]."""
    p = np.clip(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    return float(-np.sum(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


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
