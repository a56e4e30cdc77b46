"""Record specs: how one format's records become canonical rows, fast path and slow path.

Canonical interaction rows carry a `position`: a number that grows with the record's place in
its file. Fast path (a chunk whose parsed rows are its lines): the chunk's byte offset plus the
row's number in the chunk; slow path: the byte offset of the record's line plus its number on
the line. Every line is at least one byte long, so both stay below the next line's offset and
the two kinds mix freely in one file. Pretty-printed JSON (never split) counts its objects.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eain_dist.data.readers.lines import Chunk, Lines
from eain_dist.data.readers.rejects import Reject, RejectLog
from eain_dist.data.readers.values import MAX_SECONDS, MIN_SECONDS, blank

INTERACTION_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("timestamp", pa.int64()),
                                ("position", pa.int64())])
META_SCHEMA = pa.schema([
    pa.field("item", pa.string(), nullable=False),
    ("category", pa.string()),
    ("store", pa.string()),
    ("price", pa.float64()),
])


class Spec:
    """Turns the chunks of one file (or one part of it) into canonical tables.

    `fast` parses a whole chunk with pyarrow: it returns (table of the good rows, [(row,
    reason)] of the bad ones) and raises on anything it cannot take, which sends the chunk to
    the slow path. `row` builds one canonical row from one raw record, raising `Reject`.
    """

    schema: pa.Schema

    def read(self, path: str, lines: Lines, log: RejectLog) -> Iterator[pa.Table]:
        yield from self.read_lines(path, iter(lines), lines, log)

    def read_lines(self, path: str, chunks: Iterable[Chunk], lines: Lines,
                   log: RejectLog) -> Iterator[pa.Table]:
        for chunk in chunks:
            yield self.parse_chunk(path, chunk, log)
        if lines.cut:
            lines.report_cut(log, lines.cut_line, lines.cut_text)

    def parse_chunk(self, path: str, chunk: Chunk, log: RejectLog) -> pa.Table:
        try:
            table, bad_rows = self.fast(chunk)
        except pa.ArrowException:  # anything pyarrow cannot take is the slow path's to judge
            return self.slow(path, chunk, log)
        rows = table.num_rows + len(bad_rows)
        # pyarrow skips blank lines, splits a line of several JSON records, and joins lines
        # inside a CSV quote or a JSON object: then its rows are not the chunk's lines, and
        # only the slow path can say which line holds what. (Left alone: a JSON record spread
        # over two lines AND a line of two records in one chunk cancel out here, and the
        # spread record is read whole rather than rejected.)
        if rows != chunk.newlines + (0 if chunk.complete else 1):
            return self.slow(path, chunk, log)
        if bad_rows:
            lines = chunk.lines()
            # Guard the row = line numbering against changes that cancel out in the count.
            if any(self.line_reason(lines[row]) != reason for row, reason in bad_rows):
                return self.slow(path, chunk, log)
            for row, reason in bad_rows:
                log.reject(path, chunk.first_line + row, reason, lines[row])
        log.seen(path, rows)
        return table

    def slow(self, path: str, chunk: Chunk, log: RejectLog) -> pa.Table:
        records = [(chunk.first_line + number, offset + k, record)
                   for number, (text, offset) in enumerate(zip(chunk.lines(), chunk.line_offsets())) if text.strip()
                   for k, record in enumerate(self.records_in(text))]
        return self.table_from(path, records, log)

    def records_in(self, line: bytes) -> list:
        """The raw records of one non-blank line, as `row` takes them."""
        return [line]

    def line_reason(self, line: bytes) -> str | None:
        """Why a line is rejected (None: it is not)."""
        records = self.records_in(line)
        if len(records) != 1:
            return None
        try:
            self.row(records[0])
        except Reject as bad:
            return bad.reason
        return None

    def table_from(self, path: str, records: list[tuple[int, int, Any]], log: RejectLog) -> pa.Table:
        """Canonical table from (line, position, raw record) triples, rejecting the bad ones."""
        with_position = "position" in self.schema.names
        rows = []
        for line, position, raw in records:
            try:
                rows.append((*self.row(raw), position) if with_position else self.row(raw))
            except Reject as bad:
                log.reject(path, line, bad.reason, _text_of(raw))
        log.seen(path, len(records))
        columns = list(zip(*rows)) or [()] * len(self.schema)
        return pa.table([pa.array(values, type=f.type) for values, f in zip(columns, self.schema)],
                        schema=self.schema)

    def fast(self, chunk: Chunk) -> tuple[pa.Table, list[tuple[int, str]]]:
        raise NotImplementedError

    def row(self, raw: Any) -> tuple:
        raise NotImplementedError


def _text_of(raw: Any) -> str | bytes:
    return raw if isinstance(raw, (str, bytes)) else json.dumps(raw, default=str)


def split_good_bad(table: pa.Table, problems: list[tuple[str, Any]]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Rows without problems, and (row, reason) of the others; the first listed problem wins."""
    any_problem = problems[0][1]
    for _, mask in problems[1:]:
        any_problem = pc.or_(any_problem, mask)
    if not pc.any(any_problem).as_py():
        return table, []
    flags = [np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool) for _, mask in problems]
    first = np.select(flags, np.arange(len(problems)), default=-1)
    bad_rows = [(int(row), problems[first[row]][0]) for row in np.flatnonzero(first >= 0)]
    return table.filter(pc.invert(any_problem)), bad_rows


def checked_interactions(user, item, raw_time, names: tuple[str, str, str], units_per_second: int,
                         offset: int) -> tuple[pa.Table, list[tuple[int, str]]]:
    """A fast-path chunk's rows (row r is the chunk's line r: position offset + r), checked."""
    seconds = raw_time if units_per_second == 1 else pc.divide(raw_time, units_per_second)
    out_of_range = pc.or_(pc.less(raw_time, 0),
                          pc.or_(pc.less(seconds, MIN_SECONDS), pc.greater_equal(seconds, MAX_SECONDS)))
    problems = [(f"missing_field:{names[0]}", blank(user)),
                (f"missing_field:{names[1]}", blank(item)),
                (f"missing_field:{names[2]}", pc.is_null(raw_time)),
                ("bad_timestamp", pc.fill_null(out_of_range, False))]
    position = pa.array(np.arange(offset, offset + len(user), dtype=np.int64))
    return split_good_bad(pa.table([user, item, seconds, position], schema=INTERACTION_SCHEMA), problems)


def checked_meta(item, category, store, price, item_name: str) -> tuple[pa.Table, list[tuple[int, str]]]:
    table = pa.table([pc.fill_null(item, ""), category, store, price], schema=META_SCHEMA)
    return split_good_bad(table, [(f"missing_field:{item_name}", blank(item))])
