"""Row-by-row checks of a prepared dataset against its raw 2023-format reviews, computed apart
from the pipeline (polars, from the raw files):

- every positive's history is exactly the items of the user's earlier reviews in the user's
  (timestamp, input position) order, the last max_history of them (data.history_ties:
  input_order), after keeping each (user, item)'s earliest review;
- leave-last-out in that order: the last review of every user with >= 3 items is its test
  positive, the second-last its validation positive, every other but the first a training one;
- no negative is an item of its user (the user of its request's positive).

Works for exact and hashed vocabularies: rows are matched to raw users by (user column, item
column, timestamp), which a user bucket shared by several users does not make ambiguous.

    python benchmarks/check_prepared.py --reviews DIR --prepared OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from eain_dist.data import vocab

SPLITS = ("train", "valid", "test")
REVIEW_SCHEMA = {"user_id": pl.String, "parent_asin": pl.String, "timestamp": pl.Int64}


def user_orders(review_files: list[str], min_reviews: int = 3) -> pl.DataFrame:
    """One row per kept review: user, item, timestamp, k (its place in the user's order), n."""
    raw = pl.scan_ndjson(review_files, schema=REVIEW_SCHEMA, row_index_name="position").select(
        user=pl.col("user_id"), item=pl.col("parent_asin"), timestamp=pl.col("timestamp") // 1000,
        position=pl.col("position"))
    earliest = raw.sort("timestamp", "position").unique(["user", "item"], keep="first", maintain_order=True)
    kept = earliest.filter(pl.len().over("user") >= min_reviews).sort("user", "timestamp", "position")
    return kept.with_columns(k=pl.int_range(pl.len()).over("user"), n=pl.len().over("user")).collect()


def indices(raw: pl.Series, prepared: Path, table: str, meta: dict) -> pl.Series:
    """Table indices of raw ids: the saved vocabulary, or the hashed buckets."""
    if meta["vocab"] == "hashed":
        return pl.Series(vocab.hashed_index(raw.to_arrow(), meta["tables"][table]))
    saved = pl.from_arrow(ds.dataset(prepared / "vocab" / f"{table}.parquet").to_table(columns=["raw", "index"]))
    return pl.DataFrame({"raw": raw}).join(saved, on="raw", how="left", maintain_order="left")["index"]


def check(review_files: list[str], prepared: Path) -> dict:
    meta = json.loads((prepared / "meta.json").read_text())
    L = meta["max_history"]
    orders = user_orders(review_files)
    orders = orders.with_columns(user_index=indices(orders["user"], prepared, "user", meta),
                                 item_index=indices(orders["item"], prepared, "item", meta))
    items_of_user = orders.group_by("user").agg(items=pl.col("item_index").sort_by("k"))
    expected = orders.join(items_of_user, on="user").with_columns(
        history=pl.col("items").list.slice(pl.max_horizontal(pl.col("k") - L, 0), pl.min_horizontal(pl.col("k"), L)),
        split=pl.when(pl.col("k") == pl.col("n") - 1).then(pl.lit("test"))
        .when(pl.col("k") == pl.col("n") - 2).then(pl.lit("valid"))
        .when(pl.col("k") >= 1).then(pl.lit("train")).otherwise(None)).drop("items")
    rows = pl.concat([pl.from_arrow(ds.dataset(prepared / name).to_table(
        columns=["label", "user", "item", "timestamp", "hist_item", "request_id"])).with_columns(split=pl.lit(name))
        for name in SPLITS])
    positives = rows.filter(pl.col("label") == 1).with_columns(
        hist=pl.col("hist_item").list.eval(pl.element().filter(pl.element() != 0)))
    matched = positives.join(expected, left_on=["user", "item", "timestamp"],
                             right_on=["user_index", "item_index", "timestamp"], how="left", suffix="_expected")
    found = matched.filter(pl.col("k").is_not_null())
    result = {
        "positives": positives.height,
        "positives_without_their_review": int(matched["k"].null_count()),
        "positives_matching_several_reviews": matched.height - positives.height,
        "histories_differing": int(found["hist"].ne_missing(found["history"]).sum()),
        "splits_differing": int(found["split"].ne_missing(found["split_expected"]).sum()),
        "expected_positives": {name: int((expected["split"] == name).sum()) for name in SPLITS},
        "prepared_positives": {name: int((positives["split"] == name).sum()) for name in SPLITS},
    }
    owner = found.select("request_id", raw_user=pl.col("user_expected")).unique()
    negatives = rows.filter(pl.col("label") == 0).join(owner, on="request_id", how="left")
    own = orders.select(raw_user=pl.col("user"), item=pl.col("item_index"))
    result["negatives"] = negatives.height
    result["negatives_without_a_user"] = int(negatives["raw_user"].null_count())
    result["negatives_of_their_users_items"] = negatives.join(own, on=["raw_user", "item"], how="inner").height
    result["ok"] = (result["positives_without_their_review"] == 0 and result["histories_differing"] == 0
                    and result["splits_differing"] == 0 and result["negatives_of_their_users_items"] == 0
                    and result["negatives_without_a_user"] == 0 and result["positives_matching_several_reviews"] == 0
                    and result["expected_positives"] == result["prepared_positives"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", required=True, help="folder of reviews/*.jsonl[.gz]")
    parser.add_argument("--prepared", type=Path, required=True)
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.reviews).glob("*.json*"))
    print(json.dumps(check(files, args.prepared), indent=2))


if __name__ == "__main__":
    main()
