"""Vocabularies: raw ids (strings) to table indices, 0 being padding / out-of-vocabulary.

exact  : ids ordered by frequency (most frequent = 1), ties by partition then raw id, saved as
         Parquet. Computed without a global sort and without collecting ids anywhere: every
         partition holds a disjoint set of ids with their counts; partitions report only a
         histogram (count -> number of ids), from which the driver derives where each
         (partition, count) group starts; partitions then number their own ids.
hashed : index = 1 + stable_hash(raw) mod (buckets - 1), computed once per distinct id for the
         output column only (rows are grouped by the raw id: two users of one bucket keep two
         timelines). Suits the full 54.5M-user / 48.2M-item data; collisions share a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def stable_hash(raw: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hash of each string, identical across processes, machines, runs and versions."""
    import pandas as pd  # only hashed vocabularies need it: keeps it out of every worker's start

    values = raw.to_numpy(zero_copy_only=False) if hasattr(raw, "to_numpy") else np.asarray(raw)
    return pd.util.hash_array(values.astype(object), categorize=False)


def hashed_index(raw, buckets: int) -> np.ndarray:
    return (1 + stable_hash(raw) % np.uint64(buckets - 1)).astype(np.int64)


def count_histogram(part: int, counts: np.ndarray) -> pa.Table:
    values, n = np.unique(counts, return_counts=True)
    return pa.table({"part": np.full(len(values), part, np.uint64), "count": values.astype(np.int64),
                     "n": n.astype(np.int64)})


@dataclass(frozen=True)
class RankOffsets:
    """Where each (partition, count) group starts in the frequency order; small (histograms)."""

    part: np.ndarray  # uint64, sorted by (part, count)
    count: np.ndarray  # int64
    size: np.ndarray  # int64, ids in the group
    start: np.ndarray  # int64, 0-based rank of the group's first id
    total: int  # number of ids

    @classmethod
    def from_histograms(cls, histogram: pa.Table) -> "RankOffsets":
        part = histogram["part"].to_numpy()
        count = histogram["count"].to_numpy()
        size = histogram["n"].to_numpy()
        order = np.lexsort((part, -count))  # frequency descending, then partition
        start = np.empty(len(order), np.int64)
        start[order] = np.concatenate(([0], np.cumsum(size[order])[:-1]))
        by_key = np.lexsort((count, part))
        return cls(part[by_key], count[by_key], size[by_key], start[by_key], int(size.sum()))

    def group_start(self, part: int, counts: np.ndarray) -> np.ndarray:
        lo = np.searchsorted(self.part, np.uint64(part), "left")
        hi = np.searchsorted(self.part, np.uint64(part), "right")
        found = lo + np.searchsorted(self.count[lo:hi], counts)
        if hi == lo or np.any(found >= hi) or np.any(self.count[np.minimum(found, hi - 1)] != counts):
            raise RuntimeError(f"partition {part} changed between the histogram and the numbering pass")
        return self.start[found]

    def count_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first index, number of ids, count) of each same-count range of 1-based indices."""
        counts, inverse = np.unique(self.count, return_inverse=True)
        sizes = np.bincount(inverse, weights=self.size).astype(np.int64)
        counts, sizes = counts[::-1], sizes[::-1]
        first = 1 + np.concatenate(([0], np.cumsum(sizes)[:-1]))
        return first, sizes, counts


def frequency_index(raw: pa.Array, counts: np.ndarray, part: int, offsets: RankOffsets) -> np.ndarray:
    """1-based frequency-ordered index of each distinct id of one partition."""
    by_frequency = pa.table({"count": counts, "raw": raw})  # within a count group: raw id ascending
    order = pc.sort_indices(by_frequency, sort_keys=[("count", "descending"), ("raw", "ascending")]).to_numpy()
    sorted_counts = counts[order]
    first = np.concatenate(([True], sorted_counts[1:] != sorted_counts[:-1]))
    group_first = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank_in_group = np.arange(len(order)) - group_first
    index = np.empty(len(order), np.int64)
    index[order] = 1 + offsets.group_start(part, sorted_counts) + rank_in_group
    return index
