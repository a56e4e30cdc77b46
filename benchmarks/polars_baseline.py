"""The steps of `eain prepare` in one process with polars: the baseline of benchmarks/prepare.py.

Same input (2023-format reviews + metadata, JSON lines .gz), same rules (DESIGN.md "prepared
dataset", eain_dist/data/pipeline.py) and same output layout and schema:

  read reviews (user_id, parent_asin, timestamp ms -> s, input position = row number over the
  files in order; missing ids / bad times dropped)
  -> dedupe (user, item) keeping the earliest review by (timestamp, input position); item
     counts (distinct users), min count
  -> item vocabulary by frequency; category = the item's most specific metadata category,
     else its main category; category vocabulary by the interactions of its items
  -> users with >= min_user_count interactions, user vocabulary by frequency
  -> rows sorted by (user, time, input position); history = the user's items earlier in that
     order (the last max_history, left-padded), or strictly earlier in time with
     history_ties="strict_time"; leave-last-out split; hour / weekday / log2 gap
  -> requests (session gap; valid / test positives alone); negatives uniform over the item
     vocabulary, never an item of the user; random positions in each request; Skive-Above
  -> train/ valid/ test/ Parquet (snappy, as Ray Data writes), vocab/*.parquet, meta.json

Differences from `eain prepare`, none of which changes the amount of work much:
- Vocabulary ties (equal counts) are broken by the raw id; `eain prepare` breaks them by
  partition first (it never sorts all ids in one place). Indices therefore differ, counts don't.
- The random draws (negatives, positions) use other streams, so negatives and the rows
  Skive-Above drops differ; their expected numbers are the same.
- No reject log: polars' reader fails on malformed JSON instead of counting it; records with
  a missing id or an out-of-range time are dropped and counted.
- Histories are built and written a chunk of rows at a time (`chunk_rows`), so the largest
  arrays (rows x max_history) never exist for the whole dataset at once, as in the pipeline;
  the window gather itself is numpy's (polars has no fixed-width window gather), as in
  eain_dist.data.sequences.
- Output rows are ordered by (request, position) instead of positives-then-negatives per
  partition; one Parquet file per split instead of one per block.

    POLARS_MAX_THREADS=2 python benchmarks/polars_baseline.py --reviews DIR/reviews --meta DIR/meta --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

MIN_SECONDS, MAX_SECONDS = 631_152_000, 4_102_444_800  # 1990..2100, as eain_dist.data.formats
GAP_BUCKETS = 32  # as eain_dist.data.context
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday
REQUEST_SHIFT = 24  # as eain_dist.data.pipeline
MAX_REDRAWS = 64
SPLITS = ("train", "valid", "test")
PARTS = (*SPLITS, "vocab", "meta.json")
SPLIT_SCHEMA = pa.schema([
    ("label", pa.float32()), ("user", pa.int64()), ("item", pa.int64()), ("category", pa.int64()),
    ("hour", pa.int64()), ("weekday", pa.int64()), ("gap", pa.int64()),
    ("hist_item", pa.list_(pa.field("element", pa.int64()))),
    ("hist_category", pa.list_(pa.field("element", pa.int64()))),
    ("hist_len", pa.int32()), ("request_id", pa.int64()), ("position", pa.int32()), ("timestamp", pa.int64()),
])
REVIEW_SCHEMA = {"user_id": pl.String, "parent_asin": pl.String, "timestamp": pl.Int64}
META_SCHEMA = {"parent_asin": pl.String, "categories": pl.List(pl.String), "main_category": pl.String}


@dataclass(frozen=True, kw_only=True)
class Settings:
    max_history: int = 50
    history_ties: str = "input_order"  # or strict_time, as data.history_ties
    negatives: int = 1
    min_user_count: int = 3
    min_item_count: int = 1
    session_gap_s: int = 3600
    skive_above: bool = True
    seed: int = 42
    chunk_rows: int = 250_000  # impressions per history chunk


class Clock:
    def __init__(self, log):
        self.log, self.last, self.stages = log, time.perf_counter(), {}

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 3)
        self.log(f"polars: {stage} ({now - self.last:.1f}s)")
        self.last = now


def prepare(reviews: list[str], meta: list[str], output: str | Path, settings: Settings = Settings(),
            log=print) -> dict:
    """Run every step; returns meta.json's content (counts, split rows, per-stage seconds)."""
    started = time.perf_counter()
    out = Path(output)
    _clear(out)
    (out / "vocab").mkdir(parents=True)
    clock, counts = Clock(log), {}

    interactions = read_interactions(reviews, counts)
    clock.done(f"read {counts['read']['records']:,} records")
    deduped = dedupe(interactions, settings, counts)
    clock.done("deduplicated, item counts")
    items, categories = item_vocabulary(deduped, meta, counts)
    clock.done(f"{items.height:,} items, {categories.height:,} categories")
    users = user_vocabulary(deduped, settings, counts)
    clock.done(f"{users.height:,} users")
    seq = sequences(deduped, items, users)
    rows = row_features(seq, settings)
    clock.done("time order, histories bounds, splits, context, requests")
    item_category = np.zeros(items.height + 1, np.int64)
    item_category[items["index"].to_numpy()] = items["category_index"].to_numpy()
    impressions = sample_impressions(rows, items.height + 1, item_category, settings, counts)
    clock.done("negatives, positions, Skive-Above")
    for name, table in (("item", items), ("user", users), ("category", categories)):
        table.select("raw", "index", "count").write_parquet(out / "vocab" / f"{name}.parquet")
    counts["impressions"] = write_splits(impressions, rows, out, settings)
    clock.done("histories gathered, wrote train / valid / test")
    seconds = time.perf_counter() - started
    meta_json = {
        "tables": {"user": users.height + 1, "item": items.height + 1, "category": categories.height + 1,
                   "hour": 24, "weekday": 7, "gap": GAP_BUCKETS},
        "max_history": settings.max_history, "splits": counts["impressions"], "counts": counts,
        "settings": asdict(settings), "stages_s": clock.stages, "seconds": round(seconds, 3),
        "reviews_per_s": round(counts["read"]["records"] / seconds),
    }
    (out / "meta.json").write_text(json.dumps(meta_json, indent=2) + "\n")
    log(f"polars: wrote {sum(counts['impressions'].values()):,} impressions to {out} in {seconds:.1f}s")
    return meta_json


def _clear(out: Path) -> None:
    """Remove a previous prepared dataset here; refuse to touch any other folder (as `eain prepare`)."""
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if entries and "meta.json" not in entries and not entries <= set(PARTS):
        raise SystemExit(f"{out} exists and is not a prepared dataset; choose an empty folder")
    for name in entries & set(PARTS):
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


# ----------------------------------------------------------------------------- reading


def read_interactions(files: list[str], counts: dict) -> pl.DataFrame:
    """(user, item, timestamp seconds, input position); rows with a missing id or a time outside
    1990..2100 dropped."""
    raw = pl.scan_ndjson(files, schema=REVIEW_SCHEMA, row_index_name="position").select(
        user=pl.col("user_id"), item=pl.col("parent_asin"), timestamp=pl.col("timestamp") // 1000,
        position=pl.col("position").cast(pl.Int64),
        bad=(pl.col("user_id").str.len_bytes().fill_null(0) == 0)
        | (pl.col("parent_asin").str.len_bytes().fill_null(0) == 0)
        | ~pl.col("timestamp").is_between(MIN_SECONDS * 1000, MAX_SECONDS * 1000, closed="left").fill_null(False),
    ).collect()
    rejects = int(raw["bad"].sum())
    counts["read"] = {"records": raw.height, "rejects": rejects}
    return (raw.filter(~pl.col("bad")) if rejects else raw).drop("bad")


def read_item_categories(files: list[str], counts: dict) -> pl.LazyFrame:
    """(item, category) of the first metadata record of each item: the most specific category."""
    meta = pl.scan_ndjson(files, schema=META_SCHEMA).select(
        item=pl.col("parent_asin"),
        category=pl.coalesce(_null_if_blank(pl.col("categories").list.last()), _null_if_blank(pl.col("main_category"))),
    ).filter(pl.col("item").str.len_bytes() > 0).collect()
    first = meta.unique(subset="item", keep="first", maintain_order=True)
    counts["meta"] = {"records": meta.height, "duplicate_items": meta.height - first.height}
    return first.lazy()


def _null_if_blank(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.str.len_bytes() > 0).then(expr)


# ----------------------------------------------------------------------------- vocabularies


def dedupe(interactions: pl.DataFrame, settings: Settings, counts: dict) -> pl.DataFrame:
    """Earliest review of each (user, item) by (timestamp, input position), with the item's count
    of distinct users."""
    deduped = interactions.lazy().group_by("user", "item").agg(
        pl.col("timestamp", "position").sort_by("timestamp", "position").first()).with_columns(
        item_count=pl.len().over("item")).collect()
    counts["dedupe"] = {"rows_in": interactions.height, "duplicates": interactions.height - deduped.height}
    rare = deduped.filter(pl.col("item_count") < settings.min_item_count)
    counts["min_item_count"] = {"items_dropped": rare["item"].n_unique(), "rows_dropped": rare.height}
    return deduped.filter(pl.col("item_count") >= settings.min_item_count) if rare.height else deduped


def _by_frequency(counted: pl.LazyFrame) -> pl.LazyFrame:
    """(raw, count) -> (raw, count, index): 1 = most frequent, ties by raw id."""
    return counted.sort(["count", "raw"], descending=[True, False]).with_row_index("index", offset=1).with_columns(
        pl.col("index").cast(pl.Int64))


def item_vocabulary(deduped: pl.DataFrame, meta: list[str], counts: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items (raw, index, count, category_index) and categories (raw, index, count)."""
    items = _by_frequency(deduped.lazy().group_by("item").agg(pl.col("item_count").first())
                          .rename({"item": "raw", "item_count": "count"}))
    if meta:
        items = items.join(read_item_categories(meta, counts).rename({"item": "raw"}), on="raw", how="left")
    else:
        items = items.with_columns(category=pl.lit(None, pl.String))
    items = items.collect()
    categories = _by_frequency(items.lazy().filter(pl.col("category").is_not_null()).group_by("category")
                               .agg(pl.col("count").sum()).rename({"category": "raw"})).collect()
    items = items.join(categories.select(category="raw", category_index="index"), on="category", how="left",
                       maintain_order="left").with_columns(pl.col("category_index").fill_null(0))
    return items, categories


def user_vocabulary(deduped: pl.DataFrame, settings: Settings, counts: dict) -> pl.DataFrame:
    user_counts = deduped.group_by("user").agg(count=pl.len())
    kept = user_counts.filter(pl.col("count") >= settings.min_user_count)
    counts["min_user_count"] = {"users_dropped": user_counts.height - kept.height,
                                "rows_dropped": int(user_counts["count"].sum() - kept["count"].sum()),
                                "users_kept": kept.height}
    return _by_frequency(kept.lazy().rename({"user": "raw"})).collect()


# ----------------------------------------------------------------------------- sequences


def sequences(deduped: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Kept users' interactions as indices, sorted by (user, timestamp, input position), with a row
    number."""
    return (deduped.lazy()
            .join(users.lazy().select(user="raw", user_index="index"), on="user", how="inner")
            .join(items.lazy().select(item="raw", item_index="index", category="category_index"), on="item")
            .select(user="user_index", item="item_index", category="category", timestamp="timestamp",
                    position="position")
            .sort("user", "timestamp", "position")
            .with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
            .collect())


def _first_row_where(starts: pl.Expr) -> pl.Expr:
    """For each row: the row number of the latest row at or before it where `starts` holds."""
    return pl.when(starts).then(pl.col("row")).forward_fill()


def row_features(seq: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """Per observed review: history bounds, split (-1 = dropped), context and request."""
    new_user = pl.col("user") != pl.col("user").shift(1).fill_null(-1)
    new_time = new_user | (pl.col("timestamp") != pl.col("timestamp").shift(1))
    last_of_user = pl.col("user") != pl.col("user").shift(-1).fill_null(-1)
    hist_end = _first_row_where(new_time) if settings.history_ties == "strict_time" else pl.col("row")
    user_end = pl.when(last_of_user).then(pl.col("row") + 1).backward_fill()
    rows = seq.lazy().with_columns(
        user_start=_first_row_where(new_user), hist_end=hist_end, user_end=user_end,
        session=_first_row_where(new_user | (pl.col("timestamp").diff() > settings.session_gap_s)),
    ).with_columns(
        hist_start=pl.max_horizontal("user_start", pl.col("hist_end") - settings.max_history),
        previous_time=pl.col("timestamp").gather(pl.max_horizontal(pl.col("hist_end") - 1, 0)),
    ).with_columns(
        split=pl.when(pl.col("row") == pl.col("user_end") - 1).then(2)
        .when(pl.col("row") == pl.col("user_end") - 2).then(1)
        .when(pl.col("hist_end") > pl.col("hist_start")).then(0).otherwise(-1).cast(pl.Int8),
        hour=(pl.col("timestamp") // 3600) % 24,
        weekday=(pl.col("timestamp") // 86400 + EPOCH_WEEKDAY) % 7,
        gap=pl.when(pl.col("hist_end") > pl.col("user_start")).then(
            (1 + (1.0 + (pl.col("timestamp") - pl.col("previous_time")).clip(0)).log(2).floor().cast(pl.Int64))
            .clip(upper_bound=GAP_BUCKETS - 1)).otherwise(0),
    ).with_columns(
        request_id=(pl.col("user") * (1 << REQUEST_SHIFT))
        + pl.when(pl.col("split") == 0).then(pl.col("session")).otherwise(pl.col("row")) - pl.col("user_start"),
    ).select("row", "user", "item", "category", "timestamp", "user_start", "hist_start", "hist_end", "split",
             "hour", "weekday", "gap", "request_id")
    return rows.collect()


# ----------------------------------------------------------------------------- impressions


def sample_impressions(rows: pl.DataFrame, num_items: int, item_category: np.ndarray, settings: Settings,
                       counts: dict) -> pl.DataFrame:
    """Positives and their negatives (source row, item, category, label, split, position) after
    Skive-Above, ordered by (request, position)."""
    rng = np.random.default_rng(settings.seed)
    positives = rows.filter(pl.col("split") >= 0).select("row", "user", "item", "category", "split", "request_id")
    split = positives["split"]
    counts["split"] = {"train_without_history": int((rows["split"] < 0).sum()),
                       **{f"{name}_positives": int((split == k).sum()) for k, name in enumerate(SPLITS)}}
    negatives = positives[np.repeat(np.arange(positives.height), settings.negatives)]
    item, ok = draw_negatives(rng, negatives["user"].to_numpy(), rows["user"].to_numpy() * num_items
                              + rows["item"].to_numpy(), num_items)
    counts["negatives"] = {"drawn": int(ok.sum()), "unavailable": int((~ok).sum())}
    negatives = negatives.with_columns(item=pl.Series(item), category=pl.Series(item_category[item])).filter(
        pl.Series(ok))
    impressions = pl.concat([positives.with_columns(label=pl.lit(1.0, pl.Float32)),
                             negatives.with_columns(label=pl.lit(0.0, pl.Float32))])
    # Random positions: sort each request's impressions by a random key; position = rank in it.
    request = pl.col("request_id")
    impressions = (impressions.with_columns(shuffle=pl.Series(rng.random(impressions.height)))
                   .sort("request_id", "shuffle").with_row_index("at").with_columns(
        position=(pl.col("at") - pl.when(request != request.shift(1).fill_null(-1)).then(pl.col("at")).forward_fill())
        .cast(pl.Int32)))
    if settings.skive_above:
        # Rows are in position order within a request: a negative survives when a positive of
        # its request comes after it (the request of the next positive at or after it).
        next_positive_request = pl.when(pl.col("label") > 0).then(request).backward_fill()
        kept = impressions.filter((pl.col("label") > 0) | (pl.col("split") != 0)
                                  | (next_positive_request == request).fill_null(False))
        counts["skive_above"] = {"negatives_dropped": impressions.height - kept.height}
        impressions = kept
    return impressions.select("row", "item", "category", "label", "split", "position")


def draw_negatives(rng, owner: np.ndarray, user_item_keys: np.ndarray, num_items: int):
    """Uniform items in 1..num_items-1, redrawn while the owner has interacted with them."""
    own = pl.Series(user_item_keys).implode()

    def is_own(owners, items):
        return pl.Series(owners * num_items + items).is_in(own).to_numpy()

    items = rng.integers(1, num_items, size=len(owner))
    pending = np.flatnonzero(is_own(owner, items))
    for _ in range(MAX_REDRAWS):
        if len(pending) == 0:
            break
        items[pending] = rng.integers(1, num_items, size=len(pending))
        pending = pending[is_own(owner[pending], items[pending])]
    ok = np.ones(len(owner), dtype=bool)
    ok[pending] = False
    return items, ok


# ----------------------------------------------------------------------------- histories and output


def write_splits(impressions: pl.DataFrame, rows: pl.DataFrame, out: Path, settings: Settings) -> dict[str, int]:
    """Per split, gather histories a chunk of impressions at a time and append them to one Parquet
    file (snappy with dictionary pages: pyarrow's defaults, which Ray Data's write_parquet uses)."""
    windows = {name: _windows(rows[name].to_numpy(), settings.max_history) for name in ("item", "category")}
    context = rows.select("user", "hour", "weekday", "gap", "hist_start", "hist_end", "request_id", "timestamp")
    written = {}
    for k, name in enumerate(SPLITS):
        (out / name).mkdir()
        of_split = impressions.filter(pl.col("split") == k)
        with pq.ParquetWriter(out / name / "part-00000.parquet", SPLIT_SCHEMA, compression="snappy") as writer:
            for lo in range(0, of_split.height, settings.chunk_rows):
                chunk = of_split.slice(lo, settings.chunk_rows)
                chunk = pl.concat([chunk, context[chunk["row"]]], how="horizontal")  # rows are numbered 0..N-1
                writer.write_table(_impression_table(chunk, windows, settings.max_history))
        written[name] = of_split.height
    return written


def _windows(values: np.ndarray, width: int) -> np.ndarray:
    """View of every `width`-wide window of values, after `width` zeros: row e = values[e-width:e]."""
    padded = np.concatenate([np.zeros(width, np.int64), values.astype(np.int64, copy=False)])
    return np.lib.stride_tricks.sliding_window_view(padded, width)


def _impression_table(chunk: pl.DataFrame, windows: dict[str, np.ndarray], max_history: int) -> pa.Table:
    """One chunk of impressions with hist_item / hist_category (left-padded with 0), as Arrow."""
    # polars has no fixed-width window gather; numpy does it as one fancy index of a strided view.
    start, end = chunk["hist_start"].to_numpy(), chunk["hist_end"].to_numpy()
    real = np.arange(max_history)[None, :] >= (max_history - (end - start))[:, None]  # N x L
    offsets = pa.array(np.arange(0, (len(end) + 1) * max_history, max_history, dtype=np.int32))
    hist = {}
    for name, window in windows.items():
        values = window[end]  # N x L copy: values[end - L:end]
        np.multiply(values, real, out=values)  # padding -> 0
        hist[name] = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))
    table = chunk.select(
        "label", "user", "item", "category", "hour", "weekday", "gap",
        hist_len=(pl.col("hist_end") - pl.col("hist_start")).cast(pl.Int32),
        request_id="request_id", position="position", timestamp="timestamp").to_arrow()
    table = table.add_column(7, "hist_item", hist["item"]).add_column(8, "hist_category", hist["category"])
    return table.cast(SPLIT_SCHEMA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", required=True, help="folder of reviews/*.jsonl.gz, or one file")
    parser.add_argument("--meta", default=None, help="folder of meta/*.jsonl.gz, or one file")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-history", type=int, default=50)
    parser.add_argument("--negatives", type=int, default=1)
    args = parser.parse_args()
    if os.environ.get("POLARS_MAX_THREADS"):  # the same thread budget for pyarrow's Parquet writer
        pa.set_cpu_count(int(os.environ["POLARS_MAX_THREADS"]))
    result = prepare(_files(args.reviews), _files(args.meta) if args.meta else [], args.out,
                     Settings(max_history=args.max_history, negatives=args.negatives))
    print(json.dumps({k: result[k] for k in ("seconds", "reviews_per_s", "splits", "stages_s")}))


def _files(path: str) -> list[str]:
    folder = Path(path)
    return sorted(str(p) for p in folder.glob("*.json*")) if folder.is_dir() else [path]


if __name__ == "__main__":
    main()
