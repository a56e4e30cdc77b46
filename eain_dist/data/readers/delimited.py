"""CSV / TSV records: `ratings_csv` (user,item,rating,timestamp) and `interactions_tsv`
(user_id item_id time, with item metadata files `item_id category`)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv

from eain_dist.data.readers import values
from eain_dist.data.readers.lines import SNIFF_BYTES, Chunk, Lines
from eain_dist.data.readers.records import (INTERACTION_SCHEMA, META_SCHEMA, Spec, checked_interactions,
                                            checked_meta)
from eain_dist.data.readers.rejects import Reject, RejectLog


@dataclass(frozen=True)
class Dialect:
    delimiter: str
    quote_char: str | bool  # False: no quoting (TSV)


DIALECTS = {"ratings_csv": Dialect(",", '"'), "interactions_tsv": Dialect("\t", False)}
_ID_HEADERS = frozenset({"item", "item_id", "itemid", "asin", "parent_asin", "productid", "product_id"})
_INTEGER = re.compile(r"^\s*-?[0-9]+\s*$")


class DelimitedSpec(Spec):
    """Positional columns; a raw record is a line (bytes). One instance reads one file or one
    part of it: the first line fixes the column count of the fast path and, in a file's first
    part only, may be a header."""

    columns_used: tuple[int, ...]  # the columns the canonical ones come from
    types: tuple[pa.DataType, ...]

    def __init__(self, fmt: str):
        self.dialect = DIALECTS[fmt]
        self.columns = 0

    def read(self, path: str, lines: Lines, log: RejectLog) -> Iterator[pa.Table]:
        chunks = self._first_line_read(iter(lines), header_allowed=lines.start == 0)
        yield from self.read_lines(path, chunks, lines, log)

    def fast(self, chunk: Chunk) -> tuple[pa.Table, list[tuple[int, str]]]:
        # Too few columns for the fields we need: pyarrow refuses the rows, the slow path rejects them.
        names = [f"c{i}" for i in range(max(self.columns, max(self.columns_used) + 1))]
        wanted = [names[i] for i in self.columns_used]
        table = pa_csv.read_csv(
            pa.py_buffer(chunk.data),
            read_options=pa_csv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pa_csv.ParseOptions(delimiter=self.dialect.delimiter,
                                              quote_char=self.dialect.quote_char),
            convert_options=pa_csv.ConvertOptions(
                include_columns=wanted, column_types=dict(zip(wanted, self.types)),
                null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=False))
        return self.checked(*(table[name] for name in wanted), offset=chunk.offset)

    def row(self, raw: bytes) -> tuple:
        fields = self.fields(raw.decode("utf-8", errors="replace").rstrip("\r"))
        if len(fields) <= max(self.columns_used):
            raise Reject("bad_row")
        return self.row_of(*(fields[i] for i in self.columns_used))

    def fields(self, line: str) -> list[str]:
        if self.dialect.quote_char and self.dialect.quote_char in line:
            try:
                return next(csv.reader([line], delimiter=self.dialect.delimiter, strict=True))
            except csv.Error:
                raise Reject("bad_row") from None
        return line.split(self.dialect.delimiter)

    def is_header(self, fields: list[str]) -> bool:
        raise NotImplementedError

    def checked(self, *columns, offset: int) -> tuple[pa.Table, list[tuple[int, str]]]:
        raise NotImplementedError

    def row_of(self, *fields: str) -> tuple:
        raise NotImplementedError

    def _first_line_read(self, chunks: Iterator[Chunk], header_allowed: bool) -> Iterator[Chunk]:
        for chunk in chunks:
            yield self._start(chunk, header_allowed) if not self.columns else chunk

    def _start(self, chunk: Chunk, header_allowed: bool) -> Chunk:
        """Take the column count from the first non-blank line; drop it if it is the file's header."""
        found = _first_text_line(chunk)
        if found is None:
            return chunk  # blank lines only: the next chunk may hold the first line
        skipped, end, text = found
        try:
            fields = self.fields(text.decode("utf-8", errors="replace").rstrip("\r"))
        except Reject:
            fields = []  # a broken first row: no header, and the slow path will say so
        self.columns = max(len(fields), 1)
        if not header_allowed or len(fields) <= max(self.columns_used) or not self.is_header(fields):
            return chunk
        return chunk.after(skipped + 1, end)


def _first_text_line(chunk: Chunk) -> tuple[int, int, bytes] | None:
    """(blank lines before it, offset just after it, its bytes) of a chunk's first non-blank line."""
    data = bytes(chunk.data[:SNIFF_BYTES])
    if b"\n" not in data.rstrip(b"\n") and len(data) < len(chunk.data):
        data = bytes(chunk.data)  # a first line longer than the sniff size
    start = 0
    for skipped, line in enumerate(data.split(b"\n")):
        end = start + len(line) + 1
        if line.strip():
            return skipped, min(end, len(chunk.data)), line
        start = end
    return None


class DelimitedInteractions(DelimitedSpec):
    """ratings_csv: user, item, rating, timestamp; interactions_tsv: user, item, time."""

    schema = INTERACTION_SCHEMA
    types = (pa.string(), pa.string(), pa.int64())

    def __init__(self, fmt: str):
        super().__init__(fmt)
        self.columns_used = (0, 1, 3) if fmt == "ratings_csv" else (0, 1, 2)

    def is_header(self, fields: list[str]) -> bool:
        return not _INTEGER.match(fields[self.columns_used[2]])

    def checked(self, user, item, time, *, offset: int) -> tuple[pa.Table, list[tuple[int, str]]]:
        return checked_interactions(user, item, time, ("user", "item", "timestamp"), 1, offset)

    def row_of(self, user: str, item: str, time: str) -> tuple:
        return values.id_value(user, "user"), values.id_value(item, "item"), values.seconds(time, "timestamp", 1)


class DelimitedMeta(DelimitedSpec):
    """item, category."""

    schema = META_SCHEMA
    columns_used = (0, 1)
    types = (pa.string(), pa.string())

    def is_header(self, fields: list[str]) -> bool:
        return fields[0].strip().lower() in _ID_HEADERS

    def checked(self, item, category, *, offset: int) -> tuple[pa.Table, list[tuple[int, str]]]:
        return checked_meta(item, values.null_if_blank(category), pa.nulls(len(item), pa.string()),
                            pa.nulls(len(item), pa.float64()), "item")

    def row_of(self, item: str, category: str) -> tuple:
        return values.id_value(item, "item"), category or None, None, None
