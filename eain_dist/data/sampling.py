"""Negative sampling, requests and Skive-Above.

Negatives are items the user never interacted with, drawn for each positive and given the
positive's user, history and context. Three samplers:

- `UniformSampler`: uniform over the item vocabulary (exact vocabularies).
- `FrequencyRankSampler`: p(item) ~ count ** power without a per-item table. Exact vocabulary
  ids are frequency-ordered, so all ids with the same count form one contiguous index range:
  pick a range with probability n_ids * count ** power, then an id uniformly inside it.
- `LocalItemSampler`: hashed vocabularies have no global item list; draw from the items seen in
  the user partition (uniformly over distinct items, or by their local popularity). Partitions
  are hash-partitioned by user, so each is a random sample of users and their items.

Requests: a user's interactions closer than `session_gap_s` to the previous one share a request
(valid and test positives form requests of their own). The impressions of a request (its
positives and their negatives) are shuffled into positions 0..k-1. Skive-Above (training split
only): negatives placed after the last positive of their request are discarded, as a user who
stops scrolling never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_REDRAWS = 64  # rounds of redrawing negatives that hit one of the user's own items


@dataclass(frozen=True)
class UniformSampler:
    num_items: int  # table rows, including padding row 0

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(1, self.num_items, size=n)


@dataclass(frozen=True)
class FrequencyRankSampler:
    range_start: np.ndarray  # first index of each same-count range
    range_size: np.ndarray  # number of ids in it
    range_weight: np.ndarray  # range_size * count ** power, normalised

    @classmethod
    def from_count_ranges(cls, start, size, count, power: float) -> "FrequencyRankSampler":
        weight = np.asarray(size, np.float64) * np.power(np.asarray(count, np.float64), power)
        return cls(np.asarray(start, np.int64), np.asarray(size, np.int64), weight / weight.sum())

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ranges = rng.choice(len(self.range_start), size=n, p=self.range_weight)
        return self.range_start[ranges] + (rng.random(n) * self.range_size[ranges]).astype(np.int64)


@dataclass(frozen=True)
class LocalItemSampler:
    items: np.ndarray  # the partition's item indices, one entry per interaction
    by_popularity: bool

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        pool = self.items if self.by_popularity else np.unique(self.items)
        return pool[rng.integers(0, len(pool), size=n)]


def draw_negatives(sampler, rng, owner: np.ndarray, user_item_keys: np.ndarray, num_items_key: int):
    """One negative per entry of `owner` (user ordinal), never one of that user's items.

    `user_item_keys` is sorted `ordinal * num_items_key + item` of every interaction of the
    partition. Returns (items, ok): `ok` is False where no valid item was found after
    MAX_REDRAWS rounds (a user who reviewed nearly everything); the caller counts those.
    """
    items = sampler.draw(rng, len(owner))
    pending = np.flatnonzero(_is_own_item(owner, items, user_item_keys, num_items_key))
    for _ in range(MAX_REDRAWS):
        if len(pending) == 0:
            break
        items[pending] = sampler.draw(rng, len(pending))
        still = _is_own_item(owner[pending], items[pending], user_item_keys, num_items_key)
        pending = pending[still]
    ok = np.ones(len(owner), dtype=bool)
    ok[pending] = False
    return items, ok


def _is_own_item(owner, items, user_item_keys, num_items_key) -> np.ndarray:
    keys = owner * num_items_key + items
    found = np.searchsorted(user_item_keys, keys)
    found = np.minimum(found, len(user_item_keys) - 1)
    return user_item_keys[found] == keys


def session_starts(user_start: np.ndarray, timestamp: np.ndarray, gap_s: int) -> np.ndarray:
    """Row index of the first interaction of each row's session (rows sorted by user, time)."""
    n = len(timestamp)
    rows = np.arange(n)
    new_session = np.ones(n, dtype=bool)
    new_session[1:] = (rows[1:] == user_start[1:]) | (np.diff(timestamp) > gap_s)
    return np.maximum.accumulate(np.where(new_session, rows, 0))


def random_positions(request: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the impressions of each request into positions 0..k-1. `request` is a dense
    request index (0 <= request < 2^40): a random fraction added to it orders each request's
    impressions randomly in one float sort."""
    order = np.argsort(request + rng.random(len(request)))
    sorted_requests = request[order]
    first = np.concatenate(([True], sorted_requests[1:] != sorted_requests[:-1]))
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    position = np.empty(len(order), dtype=np.int32)
    position[order] = np.arange(len(order)) - start
    return position


def skive_above_keep(request: np.ndarray, position: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Mask keeping positives and the negatives placed before their request's last positive
    (`request`: a dense request index)."""
    positive = label > 0
    last_positive = np.full(int(request.max(initial=-1)) + 1, -1, dtype=np.int64)
    np.maximum.at(last_positive, request[positive], position[positive])
    return positive | (position < last_positive[request])
