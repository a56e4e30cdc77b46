"""The read stage of `eain prepare`: the input cut into parts, each read by a task that returns
its records by item partition (one table each) and a summary (its reject log, its rows).

- A plain file larger than data.part_bytes: byte ranges, one task each (readers.parts).
- A gzip file larger than data.part_bytes: one streaming task inflates it (inflating can only go
  from the start) and yields line-aligned chunks; the driver hands each chunk to a parse task as
  it arrives, so the parsing of one 67M-review file is spread over the cluster's CPUs. At most
  one inflater per CPU runs, each at most two chunks ahead of its parsers.
- Anything else (small files, pretty-printed JSON): one task per file.

Reject samples name their file's line: a byte range numbers its lines from its own start, and
the driver moves them down by the lines of the ranges before it (RejectLog.shift_lines).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from eain_dist.config import Config
from eain_dist.data import stages
from eain_dist.data.fs import filesystem_for
from eain_dist.data.progress import Progress, TaskMemory, gather, peaks
from eain_dist.data.readers import (Chunk, RejectLog, checked_format, read_chunk, read_interactions,
                                    read_item_meta)
from eain_dist.data.readers.lines import Lines
from eain_dist.data.readers.parts import FilePart, layout, split

PLAN_THREADS = 8  # files looked at at once while planning (mostly waiting for storage)
CHUNKS_AHEAD = 2  # chunks an inflater may yield before its parsers take them (x2 objects each)


@dataclass
class PartResult:
    order: tuple[int, int]  # (file index, part number): the input order
    tables: list  # object references, one table per item partition
    summary: object  # object reference: {"log": RejectLog, "rows": int}


@dataclass
class ReadResult:
    partitions: int  # item partitions
    reviews: list[PartResult]  # in input order
    meta: list[PartResult]
    log: RejectLog  # the reviews' (meta.json "rejects")
    counts: stages.Counts  # read: records, rejects; meta: records, rejects
    rows_per_partition: int  # reviews read / partitions
    task_peaks: dict  # stage -> the largest peak RSS of its tasks (MiB)


@dataclass(frozen=True)
class _Stream:
    """A large gzip file, inflated by one task and parsed in chunks."""

    path: str
    file_index: int
    fmt: str
    kind: str


@dataclass
class InputPlan:
    parts: list  # (FilePart, kind): read by one task each
    streams: list  # _Stream: large gzip files, inflated once and parsed in chunks
    estimated_reviews: int  # from the files' sizes (readers.parts.layout)
    has_meta: bool


def plan_inputs(files: list[str], meta_files: list[str], config: Config) -> InputPlan:
    """Every file's parts, from its size and first bytes: looked at by several threads at once
    (a request each on S3; a megabyte inflated each for gzip, about 25 ms a file one by one)."""
    jobs = [(path, index, kind) for kind, paths in (("reviews", files), ("meta", meta_files))
            for index, path in enumerate(paths)]
    with cf.ThreadPoolExecutor(PLAN_THREADS) as pool:
        planned = list(pool.map(lambda job: _plan(*job, config), jobs))
    parts, streams, estimated = [], [], 0
    for (_, _, kind), (file_parts, stream, records) in zip(jobs, planned):
        parts += file_parts
        streams += stream
        estimated += records if kind == "reviews" else 0
    return InputPlan(parts, streams, estimated, bool(meta_files))


def read_inputs(plan: InputPlan, config: Config, progress: Progress, tasks,
                partitions_for: Callable[[int], int]) -> ReadResult:
    task_peaks: dict = {}
    partitions = partitions_for(plan.estimated_reviews)
    results = [_submit_part(tasks, part, kind, partitions, config) for part, kind in plan.parts]
    drive = _drive_streams_in_process if tasks.in_process else _drive_streams
    results += drive(tasks, plan.streams, partitions, config, progress)
    summaries = gather([r.summary for r in results], progress, "read parts", rows=lambda s: s["rows"])
    by_kind = {"reviews": [], "meta": []}
    for result, summary in sorted(zip(results, summaries), key=lambda pair: pair[0].order):
        by_kind[summary["kind"]].append((result, summary))
    logs = {kind: _merged_log([s for _, s in pairs], config) for kind, pairs in by_kind.items()}
    counts = stages.Counts()
    counts.add("read", records=logs["reviews"].total_records(), rejects=logs["reviews"].total_rejects(),
               tasks=len(by_kind["reviews"]), most_tasks_on_one_file_at_once=_most_at_once(by_kind["reviews"]))
    if plan.has_meta:
        counts.add("meta", records=logs["meta"].total_records(), rejects=logs["meta"].total_rejects())
    rows = logs["reviews"].total_records()
    peaks(summaries, "read", task_peaks)
    with_tables = {kind: [result for result, _ in pairs if result.tables] for kind, pairs in by_kind.items()}
    return ReadResult(partitions, with_tables["reviews"], with_tables["meta"], logs["reviews"], counts,
                      max(1, rows // partitions), task_peaks)


def _plan(path: str, index: int, kind: str, config: Config) -> tuple[list, list, int]:
    """(parts with their kind, streams, estimated records) of one input file."""
    data = config.data
    fs, local = filesystem_for(path, data.s3)
    fmt = checked_format(local, data.format, fs)
    file = layout(local, fs, fmt)
    if file.gzip and not file.pretty_json and file.estimated_bytes > data.part_bytes:
        return [], [_Stream(path, index, fmt, kind)], file.estimated_records
    return [(part, kind) for part in split(path, index, fmt, file, data.part_bytes)], [], file.estimated_records


def _most_at_once(parts: list[tuple[PartResult, dict]]) -> int:
    """The largest number of read tasks that were reading one file at the same moment."""
    most = 0
    for file_index in {result.order[0] for result, _ in parts}:
        spans = [s["span"] for r, s in parts if r.order[0] == file_index and "span" in s]
        most = max([most, *(sum(start <= t < end for start, end in spans) for t, _ in spans)])
    return most


def _merged_log(summaries: list[dict], config: Config) -> RejectLog:
    """The parts' logs in input order, each byte range's lines moved down by those before it."""
    merged = RejectLog(max_samples=config.data.reject_samples)
    lines_before: dict[str, int] = {}
    for summary in summaries:
        log = summary["log"]
        for path, lines in log.lines.items():
            log.shift_lines(path, lines_before.get(path, 0))
            lines_before[path] = lines_before.get(path, 0) + lines
        merged.merge(log)
    return merged


# ----------------------------------------------------------------------------- tasks


def _by_item(table: pa.Table, kind: str, file_index: int, partitions: int) -> list[pa.Table]:
    if kind == "reviews":
        return stages.records_by_item(table, file_index, partitions)
    return stages.meta_by_item(table, partitions)


def _returned(pieces: list[list[pa.Table]], log: RejectLog, kind: str, rows: int, started: float,
              memory: TaskMemory) -> list:
    tables = [pa.concat_tables(parts) for parts in pieces]
    return [*tables, {"log": log, "rows": rows, "kind": kind, "span": (started, time.time()),
                      "peak_rss_mib": memory.peak_mib()}]


def _read_part_task(part: FilePart, kind: str, partitions: int, config: Config):
    started, memory = time.time(), TaskMemory()
    fs, local = filesystem_for(part.path, config.data.s3)
    log = RejectLog(max_samples=config.data.reject_samples)
    reader = read_interactions if kind == "reviews" else read_item_meta
    pieces: list[list[pa.Table]] = [[] for _ in range(partitions)]
    rows = 0
    for table in reader(local, part.fmt, fs, log, start=part.start, end=part.end):
        rows += table.num_rows
        for p, piece in enumerate(_by_item(table, kind, part.file_index, partitions)):
            pieces[p].append(piece)
    return _returned(pieces, log, kind, rows, started, memory)


@dataclass(frozen=True)
class _ChunkInfo:
    first_line: int
    complete: bool
    newlines: int
    offset: int


@dataclass(frozen=True)
class _StreamEnd:
    local_path: str
    cut: tuple[str, str] | None
    cut_line: int
    cut_text: bytes


def _inflate_task(path: str, config: Config):
    """Yields _ChunkInfo, chunk bytes (uint8 array), ..., then _StreamEnd. As a Ray task it takes
    no CPU slot: it mostly waits for its parsers, and must never hold a slot a parser needs."""
    fs, local = filesystem_for(path, config.data.s3)
    lines = Lines(local, fs, config.data.part_bytes)
    for chunk in lines:
        yield _ChunkInfo(chunk.first_line, chunk.complete, chunk.newlines, chunk.offset)
        yield np.frombuffer(chunk.data, np.uint8)
    yield _StreamEnd(local, lines.cut, lines.cut_line, lines.cut_text)


def _parse_chunk_task(info: _ChunkInfo, data: np.ndarray, stream: _Stream, first: bool, partitions: int,
                      config: Config):
    started, memory = time.time(), TaskMemory()
    _, local = filesystem_for(stream.path, config.data.s3)
    log = RejectLog(max_samples=config.data.reject_samples)
    chunk = Chunk(info.first_line, memoryview(data), info.complete, info.newlines, info.offset)
    table = read_chunk(local, stream.fmt, chunk, log, meta=stream.kind == "meta", first=first)
    return _returned([[piece] for piece in _by_item(table, stream.kind, stream.file_index, partitions)],
                     log, stream.kind, table.num_rows, started, memory)


def _submit_part(tasks, part: FilePart, kind: str, partitions: int, config: Config) -> PartResult:
    refs = tasks.submit(_read_part_task, part, kind, partitions, config, num_returns=partitions + 1)
    return PartResult((part.file_index, part.number), refs[:-1], refs[-1])


def _submit_parse(tasks, info: _ChunkInfo, data: np.ndarray, stream: _Stream, number: int, partitions: int,
                  config: Config) -> PartResult:
    parse = tasks.submit(_parse_chunk_task, info, data, stream, number == 0, partitions, config,
                         num_returns=partitions + 1)
    return PartResult((stream.file_index, number), parse[:-1], parse[-1])


def _drive_streams_in_process(tasks, streams: list[_Stream], partitions: int, config: Config,
                              progress: Progress) -> list[PartResult]:
    """Inflate each stream here, a chunk at a time, and parse every chunk on the pool while it
    inflates the next (at most 2 x cpus chunks waiting)."""
    results: list[PartResult] = []
    for done, stream in enumerate(streams):
        number, generator = 0, _inflate_task(stream.path, config)
        for info in generator:
            if isinstance(info, _StreamEnd):
                results += [_cut_record(tasks, stream, info, number)] if info.cut else []
                break
            while len(parsing := [r.summary for r in results if not tasks.done(r.summary)]) >= 2 * tasks.cpus():
                tasks.wait(parsing, 1, progress.every_s / 3)
            results.append(_submit_parse(tasks, info, next(generator), stream, number, partitions, config))
            number += 1
        progress.running("inflating large gzip files", done + 1, len(streams))
    return results


def _drive_streams(tasks, streams: list[_Stream], partitions: int, config: Config,
                   progress: Progress) -> list[PartResult]:
    """Ray: start at most `cpus` inflaters at a time; give every chunk they yield to a parse
    task while fewer than 2 x cpus parse tasks are running."""
    ray, cpus = tasks.ray, tasks.cpus()
    waiting, active, results = list(streams), {}, []
    running: list = []
    inflate = ray.remote(num_cpus=0)(_inflate_task) if streams else None
    while waiting or active:
        while waiting and len(active) < cpus:
            stream = waiting.pop(0)
            generator = inflate.options(_generator_backpressure_num_objects=2 * CHUNKS_AHEAD).remote(
                stream.path, config)
            active[generator] = [stream, 0]
        if running:
            _, running = ray.wait(running, num_returns=len(running), timeout=0)
        if len(running) >= 2 * cpus:
            ray.wait(running, num_returns=1, timeout=progress.every_s / 3)
            continue
        ready, _ = ray.wait(list(active), num_returns=1, timeout=progress.every_s / 3)
        for generator in ready:
            stream, number = active[generator]
            info = ray.get(next(generator))
            if isinstance(info, _StreamEnd):
                del active[generator]
                if info.cut:
                    results.append(_cut_record(tasks, stream, info, number))
                continue
            results.append(_submit_parse(tasks, info, next(generator), stream, number, partitions, config))
            running.append(results[-1].summary)
            active[generator][1] += 1
        progress.running("inflating large gzip files", len(streams) - len(waiting) - len(active), len(streams))
    return results


def _cut_record(tasks, stream: _Stream, end: _StreamEnd, number: int) -> PartResult:
    """The record a cut or corrupt gzip stream ended in: one reject that says where."""
    log = RejectLog()
    reason, where = end.cut
    log.seen(end.local_path, 1)
    log.reject(end.local_path, end.cut_line, reason, end.cut_text, detail=where)
    summary = {"log": log, "rows": 0, "kind": stream.kind}
    return PartResult((stream.file_index, number), [], tasks.put(summary))
