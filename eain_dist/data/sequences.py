"""Per-user order, fixed-length histories and the leave-last-out split (DESIGN.md).

Everything works on one user partition at a time (all interactions of its users), vectorised
over the whole partition: no Python loop per user or per row.

A user's order is (timestamp, input position): equal timestamps (day-granular in the 2014 and
2018 releases) keep the order of the input records, never an order derived from ids or
popularity, which would decide which item becomes the test positive.

An interaction's history is, by `data.history_ties`:
- input_order (default, the reference protocol): every interaction of the user earlier in that
  order, same-timestamp ones earlier in the input included;
- strict_time: only interactions with a strictly earlier timestamp (same-time reviews share one
  history).
Most recent last, left-padded with 0 to `max_history`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eain_dist.data import context

SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True, kw_only=True)
class UserSequences:
    """A partition's interactions sorted by (user, timestamp, input position), with per-row user
    bounds."""

    user: np.ndarray  # N, int64 user index
    item: np.ndarray  # N, int64 item index
    category: np.ndarray  # N, int64 category index
    timestamp: np.ndarray  # N, int64 seconds
    user_start: np.ndarray  # N, first row of this row's user
    user_end: np.ndarray  # N, one past the last row of this row's user


def sort_by_user_order(user, item, category, timestamp, position) -> UserSequences:
    order = np.lexsort((position, timestamp, user))
    user, item, category, timestamp = user[order], item[order], category[order], timestamp[order]
    boundaries = np.flatnonzero(np.diff(user)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(user)]))
    lengths = ends - starts
    return UserSequences(
        user=user, item=item, category=category, timestamp=timestamp,
        user_start=np.repeat(starts, lengths), user_end=np.repeat(ends, lengths),
    )


def history_end(seq: UserSequences, ties: str) -> np.ndarray:
    """Row index one past the last interaction of each row's history (same user)."""
    if ties == "input_order":
        return np.arange(len(seq.user))  # every earlier row of the user
    # Rows are sorted by (user, timestamp): a left search for (user, t) finds the first row of
    # this user at time >= t. Users are made consecutive ordinals so the key fits in int64.
    ordinal = np.cumsum(np.concatenate(([0], np.diff(seq.user) != 0)))
    key = ordinal.astype(np.int64) * (1 << 36) + (seq.timestamp - seq.timestamp.min())
    return np.searchsorted(key, key, side="left")


def gather_history(values: np.ndarray, start: np.ndarray, end: np.ndarray, max_history: int) -> np.ndarray:
    """N x L matrix of values[max(start, end-L):end], left-padded with 0."""
    # A history is a contiguous slice of the sorted rows: take the L-wide window ending at
    # `end` from a zero-padded copy (one gather), then blank what belongs to other users.
    padded = np.concatenate([np.zeros(max_history, dtype=np.int64), values.astype(np.int64, copy=False)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, max_history)
    history = windows[end]  # N x L: values[end-L:end]
    own = np.arange(max_history)[None, :] >= (max_history - (end - start))[:, None]
    return np.multiply(history, own, out=history)  # in place: N x L is the largest array here


def split_of(seq: UserSequences, hist_len: np.ndarray) -> np.ndarray:
    """Leave-last-out: last row of a user -> test, second-last -> valid, the rest -> train.

    Training rows without any history get -1 (dropped and counted by the caller).
    """
    split = np.full(len(seq.user), SPLIT_TRAIN, dtype=np.int8)
    split[seq.user_end - 1 == np.arange(len(seq.user))] = SPLIT_TEST
    split[seq.user_end - 2 == np.arange(len(seq.user))] = SPLIT_VALID
    split[(split == SPLIT_TRAIN) & (hist_len == 0)] = -1
    return split


def context_features(seq: UserSequences, hist_end: np.ndarray) -> dict[str, np.ndarray]:
    """Hour and weekday of the row's own time; gap since the last interaction of its history
    (0 seconds for a same-time review earlier in the input: only the past is used)."""
    has_previous = hist_end > seq.user_start
    previous_time = seq.timestamp[np.maximum(hist_end - 1, 0)]
    return {
        "hour": context.hour_of_day(seq.timestamp),
        "weekday": context.day_of_week(seq.timestamp),
        "gap": context.gap_bucket(seq.timestamp - previous_time, has_previous),
    }
