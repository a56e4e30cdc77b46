"""Readers for the Amazon review releases and plain interaction files.

Each reader streams one file and yields tables in a canonical schema, chunk by chunk, so a
10 GB file is never held in memory:

    stream the file (gzip detected by its magic bytes, decompressed incrementally)
      -> chunks of whole lines (`chunk_bytes` each)
      -> fast path: pyarrow's JSON / CSV parser on the whole chunk, reading only the needed
         fields, then vectorised checks
      -> slow path, for a chunk the fast path cannot take: one line at a time, so every good
         line survives and every bad one is rejected with its 1-based line number.

Nothing is dropped silently: every record read is counted in a `RejectLog`, and every rejected
one under a stable reason (`malformed_json`, `missing_field:<name>`, `bad_timestamp`,
`bad_row`, `bad_field:<name>`, `bad_encoding`, `truncated_gzip`, `corrupt_gzip`).

Choices a user may want to know:
- Timestamps are seconds UTC; 2023 milliseconds are floored. A timestamp that is negative or
  falls outside 1990..2100 after conversion (e.g. seconds in a milliseconds field) is rejected.
- Ids must be non-empty; JSON integers are accepted as ids (as text).
- Item category: the most specific entry of the category path, else the release's main
  category. For 2014 metadata that is `categories[-1][-1]`, the last entry of the LAST path,
  exactly as DIN's preprocessing (`1_convert_pd.py`) does, so results compare with the paper.
- Prices: numbers, or text like "$1,299.99"; anything else (ranges, page junk) becomes null.
- CSV / TSV: a first line whose timestamp column (interactions) is not an integer, or whose
  first column is an id column name (metadata), is a header. Columns beyond the needed ones
  are ignored, row by row (`ratings_beauty.csv` ends every row with a stray column that is
  empty or `Delete`; it has no documented meaning, so those rows are ordinary interactions).
  Quoted values may not span lines.
- JSON lines: blank lines are skipped; a line holding several records gives several; a
  record spread over lines is malformed, unless the file is pretty-printed (its first
  non-blank line is a lone `{`): that file is read as a stream of concatenated JSON objects,
  and the log notes it.
- The 2014 metadata files are Python literals, not JSON: each line that is not JSON is tried
  with `ast.literal_eval`.
- A gzip stream that ends early (a cut download) keeps every complete record; the record it
  was cut in is one `truncated_gzip` reject that says where the stream ended.
"""

from __future__ import annotations

import ast
import csv
import itertools
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from eain_dist.data.errors import InputError

INTERACTION_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("timestamp", pa.int64())])
META_SCHEMA = pa.schema([
    pa.field("item", pa.string(), nullable=False),
    ("category", pa.string()),
    ("store", pa.string()),
    ("price", pa.float64()),
])
FORMATS = ("amazon2014", "amazon2018", "amazon2023", "ratings_csv", "interactions_tsv")

_MIN_SECONDS = 631_152_000  # 1990-01-01 UTC
_MAX_SECONDS = 4_102_444_800  # 2100-01-01 UTC
_SAMPLE_CHARS = 300
_READ_BYTES = 1 << 20  # raw bytes per read; gzip inflates them 3-10x
_SNIFF_BYTES = 256 << 10
_SNIFF_RECORDS = 50
_JSON_BLOCK_BYTES = 16 << 20  # pyarrow's JSON parser needs every line to fit in one block
# A pretty-printed object still undecodable with this much text after its start is malformed,
# not merely cut by a chunk boundary.
_MAX_OBJECT_CHARS = 1 << 20
_SALVAGE_STEP = 512  # compressed bytes per step when recovering data before corrupt gzip
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"


# ---------------------------------------------------------------------------------------------
# The reject log


@dataclass
class RejectLog:
    """Records read and rejected, per file and reason, with a few samples of each.

    Readers call `seen` for every record they read (good or bad) and `reject` for every bad
    one; logs of parallel tasks are combined with `merge`. Plain dicts and lists, so it is
    cheap to pickle between Ray tasks.
    """

    max_samples: int = 20  # per (file, reason)
    records: dict[str, int] = field(default_factory=dict)  # file -> records read, good + bad
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (file, reason) -> n
    samples: list[dict] = field(default_factory=list)  # file, line, reason, text[, detail]
    notes: list[str] = field(default_factory=list)  # one line each, e.g. how a file was read

    def seen(self, file: str, n: int) -> None:
        self.records[file] = self.records.get(file, 0) + n

    def reject(self, file: str, line: int, reason: str, text: str | bytes, detail: str = "") -> None:
        key = (file, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] <= self.max_samples:
            self.samples.append(_sample(file, line, reason, text, detail))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def merge(self, other: RejectLog) -> None:
        for file, n in other.records.items():
            self.seen(file, n)
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        kept = Counter((s["file"], s["reason"]) for s in self.samples)
        for sample in other.samples:
            key = (sample["file"], sample["reason"])
            if kept[key] < self.max_samples:
                kept[key] += 1
                self.samples.append(sample)
        for text in other.notes:
            self.note(text)

    def total_records(self) -> int:
        return sum(self.records.values())

    def total_rejects(self) -> int:
        return sum(self.counts.values())

    def messages(self) -> list[str]:
        """One line per sample: `<file> line <n>: <reason>[ (detail)]`."""
        return [reject_message(sample) for sample in self.samples]

    def to_json(self) -> dict:
        rejects: dict[str, dict[str, int]] = {}
        for (file, reason), n in sorted(self.counts.items()):
            rejects.setdefault(file, {})[reason] = n
        return {
            "max_samples": self.max_samples,
            "records": dict(sorted(self.records.items())),
            "rejects": rejects,
            "samples": list(self.samples),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict) -> RejectLog:
        counts = {(file, reason): n
                  for file, reasons in data.get("rejects", {}).items() for reason, n in reasons.items()}
        return cls(max_samples=data.get("max_samples", 20), records=dict(data.get("records", {})),
                   counts=counts, samples=list(data.get("samples", [])), notes=list(data.get("notes", [])))


def reject_message(sample: dict) -> str:
    detail = f" ({sample['detail']})" if sample.get("detail") else ""
    return f"{sample['file']} line {sample['line']}: {sample['reason']}{detail}"


def _sample(file: str, line: int, reason: str, text: str | bytes, detail: str) -> dict:
    if isinstance(text, (bytes, memoryview)):
        text = bytes(text[: _SAMPLE_CHARS * 4]).decode("utf-8", errors="replace")
    sample = {"file": file, "line": line, "reason": reason, "text": text[:_SAMPLE_CHARS].rstrip("\r\n")}
    if detail:
        sample["detail"] = detail
    return sample


class _Reject(Exception):
    """A record is bad for `reason`; raised inside row builders, never outside this module."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Public API


def detect_format(path: str, fs) -> str:
    """The format of a file, from its first bytes (decompressed when gzip)."""
    head, whole = _head(path, fs)
    lines = head.split(b"\n")
    if not whole and len(lines) > 1:
        lines.pop()  # cut by the sniff size
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is None:
        raise InputError(f"{path}: empty file, cannot detect its format")
    if first.startswith(b"{"):
        return _detect_json(path, head, lines, pretty=first == b"{")
    return _detect_delimited(path, first.decode("utf-8", errors="replace"))


def read_interactions(path: str, fmt: str, fs, log: RejectLog, *,
                      chunk_bytes: int = 64 << 20) -> Iterator[pa.Table]:
    """(user, item, timestamp seconds) tables in INTERACTION_SCHEMA, one per chunk of the file.

    `fmt` is one of FORMATS, or "auto" to detect it. An empty file yields one empty table.
    """
    fmt = _checked_format(path, fmt, fs)
    spec = _DelimitedInteractions(fmt) if fmt in _DIALECTS else _JsonInteractions(_REVIEW_FIELDS[fmt])
    return _read(path, fs, log, chunk_bytes, spec)


def read_item_meta(path: str, fmt: str, fs, log: RejectLog, *,
                   chunk_bytes: int = 64 << 20) -> Iterator[pa.Table]:
    """(item, category, store, price) tables in META_SCHEMA, one per chunk of the file.

    For ratings_csv / interactions_tsv the file holds `item<sep>category` rows.
    """
    fmt = _checked_format(path, fmt, fs)
    spec = _DelimitedMeta(fmt) if fmt in _DIALECTS else _JsonMeta(_META_FIELDS[fmt])
    return _read(path, fs, log, chunk_bytes, spec)


def _checked_format(path: str, fmt: str, fs) -> str:
    if fmt == "auto":
        return detect_format(path, fs)
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format {fmt!r} (valid: auto, {', '.join(FORMATS)})")
    return fmt


def _read(path: str, fs, log: RejectLog, chunk_bytes: int, spec: _Spec) -> Iterator[pa.Table]:
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    yielded = False
    for table in spec.read(path, _Lines(path, fs, chunk_bytes), log):
        if table.num_rows:
            yielded = True
            yield table
    if not yielded:  # callers always see the schema, even of an empty or all-bad file
        yield spec.schema.empty_table()


# ---------------------------------------------------------------------------------------------
# Bytes and lines


class _Lines:
    """A file as chunks of whole lines, decompressed when it is gzip (by magic bytes).

    Iterating yields `_Chunk`s. When a gzip stream ends early (a cut download) or holds corrupt
    data, reading stops there: `cut` then says why and where, and the partial last line is
    kept in `cut_text` / `cut_line` instead of being yielded.
    """

    def __init__(self, path: str, fs, chunk_bytes: int):
        self.path, self.fs, self.chunk_bytes = path, fs, chunk_bytes
        self.cut: tuple[str, str] | None = None  # (reason, where the stream ended)
        self.cut_line = 1
        self.cut_text = b""

    def __iter__(self) -> Iterator[_Chunk]:
        next_line = 1
        for chunk in _line_chunks(self._blocks(), self.chunk_bytes):
            if not chunk.complete and self.cut:
                self.cut_text = bytes(chunk.data)
                break
            next_line = chunk.first_line + chunk.newlines
            yield chunk
        self.cut_line = next_line

    def report_cut(self, log: RejectLog, line: int, text: str | bytes) -> None:
        """The record the stream was cut in: one reject that says where the stream ended."""
        reason, where = self.cut
        log.seen(self.path, 1)
        log.reject(self.path, line, reason, text, detail=where)

    def _blocks(self) -> Iterator[bytes]:
        try:
            file = self.fs.open(self.path, "rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise InputError(f"{self.path}: cannot open ({type(exc).__name__})") from None
        with file:
            head = file.read(_READ_BYTES)
            reads = itertools.chain([head], iter(lambda: file.read(_READ_BYTES), b""))
            if head[:2] == _GZIP_MAGIC:
                yield from self._gunzip(reads)
            else:
                yield from reads

    def _gunzip(self, reads: Iterable[bytes]) -> Iterator[bytes]:
        inflater = zlib.decompressobj(wbits=31)
        in_member = False
        read = 0
        for data in reads:
            read += len(data)
            while data:
                saved = inflater.copy()
                try:
                    out = inflater.decompress(data)
                except zlib.error as exc:
                    yield from _inflate_until_damage(saved, data)
                    where = f"corrupt gzip data within the first {read} compressed bytes: {exc}"
                    self.cut = ("corrupt_gzip", where)
                    return
                in_member = True
                yield out
                data = b""
                if inflater.eof:  # concatenated gzip members (parallel compressors write these)
                    data = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=31)
                    in_member = False
        if in_member:
            self.cut = ("truncated_gzip", f"gzip stream ends early at compressed byte {read}")


def _inflate_until_damage(inflater, data: bytes, step: int = _SALVAGE_STEP) -> Iterator[bytes]:
    """What `data` inflates to before the damage zlib refused it for: an exception loses the
    output of its whole call, so go in small steps, and byte by byte through the failing one."""
    while data:
        piece, data = data[:step], data[step:]
        saved = inflater.copy()
        try:
            yield inflater.decompress(piece)
        except zlib.error:
            if step > 1:
                yield from _inflate_until_damage(saved, piece, step=1)
            return
        if inflater.eof:
            data = inflater.unused_data + data
            inflater = zlib.decompressobj(wbits=31)


@dataclass(frozen=True)
class _Chunk:
    first_line: int  # 1-based number of the chunk's first line in the file
    data: bytes | memoryview
    complete: bool  # ends with a newline; False only for a file's unterminated last line
    newlines: int

    def lines(self) -> list[bytes]:
        lines = bytes(self.data).split(b"\n")
        if self.complete:
            lines.pop()  # the empty string after the final newline
        return lines


def _line_chunks(blocks: Iterable[bytes], chunk_bytes: int) -> Iterator[_Chunk]:
    """Whole lines, about `chunk_bytes` at a time; a final unterminated line comes last."""
    pending: list[bytes] = []
    size = 0
    line = 1
    for block in blocks:
        if line == 1 and not pending and block.startswith(_UTF8_BOM):
            block = block[len(_UTF8_BOM):]
        pending.append(block)
        size += len(block)
        if size >= chunk_bytes:
            buffer = b"".join(pending)
            start, line, chunks = _split_at_lines(buffer, chunk_bytes, line, final=False)
            yield from chunks
            pending = [buffer[start:]]
            size = len(pending[0])
    buffer = b"".join(pending)
    start, line, chunks = _split_at_lines(buffer, chunk_bytes, line, final=True)
    yield from chunks
    if start < len(buffer):
        yield _Chunk(line, buffer[start:], complete=False, newlines=0)


def _split_at_lines(buffer: bytes, chunk_bytes: int, line: int, *,
                    final: bool) -> tuple[int, int, list[_Chunk]]:
    """Cut `buffer` into chunks of whole lines; returns (bytes used, next line, chunks)."""
    view = memoryview(buffer)
    chunks = []
    start = 0
    while len(buffer) - start >= chunk_bytes or final:
        end = buffer.rfind(b"\n", start, start + chunk_bytes) + 1
        if end <= start:  # one line longer than a chunk: take it whole
            end = buffer.find(b"\n", start + chunk_bytes) + 1
        if end <= start:
            break
        newlines = buffer.count(b"\n", start, end)
        chunks.append(_Chunk(line, view[start:end], complete=True, newlines=newlines))
        line += newlines
        start = end
    return start, line, chunks


def _head(path: str, fs) -> tuple[bytes, bool]:
    """The first decompressed bytes of a file, and whether they are the whole file."""
    lines = _Lines(path, fs, _SNIFF_BYTES)
    head = bytearray()
    for chunk in lines:
        head += chunk.data
        if len(head) >= _SNIFF_BYTES:
            return bytes(head), False
    return bytes(head + lines.cut_text), True


# ---------------------------------------------------------------------------------------------
# Format detection


def _detect_json(path: str, head: bytes, lines: list[bytes], *, pretty: bool) -> str:
    if pretty:
        text = head.decode("utf-8", errors="replace")
        records = [obj for _, obj in _objects_in(text, 1, final=False)[0][:_SNIFF_RECORDS]]
    else:
        texts = [line for line in lines if line.strip()][:_SNIFF_RECORDS]
        records = [value for text in texts for value in _line_values(text)]
    keys = set().union(*(record for record in records if isinstance(record, dict)))
    fmt = _json_format(keys)
    if fmt is None:
        found = ", ".join(sorted(keys)[:12]) or "no readable records"
        raise InputError(f"{path}: JSON of an unknown layout (fields: {found}); "
                         f"set data.format to one of {', '.join(FORMATS)}")
    return fmt


def _json_format(keys: set[str]) -> str | None:
    if "reviewerID" in keys:  # 2014 / 2018 reviews; 2018 added these fields
        return "amazon2018" if keys & {"verified", "vote", "style"} else "amazon2014"
    if "user_id" in keys or "parent_asin" in keys:  # 2023 reviews and metadata
        return "amazon2023"
    if "asin" in keys:  # 2014 / 2018 metadata
        return "amazon2018" if keys & {"main_cat", "category"} else "amazon2014"
    return None


def _detect_delimited(path: str, first: str) -> str:
    if "\t" in first:
        return "interactions_tsv"
    if "," in first:
        return "ratings_csv"
    raise InputError(f"{path}: cannot detect the format from its first line {first[:60]!r}; "
                     f"set data.format to one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# Record specs: how one format's records become canonical rows


class _Spec:
    """Turns the chunks of one file into canonical tables.

    `fast` parses a whole chunk with pyarrow: it returns (table of the good rows, [(row,
    reason)] of the bad ones) and raises on anything it cannot take, which sends the chunk to
    the slow path. `row` builds one canonical row from one raw record, raising `_Reject`.
    """

    schema: pa.Schema

    def read(self, path: str, lines: _Lines, log: RejectLog) -> Iterator[pa.Table]:
        yield from self.read_lines(path, iter(lines), lines, log)

    def read_lines(self, path: str, chunks: Iterable[_Chunk], lines: _Lines,
                   log: RejectLog) -> Iterator[pa.Table]:
        for chunk in chunks:
            yield self.parse_chunk(path, chunk, log)
        if lines.cut:
            lines.report_cut(log, lines.cut_line, lines.cut_text)

    def parse_chunk(self, path: str, chunk: _Chunk, log: RejectLog) -> pa.Table:
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

    def slow(self, path: str, chunk: _Chunk, log: RejectLog) -> pa.Table:
        records = [(chunk.first_line + offset, record)
                   for offset, text in enumerate(chunk.lines()) if text.strip()
                   for record in self.records_in(text)]
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
        except _Reject as bad:
            return bad.reason
        return None

    def table_from(self, path: str, records: list[tuple[int, Any]], log: RejectLog) -> pa.Table:
        """Canonical table from (line, raw record) pairs, rejecting the bad ones."""
        rows = []
        for line, raw in records:
            try:
                rows.append(self.row(raw))
            except _Reject as bad:
                log.reject(path, line, bad.reason, _text_of(raw))
        log.seen(path, len(records))
        columns = list(zip(*rows)) or [()] * len(self.schema)
        return pa.table([pa.array(values, type=f.type) for values, f in zip(columns, self.schema)],
                        schema=self.schema)

    def fast(self, chunk: _Chunk) -> tuple[pa.Table, list[tuple[int, str]]]:
        raise NotImplementedError

    def row(self, raw: Any) -> tuple:
        raise NotImplementedError


def _text_of(raw: Any) -> str | bytes:
    return raw if isinstance(raw, (str, bytes)) else json.dumps(raw, default=str)


def _split_good_bad(table: pa.Table, problems: list[tuple[str, Any]]) -> tuple[pa.Table, list[tuple[int, str]]]:
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


def _checked_interactions(user, item, raw_time, names: tuple[str, str, str],
                          units_per_second: int) -> tuple[pa.Table, list[tuple[int, str]]]:
    seconds = raw_time if units_per_second == 1 else pc.divide(raw_time, units_per_second)
    out_of_range = pc.or_(pc.less(raw_time, 0),
                          pc.or_(pc.less(seconds, _MIN_SECONDS), pc.greater_equal(seconds, _MAX_SECONDS)))
    problems = [(f"missing_field:{names[0]}", _blank(user)),
                (f"missing_field:{names[1]}", _blank(item)),
                (f"missing_field:{names[2]}", pc.is_null(raw_time)),
                ("bad_timestamp", pc.fill_null(out_of_range, False))]
    return _split_good_bad(pa.table([user, item, seconds], schema=INTERACTION_SCHEMA), problems)


def _checked_meta(item, category, store, price, item_name: str) -> tuple[pa.Table, list[tuple[int, str]]]:
    table = pa.table([pc.fill_null(item, ""), category, store, price], schema=META_SCHEMA)
    return _split_good_bad(table, [(f"missing_field:{item_name}", _blank(item))])


# --- values: vectorised for the fast path, per record for the slow one -----------------------


def _blank(values):
    """True where a string is null or empty."""
    return pc.fill_null(pc.equal(pc.binary_length(values), 0), True)


def _null_if_blank(values):
    return pc.if_else(_blank(values), pa.scalar(None, pa.string()), values)


def _id_value(value: Any, name: str) -> str:
    if isinstance(value, str) and value:
        if _REPLACEMENT in value:
            raise _Reject("bad_encoding")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _Reject(f"missing_field:{name}" if value is None or value == "" else f"bad_field:{name}")


def _seconds(value: Any, name: str, units_per_second: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Reject(f"missing_field:{name}")
    raw = _integer(value)
    if raw is None or raw < 0 or not _MIN_SECONDS <= raw // units_per_second < _MAX_SECONDS:
        raise _Reject("bad_timestamp")
    return raw // units_per_second


def _integer(value: Any) -> int | None:
    """An integer given as int, integral float or decimal text; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _most_specific(value: Any) -> str | None:
    """The last entry of a category path; of the last path when there are several (DIN)."""
    if isinstance(value, list) and value:
        last = value[-1]
        return _most_specific(last) if isinstance(last, list) else _text(last)
    return _text(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


_REPLACEMENT = "\ufffd"  # what undecodable bytes became
_PRICE = re.compile(r"^\s*\$?\s*(?P<v>[0-9][0-9,]*(?:\.[0-9]+)?)\s*$")


def _price(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    match = _PRICE.match(value) if isinstance(value, str) else None
    return float(match.group("v").replace(",", "")) if match else None


def _prices(values):
    """Vectorised `_price` of a float64 or string column."""
    if pa.types.is_floating(values.type):
        return pc.if_else(pc.greater_equal(values, 0), values, pa.scalar(None, pa.float64()))
    digits = pc.struct_field(pc.extract_regex(values, _PRICE.pattern), "v")
    return pc.cast(pc.replace_substring(digits, ",", ""), pa.float64())


def _last_values(lists) -> pa.Array:
    """The last value of every list; null for a null or empty list."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths) - 1  # where every list's last value sits among all values
    return lists.flatten().take(pa.array(ends, mask=lengths == 0))


# --- JSON ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReviewFields:
    user: str
    item: str
    timestamp: str
    units_per_second: int


_REVIEW_FIELDS = {
    "amazon2014": _ReviewFields("reviewerID", "asin", "unixReviewTime", 1),
    "amazon2018": _ReviewFields("reviewerID", "asin", "unixReviewTime", 1),
    "amazon2023": _ReviewFields("user_id", "parent_asin", "timestamp", 1000),
}


@dataclass(frozen=True)
class _MetaFields:
    item: str
    path: str  # the category path
    path_type: pa.DataType
    main: str | None  # the release's main category, for items without a path
    store: str
    price_type: pa.DataType  # float64, or string for "$12.99" texts


_STRINGS = pa.list_(pa.string())
_META_FIELDS = {
    "amazon2014": _MetaFields("asin", "categories", pa.list_(_STRINGS), None, "brand", pa.float64()),
    "amazon2018": _MetaFields("asin", "category", _STRINGS, "main_cat", "brand", pa.string()),
    "amazon2023": _MetaFields("parent_asin", "categories", _STRINGS, "main_category", "store", pa.float64()),
}


class _JsonSpec(_Spec):
    """JSON lines, or pretty-printed JSON read as concatenated objects. A record is a JSON
    value; a line normally holds one, but several are read as several, as pyarrow does. A raw
    record is a decoded value, or the text (str) of one that did not decode."""

    arrow_schema: pa.Schema  # just the fields the canonical columns need

    def read(self, path: str, lines: _Lines, log: RejectLog) -> Iterator[pa.Table]:
        chunks = iter(lines)
        first = next(chunks, None)
        chunks = itertools.chain([first] if first is not None else [], chunks)
        if first is not None and _opens_pretty_printed(first.data):
            log.note(f"{path}: pretty-printed JSON (objects span lines), read as concatenated objects")
            yield from self.read_objects(path, chunks, lines, log)
        else:
            yield from self.read_lines(path, chunks, lines, log)

    def read_objects(self, path: str, chunks: Iterable[_Chunk], lines: _Lines,
                     log: RejectLog) -> Iterator[pa.Table]:
        rest, line = "", 1  # text not decoded yet and the line it starts on
        for chunk in chunks:
            rest += bytes(chunk.data).decode("utf-8", errors="replace")
            records, rest, line = _objects_in(rest, line, final=False)
            yield self.table_from(path, records, log)
        records, rest, line = _objects_in(rest, line, final=True, cut=lines.cut is not None)
        yield self.table_from(path, records, log)
        if lines.cut:
            cut_line = line if rest.strip() else lines.cut_line
            lines.report_cut(log, cut_line, rest + lines.cut_text.decode("utf-8", errors="replace"))

    def fast(self, chunk: _Chunk) -> tuple[pa.Table, list[tuple[int, str]]]:
        table = pa_json.read_json(
            pa.py_buffer(chunk.data),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=_JSON_BLOCK_BYTES),
            parse_options=pa_json.ParseOptions(explicit_schema=self.arrow_schema,
                                               unexpected_field_behavior="ignore"))
        table.validate(full=True)  # pyarrow's JSON reader passes invalid UTF-8 through
        return self.checked(table)

    def records_in(self, line: bytes) -> list:
        return _line_values(line)

    def row(self, raw: Any) -> tuple:
        if not isinstance(raw, dict):
            raise _Reject("malformed_json")
        return self.row_of(raw)

    def checked(self, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        raise NotImplementedError

    def row_of(self, record: dict) -> tuple:
        raise NotImplementedError


class _JsonInteractions(_JsonSpec):
    schema = INTERACTION_SCHEMA

    def __init__(self, fields: _ReviewFields):
        self.fields = fields
        self.arrow_schema = pa.schema([(fields.user, pa.string()), (fields.item, pa.string()),
                                       (fields.timestamp, pa.int64())])

    def checked(self, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        f = self.fields
        return _checked_interactions(table[f.user], table[f.item], table[f.timestamp],
                                     (f.user, f.item, f.timestamp), f.units_per_second)

    def row_of(self, record: dict) -> tuple:
        f = self.fields
        return (_id_value(record.get(f.user), f.user), _id_value(record.get(f.item), f.item),
                _seconds(record.get(f.timestamp), f.timestamp, f.units_per_second))


class _JsonMeta(_JsonSpec):
    schema = META_SCHEMA

    def __init__(self, fields: _MetaFields):
        self.fields = fields
        columns = [(fields.item, pa.string()), (fields.path, fields.path_type),
                   (fields.store, pa.string()), ("price", fields.price_type)]
        if fields.main:
            columns.append((fields.main, pa.string()))
        self.arrow_schema = pa.schema(columns)

    def checked(self, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        f = self.fields
        category = _last_values(table[f.path])
        if pa.types.is_list(category.type):  # 2014: a list of paths
            category = _last_values(category)
        category = _null_if_blank(category)
        if f.main:
            category = pc.coalesce(category, _null_if_blank(table[f.main]))
        return _checked_meta(table[f.item], category, _null_if_blank(table[f.store]),
                             _prices(table["price"]), f.item)

    def row_of(self, record: dict) -> tuple:
        f = self.fields
        category = _most_specific(record.get(f.path))
        if category is None and f.main:
            category = _text(record.get(f.main))
        return (_id_value(record.get(f.item), f.item), category, _text(record.get(f.store)),
                _price(record.get("price")))


def _line_values(line: bytes) -> list:
    """The JSON values of a line (usually one), else a Python literal (the 2014 metadata files
    are written that way), else the line's text, which `row` rejects as malformed_json.

    Bytes that are not UTF-8 become U+FFFD: harmless in a review text, a `bad_encoding`
    reject in an id (see `_id_value`), as on the fast path.
    """
    text = line.decode("utf-8", errors="replace")
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several values on the line
            return [value for _, value in _objects_in(text, 1, final=True)[0]]
    try:
        return [ast.literal_eval(text.strip())]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return [text]


def _opens_pretty_printed(data: bytes | memoryview) -> bool:
    first = next((line.strip() for line in bytes(data[:4096]).split(b"\n") if line.strip()), b"")
    return first == b"{"


_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


def _objects_in(text: str, line: int, *, final: bool, cut: bool = False) -> tuple[list, str, int]:
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
            if (not final and len(text) - pos < _MAX_OBJECT_CHARS) or (final and cut):
                break
            end = text.find("\n{", pos + 1) + 1 or len(text)
            value = text[pos:end]
        records.append((line, value))
        line += text.count("\n", pos, end)
        pos = end
    return records, text[pos:], line


# --- CSV / TSV -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dialect:
    delimiter: str
    quote_char: str | bool  # False: no quoting (TSV)


_DIALECTS = {"ratings_csv": _Dialect(",", '"'), "interactions_tsv": _Dialect("\t", False)}
_ID_HEADERS = frozenset({"item", "item_id", "itemid", "asin", "parent_asin", "productid", "product_id"})
_INTEGER = re.compile(r"^\s*-?[0-9]+\s*$")


class _DelimitedSpec(_Spec):
    """Positional columns; a raw record is a line (bytes). One instance reads one file: the
    first line fixes the column count of the fast path and may be a header."""

    positions: tuple[int, ...]  # the columns the canonical ones come from
    types: tuple[pa.DataType, ...]

    def __init__(self, fmt: str):
        self.dialect = _DIALECTS[fmt]
        self.columns = 0

    def read(self, path: str, lines: _Lines, log: RejectLog) -> Iterator[pa.Table]:
        yield from self.read_lines(path, self._without_header(iter(lines)), lines, log)

    def fast(self, chunk: _Chunk) -> tuple[pa.Table, list[tuple[int, str]]]:
        # Too few columns for the fields we need: pyarrow refuses the rows, the slow path rejects them.
        names = [f"c{i}" for i in range(max(self.columns, max(self.positions) + 1))]
        wanted = [names[i] for i in self.positions]
        table = pa_csv.read_csv(
            pa.py_buffer(chunk.data),
            read_options=pa_csv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pa_csv.ParseOptions(delimiter=self.dialect.delimiter,
                                              quote_char=self.dialect.quote_char),
            convert_options=pa_csv.ConvertOptions(
                include_columns=wanted, column_types=dict(zip(wanted, self.types)),
                null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=False))
        return self.checked(*(table[name] for name in wanted))

    def row(self, raw: bytes) -> tuple:
        fields = self.fields(raw.decode("utf-8", errors="replace").rstrip("\r"))
        if len(fields) <= max(self.positions):
            raise _Reject("bad_row")
        return self.row_of(*(fields[i] for i in self.positions))

    def fields(self, line: str) -> list[str]:
        if self.dialect.quote_char and self.dialect.quote_char in line:
            try:
                return next(csv.reader([line], delimiter=self.dialect.delimiter, strict=True))
            except csv.Error:
                raise _Reject("bad_row") from None
        return line.split(self.dialect.delimiter)

    def is_header(self, fields: list[str]) -> bool:
        raise NotImplementedError

    def checked(self, *columns) -> tuple[pa.Table, list[tuple[int, str]]]:
        raise NotImplementedError

    def row_of(self, *values: str) -> tuple:
        raise NotImplementedError

    def _without_header(self, chunks: Iterator[_Chunk]) -> Iterator[_Chunk]:
        for chunk in chunks:
            yield self._start(chunk) if not self.columns else chunk

    def _start(self, chunk: _Chunk) -> _Chunk:
        """Take the column count from the file's first non-blank line; drop it if a header."""
        found = _first_text_line(chunk)
        if found is None:
            return chunk  # blank lines only: the next chunk may hold the first line
        skipped, end, text = found
        try:
            fields = self.fields(text.decode("utf-8", errors="replace").rstrip("\r"))
        except _Reject:
            fields = []  # a broken first row: no header, and the slow path will say so
        self.columns = max(len(fields), 1)
        if len(fields) <= max(self.positions) or not self.is_header(fields):
            return chunk
        newlines = chunk.newlines - skipped - 1 if chunk.complete else 0  # an unterminated chunk is one line
        return _Chunk(chunk.first_line + skipped + 1, chunk.data[end:], chunk.complete, newlines)


def _first_text_line(chunk: _Chunk) -> tuple[int, int, bytes] | None:
    """(blank lines before it, offset just after it, its bytes) of a chunk's first non-blank line."""
    data = bytes(chunk.data[:_SNIFF_BYTES])
    if b"\n" not in data.rstrip(b"\n") and len(data) < len(chunk.data):
        data = bytes(chunk.data)  # a first line longer than the sniff size
    start = 0
    for skipped, line in enumerate(data.split(b"\n")):
        end = start + len(line) + 1
        if line.strip():
            return skipped, min(end, len(chunk.data)), line
        start = end
    return None


class _DelimitedInteractions(_DelimitedSpec):
    """ratings_csv: user, item, rating, timestamp; interactions_tsv: user, item, time."""

    schema = INTERACTION_SCHEMA
    types = (pa.string(), pa.string(), pa.int64())

    def __init__(self, fmt: str):
        super().__init__(fmt)
        self.positions = (0, 1, 3) if fmt == "ratings_csv" else (0, 1, 2)

    def is_header(self, fields: list[str]) -> bool:
        return not _INTEGER.match(fields[self.positions[2]])

    def checked(self, user, item, time) -> tuple[pa.Table, list[tuple[int, str]]]:
        return _checked_interactions(user, item, time, ("user", "item", "timestamp"), 1)

    def row_of(self, user: str, item: str, time: str) -> tuple:
        return _id_value(user, "user"), _id_value(item, "item"), _seconds(time, "timestamp", 1)


class _DelimitedMeta(_DelimitedSpec):
    """item, category."""

    schema = META_SCHEMA
    positions = (0, 1)
    types = (pa.string(), pa.string())

    def is_header(self, fields: list[str]) -> bool:
        return fields[0].strip().lower() in _ID_HEADERS

    def checked(self, item, category) -> tuple[pa.Table, list[tuple[int, str]]]:
        return _checked_meta(item, _null_if_blank(category), pa.nulls(len(item), pa.string()),
                             pa.nulls(len(item), pa.float64()), "item")

    def row_of(self, item: str, category: str) -> tuple:
        return _id_value(item, "item"), category or None, None, None
