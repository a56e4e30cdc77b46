"""`eain prepare`: raw Amazon reviews to the prepared dataset of DESIGN.md, on Ray tasks or threads.

The stages (`stages.py`: plain functions on Arrow tables) run as tasks (`tasks.py`: Ray tasks, or
a thread pool in this process for an input that fits this machine: no Ray start, no copies), and
partitioned data moves between them as references. A hash shuffle is a map task returning one table per
partition (`num_returns`) and a reduce task taking one from each: no actor pool starts, and
nothing is kept but each shuffle's own input. (Ray Data's `repartition(keys=...)` took 3.4-4.3 s
per call on this 2-CPU machine even for 1,000 rows, as it starts worker pools of its own; a task
shuffle of 400k rows took 0.07 s.)

  input parts (`reading.py`)            -> reviews and metadata by item partition
  item_stage: dedupe, counts, categories -> summaries ----> item and category vocabularies (driver)
  [k-core: drop_rare by user, by item, until nothing changes]
  number_items: indices, vocab/item/     -> reviews by user partition, each item's category
  user_reduce: users' order, min count   -> summaries ----> user ranks (driver)
  user_stage: impressions and histories  -> train/ valid/ test/ files, vocab/user/
  meta.json (counts summed over every task), rejects/

The driver holds only summaries, each bounded: a histogram of counts per partition (a row per
distinct count), the category vocabulary, reject samples (data.reject_samples per file and
reason), counts, and object references (input parts x partitions).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from eain_dist.config import Config, to_dict
from eain_dist.data import stages, tasks as executors, vocab
from eain_dist.data.context import GAP_BUCKETS
from eain_dist.data.errors import InputError
from eain_dist.data.fs import expand_sources, filesystem_for
from eain_dist.data.progress import PROGRESS_EVERY_S, Progress, TaskMemory, gather, peaks, print_now
from eain_dist.data.reading import ReadResult, plan_inputs, read_inputs
from eain_dist.data.readers import reject_message
from eain_dist.data.writer import Output

# 4: partitions numbered by index; hashed ids group rows by the raw id (3: a user's order is
# (timestamp, input position); 2: ordered by (timestamp, item index); 1: training rows unshuffled).
SCHEMA_VERSION = 4
SPLIT_COLUMNS = ("label", "user", "item", "category", "hour", "weekday", "gap", "hist_item",
                 "hist_category", "hist_len", "request_id", "position", "timestamp")
FEATURES = {"user": "user", "item": "item", "hist_item": "item", "category": "category",
            "hist_category": "category", "hour": "hour", "weekday": "weekday", "gap": "gap"}
MAX_K_CORE_ROUNDS = 50
# A task's memory request per row it holds: its peak RSS over its rows at 20M reviews (item
# partitions of 1M rows, user partitions of about 0.9M) (benchmarks/results/prepare-20m.md, meta.json task_peak_rss_mib): item stage 1,585 MiB,
# item numbering 1,913, user reduce 2,064, user stage 3,202 (worker and mapped inputs included).
# The user stage's request adds one output file's histories (rows_per_file x 2 lists x
# max_history x 8 B, x3).
SHUFFLE_BYTES_PER_ROW = 2_200  # item stage, item numbering, user reduce
USER_STAGE_BYTES_PER_ROW = 2_400


@dataclass
class PrepareResult:
    output: str
    meta: dict
    seconds: float
    reviews_per_s: float = field(init=False)

    def __post_init__(self):
        self.reviews_per_s = self.meta["counts"]["read"]["records"] / max(self.seconds, 1e-9)


def prepare(config: Config, log=print_now, progress_every_s: float = PROGRESS_EVERY_S) -> PrepareResult:
    """Run the whole pipeline on the executor `data.executor` chooses (Ray is started if it is
    chosen and not running). `log` gets a line per stage, and one every `progress_every_s` seconds
    while a stage runs."""
    started = time.time()
    data = config.data
    files = expand_sources(data.source, data.s3)
    meta_files = expand_sources(data.meta, data.s3) if data.meta else []
    plan = plan_inputs(files, meta_files, config)
    tasks = executors.choose(config, plan.estimated_reviews)
    try:
        meta = _run(tasks, plan, files, meta_files, config, Progress(tasks, log, progress_every_s))
    finally:
        tasks.close()
    seconds = time.time() - started
    log(f"prepare: wrote {sum(meta['splits'].values()):,} impressions to {data.output} in {seconds:.1f}s "
        f"({'in process' if tasks.in_process else 'on Ray'})")
    return PrepareResult(output=data.output, meta=meta, seconds=seconds)


def _run(tasks, plan, files: list[str], meta_files: list[str], config: Config, progress: Progress) -> dict:
    data = config.data
    output = Output(data.output, config)
    output.clear()
    output.make_folders()
    read = read_inputs(plan, config, progress, tasks, lambda rows: _partitions(rows, config, tasks.cpus()))
    _check_rejects(read, data, output)
    counts = stages.Counts(read.counts)
    rejects = read.log.to_json()
    items, summaries = _item_stage(tasks, read, config, counts, progress)
    task_peaks = read.task_peaks
    del read  # the item stage's tasks hold the input parts until they are done with them
    if data.k_core:
        items, summaries = _k_core(tasks, items, summaries, config, counts, progress)
    numbering = _item_numbering(summaries, config, output)
    progress.done(f"{numbering.num_items - 1:,} items, {numbering.num_categories - 1:,} categories"
                  if data.vocab == "exact" else "hashed items and categories")
    by_user, item_category = _number_items(tasks, items, numbering, sum(s["rows"] for s in summaries), config, output,
                                           progress, task_peaks)
    del items
    users, user_numbering = _user_reduce(tasks, by_user, sum(s["rows"] for s in summaries), config, counts, progress,
                                         task_peaks)
    del by_user
    _user_stage(tasks, users, user_numbering, numbering, item_category, config, output, counts, progress, task_peaks)
    meta = _meta(config, files, meta_files, counts, user_numbering, numbering, rejects)
    meta["task_peak_rss_mib"] = task_peaks
    meta["executor"] = "threads" if tasks.in_process else "ray"
    output.write_json("meta.json", meta)
    return meta


def _partitions(rows: int, config: Config, cpus: int) -> int:
    """Two per CPU at least (every CPU busy), more for big inputs: rows_per_partition bounds a
    task's memory."""
    if config.data.num_partitions:
        return config.data.num_partitions
    return max(2 * cpus, math.ceil(rows / config.data.rows_per_partition))


def _memory(tasks, rows: int, bytes_per_row: int, extra: int = 0) -> int:
    """A task's memory request, at most 80% of the largest node's (so that it stays schedulable):
    a Ray node then runs only as many heavy tasks at once as its memory holds (threads in
    process ignore it)."""
    largest = tasks.largest_node_memory()
    wanted = rows * bytes_per_row + extra
    return int(min(wanted, 0.8 * largest)) if largest else wanted


def _check_rejects(read: ReadResult, data, output: Output) -> None:
    records, rejects = read.log.total_records(), read.log.total_rejects()
    output.write_rejects(read.log.to_json())
    if records == 0:
        raise InputError(f"no records read from {data.source}")
    if rejects > data.max_reject_fraction * records:
        by_reason = [(n, file, reason) for (file, reason), n in read.log.counts.items()]
        n, file, reason = max(by_reason)
        first = next(s for s in read.log.samples if (s["file"], s["reason"]) == (file, reason))
        raise InputError(
            f"{rejects:,} of {records:,} records malformed (more than data.max_reject_fraction="
            f"{data.max_reject_fraction}); most often {n:,} x {reason} in {file}, first at "
            f"{reject_message(first)}; samples in {output.root}/rejects/")


# ----------------------------------------------------------------------------- tasks


def _item_stage_task(min_count: int, reviews: int, part: int, *tables):
    memory = TaskMemory()
    table, counts = stages.item_stage(list(tables[:reviews]), list(tables[reviews:]), min_count)
    return table, {**stages.item_summary(table, part), "counts": counts, "peak_rss_mib": memory.peak_mib()}


def _split_task(key: str, partitions: int, table: pa.Table):
    return stages.split_by_key(table, stages.keys_of(table[key]), partitions)


def _drop_rare_task(key: str, min_count: int, partitions: int, part: int, *tables):
    """k-core: a user partition drops its rare users and is split by item; an item partition
    drops its rare items and returns (table, summary)."""
    counts = stages.Counts()
    table = stages.drop_rare(list(tables), key, min_count, counts)
    if key == "user":
        return [*stages.split_by_key(table, stages.keys_of(table["item"]), partitions), counts]
    return table, {**stages.item_summary(table, part), "counts": counts}


def _number_items_task(table: pa.Table, part: int, numbering: stages.ItemNumbering, user_partitions: int,
                       output: Output):
    memory = TaskMemory()
    by_user, vocab_rows, item_category = stages.number_items(table, part, numbering, user_partitions)
    if numbering.mode == "exact":
        output.write_table(f"vocab/item.parquet/part-{part:05d}.parquet", vocab_rows)
    return [*by_user, item_category, {"peak_rss_mib": memory.peak_mib()}]


def _item_category_task(num_items: int, *pieces):
    return stages.item_category_array(list(pieces), num_items)


def _user_reduce_task(part: int, min_count: int, *tables):
    memory = TaskMemory()
    table, histogram, counts = stages.user_reduce(list(tables), part, min_count)
    return table, {"histogram": histogram, "counts": counts, "rows": table.num_rows, "peak_rss_mib": memory.peak_mib()}


def _user_stage_task(table: pa.Table, part: int, config: Config, numbering: stages.UserNumbering, num_items: int,
                     count_ranges, item_category: np.ndarray, output: Output) -> dict:
    memory = TaskMemory()
    items = stages.ItemFacts(num_items, count_ranges, item_category)
    impressions, vocab_rows = stages.user_impressions(table, part, config, numbering, items)
    if numbering.mode == "exact":
        output.write_table(f"vocab/user.parquet/part-{part:05d}.parquet", vocab_rows)
    files: dict[str, int] = {}
    for split, rows in stages.impression_files(impressions, config.data.max_history, config.data.rows_per_file,
                                               seed=[config.sampling.seed, part]):
        number = files[split] = files.get(split, -1) + 1
        output.write_table(f"{split}/part-{part:05d}-{number:04d}.parquet", rows)
    return {"counts": impressions.counts, "peak_rss_mib": memory.peak_mib()}


# ----------------------------------------------------------------------------- the plan


def _item_stage(tasks, read: ReadResult, config: Config, counts: stages.Counts, progress: Progress):
    reviews, memory = len(read.reviews), _memory(tasks, read.rows_per_partition, SHUFFLE_BYTES_PER_ROW)
    outputs = [tasks.submit(_item_stage_task, config.data.min_item_count, reviews, p,
                            *[part.tables[p] for part in read.reviews], *[part.tables[p] for part in read.meta],
                            num_returns=2, memory=memory)
               for p in range(read.partitions)]
    summaries = gather([summary for _, summary in outputs], progress, "item partitions",
                       rows=lambda s: s["counts"]["dedupe"]["rows_in"])
    for summary in summaries:
        counts.merge(summary["counts"])
    peaks(summaries, "item_stage", read.task_peaks)
    progress.done(f"read {read.log.total_records():,} records, deduplicated by item "
                  f"({read.partitions} partitions)", rows=read.log.total_records())
    return [table for table, _ in outputs], summaries


def _k_core(tasks, items: list, summaries: list[dict], config: Config, counts: stages.Counts, progress: Progress):
    """Alternate the user and item min-count filters until both hold at once (the k-core)."""
    data, partitions = config.data, len(items)
    rows = sum(s["rows"] for s in summaries)
    for round_ in range(1, MAX_K_CORE_ROUNDS + 1):
        by_user = [tasks.submit(_split_task, "user", partitions, t, num_returns=partitions) for t in items]
        users = [tasks.submit(_drop_rare_task, "user", data.min_user_count, partitions, p,
                              *[parts[p] for parts in by_user], num_returns=partitions + 1) for p in range(partitions)]
        for user_counts in tasks.get([outputs[-1] for outputs in users]):
            counts.merge(user_counts)
        outputs = [tasks.submit(_drop_rare_task, "item", data.min_item_count, partitions, p,
                                *[parts[p] for parts in users], num_returns=2) for p in range(partitions)]
        summaries = gather([summary for _, summary in outputs], progress, f"k-core round {round_}")
        items = [table for table, _ in outputs]
        for summary in summaries:
            counts.merge(summary["counts"])
        rows, before = sum(s["rows"] for s in summaries), rows
        if rows == before:
            counts.add("k_core", rounds=round_)
            progress.done(f"k-core: every user has >= {data.min_user_count}, every item >= "
                          f"{data.min_item_count} reviews ({round_} rounds)")
            return items, summaries
    raise InputError(f"k-core filtering did not converge in {MAX_K_CORE_ROUNDS} rounds; raise the limits or "
                     "set data.k_core=false")


def _item_numbering(summaries: list[dict], config: Config, output: Output) -> stages.ItemNumbering:
    """Items by frequency from the partitions' histograms; categories by their items' interactions."""
    data = config.data
    offsets = None
    if data.vocab == "exact":
        offsets = vocab.RankOffsets.from_histograms(pa.concat_tables([s["histogram"] for s in summaries]))
    categories = _category_vocabulary(pa.concat_tables([s["categories"] for s in summaries]), data.vocab,
                                      data.category_buckets)
    output.write_table("vocab/category.parquet", categories)
    num_items = offsets.total + 1 if offsets else data.item_buckets
    num_categories = categories.num_rows + 1 if data.vocab == "exact" else data.category_buckets
    return stages.ItemNumbering(data.vocab, num_items, num_categories, offsets, categories)


def _category_vocabulary(counts: pa.Table, mode: str, buckets: int) -> pa.Table:
    """Categories by frequency (interactions of their items); few enough for the driver."""
    summed = counts.group_by("category").aggregate([("count_sum", "sum")])
    by_frequency = pa.table({"raw": summed["category"], "count": summed["count_sum_sum"]})
    by_frequency = by_frequency.sort_by([("count", "descending"), ("raw", "ascending")])
    index = (np.arange(1, by_frequency.num_rows + 1) if mode == "exact"
             else vocab.hashed_index(by_frequency["raw"], buckets))
    return pa.table({"raw": by_frequency["raw"], "index": pa.array(index, pa.int64()), "count": by_frequency["count"]})


def _number_items(tasks, items: list, numbering: stages.ItemNumbering, rows: int, config: Config, output: Output,
                  progress: Progress, task_peaks: dict):
    user_partitions = _partitions(rows, config, tasks.cpus())
    memory = _memory(tasks, math.ceil(rows / len(items)), SHUFFLE_BYTES_PER_ROW)
    outputs = [tasks.submit(_number_items_task, table, p, numbering, user_partitions, output,
                            num_returns=user_partitions + 2, memory=memory) for p, table in enumerate(items)]
    item_category = tasks.submit(_item_category_task, numbering.num_items, *[parts[-2] for parts in outputs])
    peaks(gather([parts[-1] for parts in outputs] + [item_category], progress, "item numbering")[:-1],
          "number_items", task_peaks)
    progress.done(f"items numbered, partitioned by user ({user_partitions} partitions)", rows=rows)
    return [[parts[p] for parts in outputs] for p in range(user_partitions)], item_category


def _user_reduce(tasks, by_user: list[list], sum_rows: int, config: Config, counts: stages.Counts,
                 progress: Progress, task_peaks: dict):
    memory = _memory(tasks, math.ceil(sum_rows / len(by_user)), SHUFFLE_BYTES_PER_ROW)
    outputs = [tasks.submit(_user_reduce_task, p, config.data.min_user_count, *parts, num_returns=2, memory=memory)
               for p, parts in enumerate(by_user)]
    summaries = gather([summary for _, summary in outputs], progress, "user partitions", rows=lambda s: s["rows"])
    for summary in summaries:
        counts.merge(summary["counts"])
    peaks(summaries, "user_reduce", task_peaks)
    offsets = vocab.RankOffsets.from_histograms(pa.concat_tables([s["histogram"] for s in summaries]))
    num_users = offsets.total + 1 if config.data.vocab == "exact" else config.data.user_buckets
    progress.done(f"{offsets.total:,} users in their order", rows=sum_rows)
    users = [(table, summary["rows"]) for (table, _), summary in zip(outputs, summaries)]
    return users, stages.UserNumbering(config.data.vocab, num_users, offsets)


def _user_stage(tasks, users: list, numbering: stages.UserNumbering, items: stages.ItemNumbering, item_category,
                config: Config, output: Output, counts: stages.Counts, progress: Progress, task_peaks: dict) -> None:
    data = config.data
    count_ranges = items.offsets.count_ranges() if items.offsets else None
    history_bytes = 3 * data.rows_per_file * 2 * data.max_history * 8
    results = [tasks.submit(_user_stage_task, table, p, config, numbering, items.num_items, count_ranges,
                            item_category, output, memory=_memory(tasks, rows, USER_STAGE_BYTES_PER_ROW, history_bytes))
               for p, (table, rows) in enumerate(users)]
    results = gather(results, progress, "user partitions written", rows=_impressions)
    for result in results:
        counts.merge(result["counts"])
    peaks(results, "user_stage", task_peaks)
    progress.done("histories, splits, context, negatives, Skive-Above; wrote train / valid / test",
                  rows=sum(map(_impressions, results)))


def _impressions(result: dict) -> int:
    return sum(result["counts"]["impressions"].values())


# ----------------------------------------------------------------------------- meta.json


def _meta(config: Config, files, meta_files, counts: dict, users: stages.UserNumbering, items: stages.ItemNumbering,
          rejects: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tables": {"user": int(users.num_users), "item": int(items.num_items),
                   "category": int(items.num_categories), "hour": 24, "weekday": 7, "gap": GAP_BUCKETS},
        "features": FEATURES,
        "max_history": config.data.max_history,
        "vocab": config.data.vocab,
        "splits": {name: counts.get("impressions", {}).get(name, 0) for name in ("train", "valid", "test")},
        "sources": {"reviews": files, "meta": meta_files, "fingerprint": _fingerprint(files + meta_files, config)},
        "counts": dict(counts),
        "rejects": {"total": counts["read"]["rejects"], "by_file": rejects["rejects"],
                    "records_by_file": rejects["records"], "notes": rejects["notes"]},
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
