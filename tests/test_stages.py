"""The stage functions of `eain prepare` on Arrow tables, without Ray: keys that collide never
merge two ids, dedupe keeps the earliest review by (timestamp, input position), and a user
partition comes out in the users' order."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from eain_dist.config import load_config
from eain_dist.data import stages, vocab


def records(rows) -> pa.Table:
    """(user, item, timestamp, position) rows, as the read stage makes them."""
    users, items, times, positions = (list(column) for column in zip(*rows))
    return pa.table({"user": users, "item": items, "timestamp": pa.array(times, pa.int64()),
                     "position": pa.array(positions, pa.int64())})


@pytest.fixture
def one_key(monkeypatch):
    """Every id gets the same key (polars' 64-bit hash would need ~2^32 ids for one collision)."""
    monkeypatch.setattr(stages, "_key", lambda column: pl.lit(7, pl.UInt64))


def test_ids_sharing_a_key_are_told_apart_by_their_text(one_key):
    rows = [("u1", "a", 10, 1), ("u2", "b", 10, 2), ("u1", "b", 20, 3), ("u3", "a", 30, 4), ("u1", "a", 40, 5)]
    table, counts = stages.item_stage([records(rows)], [], min_count=1)
    got = sorted(zip(*(table[c].to_pylist() for c in ("item", "user", "timestamp"))))
    assert got == [("a", "u1", 10), ("a", "u3", 30), ("b", "u1", 20), ("b", "u2", 10)]
    assert stages.item_summary(table, 0)["histogram"].to_pylist() == [{"part": 0, "count": 2, "n": 2}]
    assert counts["dedupe"] == {"rows_in": 5, "duplicates": 1}


def test_split_by_key_keeps_each_partitions_rows_in_order():
    table = pa.table({"v": np.arange(20)})
    key = np.arange(20, dtype=np.uint64) * 7
    parts = stages.split_by_key(table, key, 3)
    for p, part in enumerate(parts):
        assert part["v"].to_pylist() == [v for v in range(20) if (v * 7) % 3 == p]


def test_item_stage_keeps_the_earliest_review_and_counts_distinct_users():
    rows = [("u1", "i1", 200, 5), ("u1", "i1", 100, 9), ("u1", "i1", 100, 2),  # earliest: (100, 2)
            ("u2", "i1", 300, 1), ("u3", "i2", 100, 3), ("u2", "i2", 50, 4), ("u4", "i3", 10, 6)]
    meta = pa.table({"item": ["i2", "i1", "i2"], "category": ["c2", "c1", "later"]})
    table, counts = stages.item_stage([records(rows[:4]), records(rows[4:])], [meta], min_count=2)
    got = sorted(zip(*(table[c].to_pylist() for c in ("user", "item", "timestamp", "position"))))
    assert got == [("u1", "i1", 100, 2), ("u2", "i1", 300, 1), ("u2", "i2", 50, 4), ("u3", "i2", 100, 3)]
    assert stages.item_summary(table, 0)["histogram"].to_pylist() == [{"part": 0, "count": 2, "n": 2}]
    category = dict(zip(table["item"].to_pylist(), pa.compute.cast(table["category"], pa.string()).to_pylist()))
    assert category == {"i1": "c1", "i2": "c2"}  # an item's first metadata record
    assert counts["dedupe"] == {"rows_in": 7, "duplicates": 2}
    assert counts["min_item_count"] == {"items_dropped": 1, "rows_dropped": 1}


def test_users_sharing_a_key_and_a_bucket_keep_separate_timelines(one_key):
    """Two users on one key and one hashed row: each keeps its own order and history."""
    config = load_config(overrides=["data.vocab=hashed", "data.user_buckets=2", "data.max_history=3",
                                    "sampling.negatives=0", "data.min_user_count=3"])
    rows = [("ann", 1, 10, 1), ("bob", 4, 10, 2), ("ann", 2, 20, 3), ("bob", 5, 15, 4), ("ann", 3, 20, 0),
            ("bob", 6, 30, 5)]
    numbered = records(rows).append_column("category", pa.array([0] * 6, pa.int32()))
    table, histogram, counts = stages.user_reduce([numbered], part=0, min_count=3)
    assert histogram.to_pylist() == [{"part": 0, "count": 3, "n": 2}]
    users = stages.UserNumbering("hashed", 2, vocab.RankOffsets.from_histograms(histogram))
    impressions, _ = stages.user_impressions(table, 0, config, users, stages.ItemFacts(10, None, np.zeros(10, np.int32)))
    files = dict(stages.impression_files(impressions, 3, 100, seed=[0]))
    test = files["test"].to_pylist()
    assert sorted((r["item"], [i for i in r["hist_item"] if i]) for r in test) == [(2, [1, 3]), (6, [4, 5])]
    assert {r["user"] for r in test} == {1}  # one table row, two timelines
    assert len({r["request_id"] >> stages.REQUEST_SHIFT for r in test}) == 2  # two users' requests
