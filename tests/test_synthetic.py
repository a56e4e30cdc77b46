"""The synthetic 2023-format generator: exact, deterministic, streaming, and structured the way
its docstring promises (read back through the real readers)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from eain_dist.data.errors import InputError
from eain_dist.data.readers import RejectLog, detect_format, read_interactions, read_item_meta
from eain_dist.data.synthetic import generate

FS = fsspec.filesystem("file")
REVIEW_FIELDS = {"rating", "title", "text", "images", "asin", "parent_asin", "user_id", "timestamp",
                 "helpful_vote", "verified_purchase"}
META_FIELDS = {"main_category", "title", "average_rating", "rating_number", "features", "description", "price",
               "images", "videos", "store", "categories", "details", "parent_asin", "bought_together"}


def read_back(summary: dict) -> tuple[pd.DataFrame, pd.DataFrame, RejectLog]:
    log = RejectLog()
    reviews = pa.concat_tables([t for f in summary["review_files"] for t in read_interactions(f, "auto", FS, log)])
    meta = pa.concat_tables([t for f in summary["meta_files"] for t in read_item_meta(f, "auto", FS, log)])
    return reviews.to_pandas(), meta.to_pandas(), log


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A mid-sized dataset, its reviews in time order per user with item categories."""
    summary = generate(str(tmp_path_factory.mktemp("synthetic")), users=3000, items=1500, reviews=60_000)
    reviews, meta, log = read_back(summary)
    assert log.total_rejects() == 0
    reviews = reviews.merge(meta[["item", "category"]], on="item", how="left", validate="many_to_one")
    return reviews.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True), meta


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    sizes = {"users": 300, "items": 200, "reviews": 4000, "files": 2}
    first = generate(str(tmp_path / "a"), seed=3, **sizes)
    again = generate(str(tmp_path / "b"), seed=3, **sizes)
    other = generate(str(tmp_path / "c"), seed=4, **sizes)
    for kind in ("review_files", "meta_files"):
        for a, b in zip(first[kind], again[kind]):
            assert Path(a).read_bytes() == Path(b).read_bytes()
    assert Path(first["review_files"][0]).read_bytes() != Path(other["review_files"][0]).read_bytes()


def test_exact_counts_fields_and_format(tmp_path):
    summary = generate(str(tmp_path), users=500, items=300, reviews=7_001, categories=10, files=3)
    assert [Path(f).name for f in summary["review_files"]] == [f"part-0000{i}.jsonl.gz" for i in range(3)]
    assert [Path(f).parent.name for f in summary["meta_files"]] == ["meta"] * 3
    for path in summary["review_files"] + summary["meta_files"]:
        assert detect_format(path, FS) == "amazon2023"
    reviews, meta, log = read_back(summary)
    assert len(reviews) == 7_001 == summary["reviews"] and log.total_rejects() == 0
    assert reviews["user"].nunique() == 500
    assert len(meta) == meta["item"].nunique() == 300 and meta["category"].nunique() == 10
    assert set(reviews["item"]) <= set(meta["item"])
    assert 0.05 < meta["price"].isna().mean() < 0.2 and meta["store"].notna().all()
    with gzip.open(summary["review_files"][0]) as file:
        record = json.loads(file.readline())
    assert set(record) == REVIEW_FIELDS and record["asin"] == record["parent_asin"]
    with gzip.open(summary["meta_files"][0]) as file:
        assert set(json.loads(file.readline())) == META_FIELDS


def test_timestamps_are_milliseconds_in_2015_to_2023(dataset):
    reviews, _ = dataset
    years = pd.to_datetime(reviews["timestamp"], unit="s").dt.year
    assert years.min() >= 2015 and years.max() <= 2023
    assert (reviews.groupby("user")["timestamp"].diff().dropna() >= 0).all()


def test_sequential_dependence_far_above_chance(dataset):
    """Successors learnt on half the users predict the other half's next items."""
    reviews, _ = dataset
    same_user = reviews["user"].values[1:] == reviews["user"].values[:-1]
    pairs = pd.DataFrame({"user": reviews["user"].values[1:], "previous": reviews["item"].values[:-1],
                          "next": reviews["item"].values[1:]})[same_user]
    learn = pairs["user"].map(hash) % 2 == 0
    counts = pairs[learn].groupby(["previous", "next"]).size().rename("n").reset_index()
    top3 = counts.sort_values(["previous", "n"], ascending=[True, False]).groupby("previous").head(3)
    successors = set(zip(top3["previous"], top3["next"]))
    held_out = pairs[~learn]
    hit = np.mean([pair in successors for pair in zip(held_out["previous"], held_out["next"])])
    popular3 = set(reviews["item"].value_counts().index[:3])
    chance = held_out["next"].isin(popular3).mean()
    assert hit > 0.3 and hit > 4 * chance


def test_zipf_like_popularity(dataset):
    reviews, meta = dataset
    counts = reviews["item"].value_counts().values
    assert counts[: len(meta) // 10].sum() > 0.5 * len(reviews)  # the top 10% of items
    ranks = np.arange(1, len(counts) + 1)
    head = slice(0, len(counts) // 2)
    slope = np.polyfit(np.log(ranks[head]), np.log(counts[head]), 1)[0]
    assert -1.6 < slope < -0.6


def test_weekly_and_daily_rhythms(dataset):
    reviews, _ = dataset
    when = pd.to_datetime(reviews["timestamp"], unit="s")
    weekday_share = np.bincount(when.dt.dayofweek, minlength=7) / len(when)
    assert weekday_share[5:].sum() > 2 / 7 + 0.05  # weekends busier
    hours = np.bincount(when.dt.hour, minlength=24)
    assert hours.max() > 3 * hours.min() and 18 <= hours.argmax() <= 22


def test_heavy_tailed_reviews_per_user(dataset):
    reviews, _ = dataset
    per_user = reviews.groupby("user").size()
    assert 0.2 < (per_user < 5).mean() < 0.7
    assert (per_user <= 2).mean() > 0.05
    assert per_user.max() > 10 * per_user.median()


def test_interest_drifts_over_time(dataset):
    """Consecutive reviews share a category far more often than a user's first and last."""
    reviews, _ = dataset
    long_users = reviews.groupby("user").filter(lambda g: len(g) >= 20)
    consecutive = long_users.groupby("user")["category"].apply(lambda c: (c.values[1:] == c.values[:-1]).mean())
    first_last = long_users.groupby("user")["category"].agg(lambda c: c.iloc[0] == c.iloc[-1])
    assert consecutive.mean() > first_last.mean() + 0.25


PEAK_MEMORY_SCRIPT = """
import json, resource, sys
from eain_dist.data.synthetic import generate
summary = generate(sys.argv[1], users=20_000, items=5_000, reviews=int(sys.argv[2]), files=3)
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"files": len(summary["review_files"]), "peak_kib": peak_kib}))
"""


def test_streaming_memory_does_not_grow_with_reviews(tmp_path):
    """4x the reviews (same users and items, both runs many chunks long) needs about the same
    peak memory: generation streams. Holding the reviews would cost some 400 bytes each, +480 MB.
    """
    runs = {}
    for reviews in (400_000, 1_600_000):
        command = [sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(tmp_path / str(reviews)), str(reviews)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        runs[reviews] = json.loads(done.stdout)
    assert runs[1_600_000]["files"] == 3
    assert runs[1_600_000]["peak_kib"] - runs[400_000]["peak_kib"] < 80 * 1024


def test_parts_of_an_earlier_run_are_replaced(tmp_path):
    generate(str(tmp_path), users=50, items=30, reviews=200, files=3)
    summary = generate(str(tmp_path), users=50, items=30, reviews=200, files=2)
    for folder in ("reviews", "meta"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    assert len(read_back(summary)[0]) == 200


@pytest.mark.parametrize("sizes, message", [
    ({"users": 10, "items": 5, "reviews": 9}, r"reviews \(9\) must be at least users \(10\)"),
    ({"users": 10, "items": 5, "reviews": 20, "categories": 6}, r"categories \(6\) must not exceed items \(5\)"),
    ({"users": 0, "items": 5, "reviews": 20}, r"users must be a positive integer, got 0"),
])
def test_impossible_sizes_are_input_errors(tmp_path, sizes, message):
    with pytest.raises(InputError, match=message):
        generate(str(tmp_path), **sizes)
