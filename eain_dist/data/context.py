"""Context features of an impression, computed only from its own timestamp and the past.

All times are UTC seconds. `gap` is the log2-bucketed time since the last interaction of the
impression's history (the user's previous one in the user's order); bucket 0 means "no previous
interaction", bucket 1 a previous one at the same second (an input-order tie).
"""

from __future__ import annotations

import numpy as np

GAP_BUCKETS = 32  # 0 = none, 1..31 = 1 + floor(log2(1 + seconds)), capped: 2**30 s is ~34 years
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday = 0 as in datetime.weekday()


def hour_of_day(timestamp: np.ndarray) -> np.ndarray:
    return (timestamp // 3600) % 24


def day_of_week(timestamp: np.ndarray) -> np.ndarray:
    return (timestamp // 86400 + _EPOCH_WEEKDAY) % 7


def gap_bucket(seconds_since_previous: np.ndarray, has_previous: np.ndarray) -> np.ndarray:
    """Log-bucketed gap: 0 = no previous interaction, then 1 + floor(log2(1 + seconds))."""
    seconds = np.maximum(seconds_since_previous, 0).astype(np.float64)
    bucket = 1 + np.floor(np.log2(1.0 + seconds)).astype(np.int64)
    bucket = np.minimum(bucket, GAP_BUCKETS - 1)
    return np.where(has_previous, bucket, 0)
