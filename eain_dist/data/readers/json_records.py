"""JSON records: the 2014, 2018 and 2023 releases' reviews and item metadata.

JSON lines, or pretty-printed JSON read as concatenated objects. A record is a JSON value; a
line normally holds one, but several are read as several, as pyarrow does. A raw record is a
decoded value, or the text (str) of one that did not decode.
"""

from __future__ import annotations

import ast
import io
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from eain_dist.data.readers import values
from eain_dist.data.readers.lines import Chunk, Lines
from eain_dist.data.readers.records import (INTERACTION_SCHEMA, META_SCHEMA, Spec, checked_interactions,
                                            checked_meta)
from eain_dist.data.readers.rejects import Reject, RejectLog

JSON_BLOCK_BYTES = 16 << 20  # pyarrow's JSON parser needs every line to fit in one block
# A pretty-printed object still undecodable with this much text after its start is malformed,
# not merely cut by a chunk boundary.
MAX_OBJECT_CHARS = 1 << 20


@dataclass(frozen=True)
class ReviewFields:
    user: str
    item: str
    timestamp: str
    units_per_second: int


REVIEW_FIELDS = {
    "amazon2014": ReviewFields("reviewerID", "asin", "unixReviewTime", 1),
    "amazon2018": ReviewFields("reviewerID", "asin", "unixReviewTime", 1),
    "amazon2023": ReviewFields("user_id", "parent_asin", "timestamp", 1000),
}


@dataclass(frozen=True)
class MetaFields:
    item: str
    path: str  # the category path
    path_type: pa.DataType
    main: str | None  # the release's main category, for items without a path
    store: str
    price_type: pa.DataType  # float64, or string for "$12.99" texts


_STRINGS = pa.list_(pa.string())
META_FIELDS = {
    "amazon2014": MetaFields("asin", "categories", pa.list_(_STRINGS), None, "brand", pa.float64()),
    "amazon2018": MetaFields("asin", "category", _STRINGS, "main_cat", "brand", pa.string()),
    "amazon2023": MetaFields("parent_asin", "categories", _STRINGS, "main_category", "store", pa.float64()),
}


class JsonSpec(Spec):
    arrow_schema: pa.Schema  # just the fields the canonical columns need

    def read(self, path: str, lines: Lines, log: RejectLog) -> Iterator[pa.Table]:
        chunks = iter(lines)
        first = next(chunks, None)
        chunks = itertools.chain([first] if first is not None else [], chunks)
        if first is not None and lines.start == 0 and opens_pretty_printed(first.data):
            log.note(f"{path}: pretty-printed JSON (objects span lines), read as concatenated objects")
            yield from self.read_objects(path, chunks, lines, log)
        else:
            yield from self.read_lines(path, chunks, lines, log)

    def read_objects(self, path: str, chunks: Iterable[Chunk], lines: Lines,
                     log: RejectLog) -> Iterator[pa.Table]:
        rest, line = "", 1  # text not decoded yet and the line it starts on
        count = 0  # objects so far: their positions
        for chunk in chunks:
            rest += bytes(chunk.data).decode("utf-8", errors="replace")
            records, rest, line = objects_in(rest, line, final=False)
            yield self.table_from(path, _numbered(records, count), log)
            count += len(records)
        records, rest, line = objects_in(rest, line, final=True, cut=lines.cut is not None)
        yield self.table_from(path, _numbered(records, count), log)
        if lines.cut:
            cut_line = line if rest.strip() else lines.cut_line
            lines.report_cut(log, cut_line, rest + lines.cut_text.decode("utf-8", errors="replace"))

    def fast(self, chunk: Chunk) -> tuple[pa.Table, list[tuple[int, str]]]:
        table = pa_json.read_json(
            pa.py_buffer(chunk.data),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=JSON_BLOCK_BYTES),
            parse_options=pa_json.ParseOptions(explicit_schema=self.arrow_schema,
                                               unexpected_field_behavior="ignore"))
        table.validate(full=True)  # pyarrow's JSON reader passes invalid UTF-8 through
        return self.checked(table, chunk.offset)

    def records_in(self, line: bytes) -> list:
        return line_values(line)

    def row(self, raw: Any) -> tuple:
        if not isinstance(raw, dict):
            raise Reject("malformed_json")
        return self.row_of(raw)

    def checked(self, table: pa.Table, offset: int) -> tuple[pa.Table, list[tuple[int, str]]]:
        raise NotImplementedError

    def row_of(self, record: dict) -> tuple:
        raise NotImplementedError


# What polars makes of a number, boolean, list or object where a string belongs.
_NOT_TEXT_OF_A_STRING = r"^(?:[\[{]|true$|false$|-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?$)"


def _string_values(data: bytes, key: str) -> int:
    """How many times `key` is given a string value (`"key": "` or `"key":"`): once per record
    when every record has it as a string. A key inside a review's text is escaped (`\\"key\\"`),
    so it is not counted."""
    spaced = data.count(f'"{key}": "'.encode())
    return spaced + (data.count(f'"{key}":"'.encode()) if spaced == 0 else 0)


def _numbered(records: list[tuple[int, Any]], first: int) -> list[tuple[int, int, Any]]:
    return [(line, first + k, value) for k, (line, value) in enumerate(records)]


class JsonInteractions(JsonSpec):
    schema = INTERACTION_SCHEMA

    def __init__(self, fields: ReviewFields):
        self.fields = fields
        self.arrow_schema = pa.schema([(fields.user, pa.string()), (fields.item, pa.string()),
                                       (fields.timestamp, pa.int64())])
        self.polars_schema = {fields.user: pl.String, fields.item: pl.String, fields.timestamp: pl.Int64}

    def fast(self, chunk: Chunk) -> tuple[pa.Table, list[tuple[int, str]]]:
        """polars' JSON lines reader first (3x pyarrow's on review lines); pyarrow where polars
        fails (a syntax error, a text or float timestamp, invalid UTF-8) or where an id may not
        have been a JSON string (polars writes numbers, booleans, lists and objects as text; pyarrow
        refuses them, and the record-by-record path rejects all but integers). A duplicate key is
        the one case they differ on and neither rejects: polars keeps the first value, pyarrow and
        the record path the last."""
        try:
            frame = pl.read_ndjson(io.BytesIO(chunk.data), schema=self.polars_schema)
        except pl.exceptions.PolarsError:
            return super().fast(chunk)
        if not self._ids_were_strings(frame, chunk):
            return super().fast(chunk)
        table = frame.to_arrow().cast(self.arrow_schema)
        return self.checked(table, chunk.offset)

    def _ids_were_strings(self, frame: pl.DataFrame, chunk: Chunk) -> bool:
        """True when every id was a JSON string: no id looks like polars' text of another value,
        or, where some do (all-digit ASINs, say), the text gives each record its ids as strings."""
        keys = (self.fields.user, self.fields.item)
        if not frame.select(pl.any_horizontal(pl.col(k).str.contains(_NOT_TEXT_OF_A_STRING) for k in keys).any()).item():
            return True
        data = bytes(chunk.data)
        return all(_string_values(data, key) == frame.height for key in keys)

    def checked(self, table: pa.Table, offset: int) -> tuple[pa.Table, list[tuple[int, str]]]:
        f = self.fields
        return checked_interactions(table[f.user], table[f.item], table[f.timestamp],
                                    (f.user, f.item, f.timestamp), f.units_per_second, offset)

    def row_of(self, record: dict) -> tuple:
        f = self.fields
        return (values.id_value(record.get(f.user), f.user), values.id_value(record.get(f.item), f.item),
                values.seconds(record.get(f.timestamp), f.timestamp, f.units_per_second))


class JsonMeta(JsonSpec):
    schema = META_SCHEMA

    def __init__(self, fields: MetaFields):
        self.fields = fields
        columns = [(fields.item, pa.string()), (fields.path, fields.path_type),
                   (fields.store, pa.string()), ("price", fields.price_type)]
        if fields.main:
            columns.append((fields.main, pa.string()))
        self.arrow_schema = pa.schema(columns)

    def checked(self, table: pa.Table, offset: int) -> tuple[pa.Table, list[tuple[int, str]]]:
        f = self.fields
        category = values.last_values(table[f.path])
        if pa.types.is_list(category.type):  # 2014: a list of paths
            category = values.last_values(category)
        category = values.null_if_blank(category)
        if f.main:
            category = pc.coalesce(category, values.null_if_blank(table[f.main]))
        return checked_meta(table[f.item], category, values.null_if_blank(table[f.store]),
                            values.prices(table["price"]), f.item)

    def row_of(self, record: dict) -> tuple:
        f = self.fields
        category = values.most_specific(record.get(f.path))
        if category is None and f.main:
            category = values.text(record.get(f.main))
        return (values.id_value(record.get(f.item), f.item), category, values.text(record.get(f.store)),
                values.price(record.get("price")))


def line_values(line: bytes) -> list:
    """The JSON values of a line (usually one), else a Python literal (the 2014 metadata files
    are written that way), else the line's text, which `row` rejects as malformed_json.

    Bytes that are not UTF-8 become U+FFFD: harmless in a review text, a `bad_encoding`
    reject in an id (see `values.id_value`), as on the fast path.
    """
    text = line.decode("utf-8", errors="replace")
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several values on the line
            return [value for _, value in objects_in(text, 1, final=True)[0]]
    try:
        return [ast.literal_eval(text.strip())]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return [text]


def opens_pretty_printed(data: bytes | memoryview) -> bool:
    first = next((line.strip() for line in bytes(data[:4096]).split(b"\n") if line.strip()), b"")
    return first == b"{"


_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


def objects_in(text: str, line: int, *, final: bool, cut: bool = False) -> tuple[list, str, int]:
    """Decode the concatenated JSON values at the start of `text` (from line `line`).

    Returns ([(line, value, or the text of a malformed one)], the undecoded rest, its line).
    Until `final`, a value that the next chunk may still complete stays in the rest; a
    malformed one is kept as text and decoding resumes at the next line opening an object. At
    the end of a `cut` stream the undecodable rest is the record the cut fell in.
    """
    records = []
    pos = 0
    while True:
        start = _SPACE.match(text, pos).end()
        line += text.count("\n", pos, start)
        pos = start
        if pos == len(text):
            break
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            if (not final and len(text) - pos < MAX_OBJECT_CHARS) or (final and cut):
                break
            end = text.find("\n{", pos + 1) + 1 or len(text)
            value = text[pos:end]
        records.append((line, value))
        line += text.count("\n", pos, end)
        pos = end
    return records, text[pos:], line
