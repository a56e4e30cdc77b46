"""`eain prepare`: raw Amazon reviews to the prepared dataset of DESIGN.md, on Ray Data.

The plan (every heavy step is a Ray Data operator; the driver only sees small summaries):

  files --read (one task per file, streaming)--> (user, item, timestamp)
        --[join item metadata]-- hash-partitioned by item
        --item stage: dedupe (user, item) keeping the earliest, item counts, min-count filter
        --item vocabulary (frequency ranks from per-partition histograms), category vocabulary
        --hash-partitioned by user (repartition with keys)
        --user stage: min-count filter, user vocabulary, time order, histories, split,
          context, negatives, requests, Skive-Above
        --> train/ valid/ test/ Parquet, vocab/, rejects/, meta.json

Grouping never goes through groupby().map_groups(): a hash repartition puts every user (or
item) of a partition into one block, and each block is processed with vectorised numpy.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from eain_dist.config import Config, to_dict
from eain_dist.data import formats, sampling, sequences, vocab
from eain_dist.data.context import GAP_BUCKETS
from eain_dist.data.errors import InputError
from eain_dist.data.fs import expand_sources, filesystem_for, pyarrow_filesystem

SCHEMA_VERSION = 1
SPLIT_COLUMNS = ("label", "user", "item", "category", "hour", "weekday", "gap", "hist_item",
                 "hist_category", "hist_len", "request_id", "position", "timestamp")
FEATURES = {"user": "user", "item": "item", "hist_item": "item", "category": "category",
            "hist_category": "category", "hour": "hour", "weekday": "weekday", "gap": "gap"}
ESTIMATED_BYTES_PER_REVIEW = {".gz": 120, ".csv": 40, ".tsv": 30}  # partition sizing only
REQUEST_SHIFT = 24  # request_id = user index << 24 | first row of the request within the user


@dataclass
class PrepareResult:
    output: str
    meta: dict
    seconds: float
    reviews_per_s: float = field(init=False)

    def __post_init__(self):
        self.reviews_per_s = self.meta["counts"]["read"]["records"] / max(self.seconds, 1e-9)


def prepare(config: Config, log=print) -> PrepareResult:
    """Run the whole pipeline; Ray must be initialised (eain_dist.runtime.init_ray)."""

    started = time.time()
    data = config.data
    files = expand_sources(data.source, data.s3)
    meta_files = expand_sources(data.meta, data.s3) if data.meta else []
    partitions = data.num_partitions or _partition_count(files, data, ray.cluster_resources())
    log(f"prepare: {len(files)} review file(s), {len(meta_files)} meta file(s), {partitions} partitions")
    counters = StepCounters.remote()
    output = _Output(data.output, config)
    output.clear()

    interactions = _read(files, data.format, "interactions", config, counters)
    by_item = _partition_by_item(interactions, meta_files, config, counters, partitions)
    items = by_item.map_batches(_item_stage, batch_size=None, batch_format="pyarrow",
                                fn_kwargs={"min_count": data.min_item_count, "counters": counters}).materialize()
    _check_rejects(ray.get(counters.snapshot.remote()), data, output)
    log(f"prepare: read {ray.get(counters.snapshot.remote())['read']['records']:,} records")

    item_vocab = _item_vocabulary(items, config, output)
    log(f"prepare: {item_vocab.num_items - 1:,} items, {item_vocab.num_categories - 1:,} categories")
    indexed = items.map_batches(_index_items, batch_size=None, batch_format="pyarrow",
                                fn_kwargs={"item_vocab": item_vocab, "mode": data.vocab})
    by_user = indexed.repartition(partitions, keys=["user"]).materialize()

    user_offsets, num_users = _user_vocabulary(by_user, config, output)
    impressions = by_user.map_batches(
        _user_stage, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"config": config, "user_offsets": user_offsets, "num_users": num_users,
                   "item_vocab": item_vocab, "counters": counters}).materialize()
    split_rows = _write_splits(impressions, output)
    counts = ray.get(counters.snapshot.remote())
    meta = _meta(config, files, meta_files, counts, split_rows, num_users, item_vocab)
    output.write_json("meta.json", meta)
    output.write_rejects(counts["rejects"])
    seconds = time.time() - started
    log(f"prepare: wrote {sum(split_rows.values()):,} impressions to {data.output} in {seconds:.1f}s")
    return PrepareResult(output=data.output, meta=meta, seconds=seconds)


# ----------------------------------------------------------------------------- counters


@ray.remote(num_cpus=0)
class StepCounters:
    """Counts of every step (rows in, rows out, why) and the reject log, from all tasks."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.rejects = formats.RejectLog()

    def add(self, step: str, values: dict[str, int]) -> None:
        bucket = self.counts.setdefault(step, {})
        for key, value in values.items():
            bucket[key] = bucket.get(key, 0) + int(value)

    def add_rejects(self, log: formats.RejectLog) -> None:
        self.rejects.merge(log)

    def snapshot(self) -> dict:
        read = {"records": self.rejects.total_records(), "rejects": self.rejects.total_rejects()}
        return {**self.counts, "read": read, "rejects": self.rejects.to_json()}


def _add(counters, step: str, **values) -> None:
    ray.get(counters.add.remote(step, values))


# ----------------------------------------------------------------------------- reading


def _read(files: list[str], fmt: str, kind: str, config: Config, counters):
    import ray.data

    paths = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    return paths.map_batches(_read_files, batch_size=1, batch_format="pyarrow",
                             fn_kwargs={"fmt": fmt, "kind": kind, "config": config, "counters": counters})


def _read_files(batch: pa.Table, *, fmt: str, kind: str, config: Config, counters):
    """Stream each file's records in canonical schema; malformed ones go to the reject log."""
    for path in batch["path"].to_pylist():
        fs, local_path = filesystem_for(path, config.data.s3)
        file_format = formats.detect_format(local_path, fs) if fmt == "auto" else fmt
        log = formats.RejectLog(max_samples=config.data.reject_samples)
        reader = formats.read_interactions if kind == "interactions" else formats.read_item_meta
        yield from reader(local_path, file_format, fs, log)
        if kind == "interactions":
            ray.get(counters.add_rejects.remote(log))
        else:
            ray.get(counters.add.remote("meta", {"records": log.total_records(), "rejects": log.total_rejects()}))


def _partition_by_item(interactions, meta_files, config: Config, counters, partitions: int):
    """Hash-partition by item; with metadata, the join itself does the partitioning."""
    if not meta_files:
        return interactions.repartition(partitions, keys=["item"])
    meta = _read(meta_files, _meta_format(config.data.format), "meta", config, counters)
    meta = meta.select_columns(["item", "category"]).repartition(partitions, keys=["item"]).map_batches(
        _first_meta_per_item, batch_size=None, batch_format="pyarrow", fn_kwargs={"counters": counters})
    return interactions.join(meta, join_type="left_outer", num_partitions=partitions, on=("item",))


def _meta_format(fmt: str) -> str:
    return fmt if fmt != "ratings_csv" else "auto"


def _first_meta_per_item(table: pa.Table, *, counters) -> pa.Table:
    """Metadata files repeat some items; a repeat must not duplicate the item's reviews."""
    item = table["item"].to_numpy(zero_copy_only=False).astype(str)
    _, first = np.unique(item, return_index=True)
    _add(counters, "meta", duplicate_items=len(item) - len(first))
    return table.take(np.sort(first))


def _partition_count(files: list[str], data, resources: dict) -> int:
    estimated = 0
    for path in files:
        fs, local = filesystem_for(path, data.s3)
        size = fs.size(local) or 0
        per_review = next((b for ext, b in ESTIMATED_BYTES_PER_REVIEW.items() if path.endswith(ext)), 250)
        estimated += size // per_review
    cpus = int(resources.get("CPU", 1))
    return max(cpus, int(np.ceil(estimated / data.rows_per_partition)))


def _check_rejects(counts: dict, data, output: "_Output") -> None:
    records, rejects = counts["read"]["records"], counts["read"]["rejects"]
    if records == 0:
        raise InputError(f"no records read from {data.source}")
    if rejects > data.max_reject_fraction * records:
        output.write_rejects(counts["rejects"])
        by_reason = [(n, file, reason) for file, reasons in counts["rejects"]["rejects"].items()
                     for reason, n in reasons.items()]
        n, file, reason = max(by_reason)
        first = next(s for s in counts["rejects"]["samples"] if (s["file"], s["reason"]) == (file, reason))
        raise InputError(
            f"{rejects:,} of {records:,} records malformed (more than data.max_reject_fraction="
            f"{data.max_reject_fraction}); most often {n:,} x {reason} in {file}, first at "
            f"{formats.reject_message(first)}; samples in {output.root}/rejects/")


# ----------------------------------------------------------------------------- item stage


def _item_stage(table: pa.Table, *, min_count: int, counters) -> pa.Table:
    """One item partition: dedupe (user, item) keeping the earliest review, count, filter."""
    if "category" not in table.column_names:
        table = table.append_column("category", pa.nulls(table.num_rows, pa.string()))
    rows_in = table.num_rows
    table = table.sort_by([("item", "ascending"), ("user", "ascending"), ("timestamp", "ascending")])
    item, user = table["item"], table["user"]
    first = np.ones(table.num_rows, dtype=bool)
    if table.num_rows:
        same_pair = pc.and_(pc.equal(item[1:], item[:-1]), pc.equal(user[1:], user[:-1]))
        first[1:] = ~same_pair.to_numpy(zero_copy_only=False)
    table = table.filter(first)
    item_values, item_inverse, item_counts = _distinct(table["item"])
    keep = item_counts[item_inverse] >= min_count
    _add(counters, "dedupe", rows_in=rows_in, duplicates=rows_in - table.num_rows)
    _add(counters, "min_item_count", items_dropped=int((item_counts < min_count).sum()),
         rows_dropped=int((~keep).sum()))
    table = table.filter(keep).select(["user", "item", "timestamp", "category"])
    return table.append_column("item_count", pa.array(item_counts[item_inverse][keep], pa.int64()))


def _distinct(column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values, inverse, counts = np.unique(column.to_numpy(zero_copy_only=False).astype(str),
                                        return_inverse=True, return_counts=True)
    return values, inverse, counts


@dataclass(frozen=True)
class ItemVocabulary:
    """What the user stage needs to know of items: small arrays only (see vocab.py)."""

    num_items: int  # table rows, padding included
    num_categories: int
    category_values: pa.Array  # raw category strings, in index order from 1
    offsets: vocab.RankOffsets | None  # exact mode
    item_category: object  # ObjectRef of an int32 array: category of each item index (exact mode)


def _item_vocabulary(items, config: Config, output: "_Output") -> ItemVocabulary:

    data = config.data
    category_counts = _collect(items.map_batches(_category_counts, batch_size=None, batch_format="pyarrow"))
    categories = _category_vocabulary(category_counts, data.vocab)
    output.write_table("vocab/category.parquet", categories)
    if data.vocab == "hashed":
        return ItemVocabulary(data.item_buckets, data.category_buckets, categories["raw"], None, None)
    histogram = _collect(items.map_batches(_item_histogram, batch_size=None, batch_format="pyarrow"))
    offsets = vocab.RankOffsets.from_histograms(histogram)
    partial = ItemVocabulary(offsets.total + 1, categories.num_rows + 1, categories["raw"], offsets, None)
    rows = items.map_batches(_item_vocab_rows, batch_size=None, batch_format="pyarrow",
                             fn_kwargs={"item_vocab": partial}).materialize()
    output.write_dataset("vocab/item.parquet", rows.select_columns(["raw", "index", "count"]))
    item_category = ray.put(_assemble_item_categories(rows, partial.num_items))
    return ItemVocabulary(partial.num_items, partial.num_categories, categories["raw"], offsets, item_category)


def _collect(dataset) -> pa.Table:
    """Gather a dataset known to be small (histograms, per-category sums) on the driver."""

    tables = [t for t in ray.get(dataset.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({})


def _category_counts(table: pa.Table) -> pa.Table:
    grouped = table.select(["category", "item_count"]).filter(pc.is_valid(table["category"]))
    return grouped.group_by("category").aggregate([("item_count", "count")]).rename_columns(["category", "count"])


def _category_vocabulary(counts: pa.Table, mode: str) -> pa.Table:
    if counts.num_rows == 0:
        return pa.table({"raw": pa.array([], pa.string()), "index": pa.array([], pa.int64()),
                         "count": pa.array([], pa.int64())})
    summed = counts.group_by("category").aggregate([("count", "sum")])
    raw = summed["category"].to_numpy(zero_copy_only=False).astype(str)
    count = summed["count_sum"].to_numpy()
    order = np.lexsort((raw, -count))
    index = np.arange(1, len(order) + 1) if mode == "exact" else None
    table = pa.table({"raw": raw[order], "count": count[order].astype(np.int64)})
    if index is None:
        index = vocab.hashed_index(table["raw"], 1 << 30)
    return table.append_column("index", pa.array(index, pa.int64())).select(["raw", "index", "count"])


def _item_histogram(table: pa.Table) -> pa.Table:
    items, counts, _ = _distinct_items(table)
    return vocab.count_histogram(vocab.partition_id(vocab.stable_hash(items)), counts)


def _distinct_items(table: pa.Table) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """Distinct items of an item partition with their (already computed) counts and category."""
    distinct = table.select(["item", "item_count", "category"]).group_by("item").aggregate(
        [("item_count", "max"), ("category", "max")])
    return distinct["item"].combine_chunks(), distinct["item_count_max"].to_numpy(), distinct["category_max"]


def _item_vocab_rows(table: pa.Table, *, item_vocab: ItemVocabulary) -> pa.Table:
    items, counts, categories = _distinct_items(table)
    index = vocab.frequency_index(items, counts, vocab.partition_id(vocab.stable_hash(items)), item_vocab.offsets)
    category = _category_index(categories, item_vocab, "exact")
    return pa.table({"raw": items, "index": index, "count": counts, "category": category})


def _category_index(raw, item_vocab: ItemVocabulary, mode: str) -> np.ndarray:
    if mode == "hashed":
        hashed = vocab.hashed_index(pc.fill_null(raw, ""), item_vocab.num_categories)
        return np.where(pc.is_valid(raw).to_numpy(zero_copy_only=False), hashed, 0)
    found = pc.index_in(raw, value_set=item_vocab.category_values)
    return pc.fill_null(pc.add(found, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _assemble_item_categories(rows, num_items: int) -> np.ndarray:
    """Category of every item index: the one per-item array the samplers need (int32)."""

    item_category = np.zeros(num_items, dtype=np.int32)
    for ref in rows.select_columns(["index", "category"]).to_arrow_refs():
        block = ray.get(ref)
        item_category[block["index"].to_numpy()] = block["category"].to_numpy()
    return item_category


def _index_items(table: pa.Table, *, item_vocab: ItemVocabulary, mode: str) -> pa.Table:
    """Replace raw item ids by their indices (the partition holds complete items)."""
    if mode == "hashed":
        item = vocab.hashed_index(table["item"], item_vocab.num_items)
    else:
        items, counts, _ = _distinct_items(table)
        index = vocab.frequency_index(items, counts, vocab.partition_id(vocab.stable_hash(items)), item_vocab.offsets)
        item = index[pc.index_in(table["item"], value_set=items).to_numpy()]
    category = _category_index(table["category"], item_vocab, mode)
    return pa.table({"user": table["user"], "item": pa.array(item, pa.int64()),
                     "category": pa.array(category, pa.int64()), "timestamp": table["timestamp"]})


# ----------------------------------------------------------------------------- user stage


def _user_vocabulary(by_user, config: Config, output: "_Output"):
    data = config.data
    if data.vocab == "hashed":
        return None, data.user_buckets
    histogram = _collect(by_user.map_batches(_user_histogram, batch_size=None, batch_format="pyarrow",
                                             fn_kwargs={"min_count": data.min_user_count}))
    offsets = vocab.RankOffsets.from_histograms(histogram)
    rows = by_user.map_batches(_user_vocab_rows, batch_size=None, batch_format="pyarrow",
                               fn_kwargs={"min_count": data.min_user_count, "offsets": offsets})
    output.write_dataset("vocab/user.parquet", rows)
    return offsets, offsets.total + 1


def _users_of(table: pa.Table, min_count: int):
    """Distinct users of a user partition, their counts, and which pass the min-count filter."""
    users, inverse, counts = _distinct(table["user"])
    return users, inverse, counts, counts >= min_count


def _user_histogram(table: pa.Table, *, min_count: int) -> pa.Table:
    users, _, counts, kept = _users_of(table, min_count)
    part = vocab.partition_id(vocab.stable_hash(pa.array(users)))
    return vocab.count_histogram(part, counts[kept])


def _user_vocab_rows(table: pa.Table, *, min_count: int, offsets) -> pa.Table:
    users, _, counts, kept = _users_of(table, min_count)
    part = vocab.partition_id(vocab.stable_hash(pa.array(users)))
    raw = pa.array(users[kept])
    return pa.table({"raw": raw, "index": vocab.frequency_index(raw, counts[kept], part, offsets),
                     "count": counts[kept].astype(np.int64)})


def _user_stage(table: pa.Table, *, config: Config, user_offsets, num_users: int,
                item_vocab: ItemVocabulary, counters) -> pa.Table:
    """One user partition -> impressions of all three splits (column `split`)."""
    data = config.data
    users, inverse, counts, kept = _users_of(table, data.min_user_count)
    keep_rows = kept[inverse]
    _add(counters, "min_user_count", users_dropped=int((~kept).sum()), rows_dropped=int((~keep_rows).sum()),
         users_kept=int(kept.sum()))
    user_index = _user_indices(users, counts, kept, user_offsets, num_users, data.vocab)
    table = table.filter(keep_rows)
    seq = sequences.sort_by_user_time(user_index[inverse[keep_rows]], table["item"].to_numpy(),
                                      table["category"].to_numpy(), table["timestamp"].to_numpy())
    rng = np.random.default_rng([config.sampling.seed, vocab.partition_id(vocab.stable_hash(pa.array(users)))])
    positives = _positives(seq, data.max_history, config.sampling.session_gap_s, counters)
    negatives = _negatives(positives, seq, config, item_vocab, rng, counters)
    return _impressions(positives, negatives, config, rng, counters)


def _user_indices(users, counts, kept, offsets, num_users: int, mode: str) -> np.ndarray:
    index = np.zeros(len(users), np.int64)
    if mode == "hashed":
        index[kept] = vocab.hashed_index(pa.array(users[kept]), num_users)
    else:
        part = vocab.partition_id(vocab.stable_hash(pa.array(users)))
        index[kept] = vocab.frequency_index(pa.array(users[kept]), counts[kept], part, offsets)
    return index


def _positives(seq: sequences.UserSequences, max_history: int, session_gap_s: int, counters) -> dict:
    """Observed reviews with their history, context, split and request."""
    hist_end = sequences.history_end(seq)
    hist_start = np.maximum(seq.user_start, hist_end - max_history)
    hist_len = (hist_end - hist_start).astype(np.int32)
    split = sequences.split_of(seq, hist_len)
    session = sampling.session_starts(seq.user_start, seq.timestamp, session_gap_s)
    own_request = split != sequences.SPLIT_TRAIN  # valid / test positives stand alone
    request_row = np.where(own_request, np.arange(len(split)), session) - seq.user_start
    keep = split >= 0
    _add(counters, "split", train_without_history=int((~keep).sum()),
         **{f"{name}_positives": int((split == k).sum()) for k, name in enumerate(sequences.SPLIT_NAMES)})
    rows = np.flatnonzero(keep)
    return {
        "rows": rows,
        "split": split[rows],
        "user": seq.user[rows], "item": seq.item[rows], "category": seq.category[rows],
        "timestamp": seq.timestamp[rows],
        "hist_item": sequences.gather_history(seq.item, hist_start, hist_end, max_history)[rows],
        "hist_category": sequences.gather_history(seq.category, hist_start, hist_end, max_history)[rows],
        "hist_len": hist_len[rows],
        "request_id": (seq.user[rows] << REQUEST_SHIFT) | request_row[rows],
        **{k: v[rows] for k, v in sequences.context_features(seq, hist_end).items()},
    }


def _negatives(positives: dict, seq: sequences.UserSequences, config: Config, item_vocab: ItemVocabulary,
               rng: np.random.Generator, counters) -> dict:
    """`sampling.negatives` copies of each positive's context with an item the user never had."""
    k = config.sampling.negatives
    source = np.repeat(np.arange(len(positives["rows"])), k)
    ordinal = np.cumsum(np.concatenate(([0], np.diff(seq.user) != 0)))
    key_space = int(max(item_vocab.num_items, seq.item.max(initial=0) + 1))
    user_item_keys = np.unique(ordinal * key_space + seq.item)
    sampler = _sampler(config, item_vocab, seq)
    items, ok = sampling.draw_negatives(sampler, rng, ordinal[positives["rows"]][source], user_item_keys, key_space)
    _add(counters, "negatives", drawn=int(ok.sum()), unavailable=int((~ok).sum()))
    source, items = source[ok], items[ok]
    negatives = {name: values[source] for name, values in positives.items()}
    negatives["item"] = items
    negatives["category"] = _categories_of(items, item_vocab, seq)
    return negatives


def _sampler(config: Config, item_vocab: ItemVocabulary, seq: sequences.UserSequences):
    strategy = config.sampling.strategy
    if config.data.vocab == "hashed":
        return sampling.LocalItemSampler(seq.item, by_popularity=strategy == "popularity")
    if strategy == "uniform":
        return sampling.UniformSampler(item_vocab.num_items)
    first, size, count = item_vocab.offsets.count_ranges()
    return sampling.FrequencyRankSampler.from_count_ranges(first, size, count, config.sampling.popularity_power)


def _categories_of(items: np.ndarray, item_vocab: ItemVocabulary, seq: sequences.UserSequences) -> np.ndarray:

    if item_vocab.item_category is not None:
        return ray.get(item_vocab.item_category)[items].astype(np.int64)
    # Hashed mode draws only items of this partition, whose categories are known here.
    order = np.argsort(seq.item, kind="stable")
    found = np.searchsorted(seq.item[order], items)
    return seq.category[order][found]


def _impressions(positives: dict, negatives: dict, config: Config, rng, counters) -> pa.Table:
    both = {name: np.concatenate([positives[name], negatives[name]]) for name in positives if name != "rows"}
    label = np.concatenate([np.ones(len(positives["rows"]), np.float32), np.zeros(len(negatives["item"]), np.float32)])
    position = sampling.random_positions(both["request_id"], rng)
    keep = np.ones(len(label), dtype=bool)
    if config.sampling.skive_above:
        train = both["split"] == sequences.SPLIT_TRAIN
        keep = ~train | sampling.skive_above_keep(both["request_id"], position, label)
    _add(counters, "skive_above", negatives_dropped=int((~keep).sum()))
    columns = {name: values[keep] for name, values in both.items()}
    return _impression_table(columns, label[keep], position[keep])


def _impression_table(columns: dict, label: np.ndarray, position: np.ndarray) -> pa.Table:
    max_history = columns["hist_item"].shape[1] if columns["hist_item"].ndim == 2 else 0
    return pa.table({
        "label": pa.array(label, pa.float32()),
        "user": pa.array(columns["user"], pa.int64()),
        "item": pa.array(columns["item"], pa.int64()),
        "category": pa.array(columns["category"], pa.int64()),
        "hour": pa.array(columns["hour"], pa.int64()),
        "weekday": pa.array(columns["weekday"], pa.int64()),
        "gap": pa.array(columns["gap"], pa.int64()),
        "hist_item": _list_column(columns["hist_item"], max_history),
        "hist_category": _list_column(columns["hist_category"], max_history),
        "hist_len": pa.array(columns["hist_len"], pa.int32()),
        "request_id": pa.array(columns["request_id"], pa.int64()),
        "position": pa.array(position, pa.int32()),
        "timestamp": pa.array(columns["timestamp"], pa.int64()),
        "split": pa.array(columns["split"], pa.int8()),
    })


def _list_column(matrix: np.ndarray, width: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.int64).reshape(-1), pa.int64())
    offsets = pa.array(np.arange(0, len(flat) + 1, max(width, 1), dtype=np.int32)[: len(matrix) + 1])
    return pa.ListArray.from_arrays(offsets, flat)


# ----------------------------------------------------------------------------- output


def _write_splits(impressions, output: "_Output") -> dict[str, int]:
    rows = {}
    for k, name in enumerate(sequences.SPLIT_NAMES):
        split = impressions.filter(expr=f"split == {k}").drop_columns(["split"])
        output.write_dataset(name, split)
        rows[name] = split.count()
    return rows


def _meta(config: Config, files, meta_files, counts: dict, split_rows: dict, num_users: int,
          item_vocab: ItemVocabulary) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tables": {"user": int(num_users), "item": int(item_vocab.num_items),
                   "category": int(item_vocab.num_categories), "hour": 24, "weekday": 7, "gap": GAP_BUCKETS},
        "features": FEATURES,
        "max_history": config.data.max_history,
        "vocab": config.data.vocab,
        "splits": split_rows,
        "sources": {"reviews": files, "meta": meta_files, "fingerprint": _fingerprint(files + meta_files, config)},
        "counts": {k: v for k, v in counts.items() if k != "rejects"},
        "rejects": {"total": counts["read"]["rejects"], "by_file": counts["rejects"]["rejects"],
                    "records_by_file": counts["rejects"]["records"], "notes": counts["rejects"]["notes"]},
        "config": to_dict(config),
    }


def _fingerprint(files: list[str], config: Config) -> str:
    """Names, sizes and modification times (or ETags) of the inputs: changes when they change."""
    digest = hashlib.sha256()
    for path in files:
        fs, local = filesystem_for(path, config.data.s3)
        info = fs.info(local)
        digest.update(json.dumps([path, info.get("size"), str(info.get("mtime") or info.get("ETag") or info.get("LastModified"))]).encode())
    return digest.hexdigest()


class _Output:
    """The prepared dataset's folder, local or s3://."""

    PARTS = ("train", "valid", "test", "vocab", "rejects", "meta.json")

    def __init__(self, root: str, config: Config):
        self.root = root.rstrip("/")
        self.fs, self.path = filesystem_for(self.root, config.data.s3)
        self.arrow_fs, self.arrow_path = pyarrow_filesystem(self.root, config.data.s3)

    def clear(self) -> None:
        """Remove a previous prepared dataset here; refuse to touch any other folder."""
        if not self.fs.exists(self.path):
            return
        entries = {e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.path, detail=False)}
        if entries and "meta.json" not in entries and not entries <= set(self.PARTS):
            raise InputError(f"data.output {self.root} exists and is not a prepared dataset; choose an empty folder")
        for name in entries & set(self.PARTS):
            self.fs.rm(f"{self.path}/{name}", recursive=True)

    def write_dataset(self, name: str, dataset) -> None:
        dataset.write_parquet(f"{self.arrow_path}/{name}", filesystem=self.arrow_fs)

    def write_table(self, name: str, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        self.fs.makedirs(f"{self.path}/{name.rsplit('/', 1)[0]}", exist_ok=True)
        with self.fs.open(f"{self.path}/{name}", "wb") as handle:
            pq.write_table(table, handle)

    def write_json(self, name: str, value: dict) -> None:
        self.fs.makedirs(self.path, exist_ok=True)
        with self.fs.open(f"{self.path}/{name}", "w") as handle:
            json.dump(value, handle, indent=2, default=str)

    def write_rejects(self, rejects: dict) -> None:
        if not rejects.get("samples"):
            return
        self.fs.makedirs(f"{self.path}/rejects", exist_ok=True)
        with self.fs.open(f"{self.path}/rejects/samples.jsonl", "w") as handle:
            for sample in rejects["samples"]:
                handle.write(json.dumps(sample) + "\n")
