"""Readers for the Amazon review releases and plain interaction files.

Each reader streams one file (or one byte range of it) and yields tables in a canonical
schema, chunk by chunk, so a 10 GB file is never held in memory:

    stream the file (gzip detected by its magic bytes, decompressed incrementally)   lines.py
      -> chunks of whole lines (`chunk_bytes` each)
      -> fast path: pyarrow's JSON / CSV parser on the whole chunk, reading only the needed
         fields, then vectorised checks                                                records.py,
      -> slow path, for a chunk the fast path cannot take: one line at a time, so every good   values.py
         line survives and every bad one is rejected with its 1-based line number.
    formats: json_records.py (2014, 2018, 2023 releases), delimited.py (CSV / TSV);
    detect.py (which format a file is), parts.py (byte ranges for parallel reading),
    rejects.py (the reject log).

Nothing is dropped silently: every record read is counted in a `RejectLog`, and every rejected
one under a stable reason (`malformed_json`, `missing_field:<name>`, `bad_timestamp`,
`bad_row`, `bad_field:<name>`, `bad_encoding`, `truncated_gzip`, `corrupt_gzip`).

Choices a user may want to know:
- Timestamps are seconds UTC; 2023 milliseconds are floored. A timestamp that is negative or
  falls outside 1990..2100 after conversion (e.g. seconds in a milliseconds field) is rejected.
- Ids must be non-empty; JSON integers are accepted as ids (as text).
- Every interaction has a `position` that grows with its place in the file (records.py): the
  tie-breaker of equal timestamps in a user's order.
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

from typing import Iterator

import pyarrow as pa

from eain_dist.data.readers.delimited import DIALECTS, DelimitedInteractions, DelimitedMeta
from eain_dist.data.readers.detect import FORMATS, checked_format, detect_format
from eain_dist.data.readers.json_records import META_FIELDS, REVIEW_FIELDS, JsonInteractions, JsonMeta
from eain_dist.data.readers.lines import Chunk, Lines, OneChunk
from eain_dist.data.readers.records import INTERACTION_SCHEMA, META_SCHEMA, Spec
from eain_dist.data.readers.rejects import RejectLog, reject_message

__all__ = ["FORMATS", "INTERACTION_SCHEMA", "META_SCHEMA", "Chunk", "RejectLog", "checked_format", "detect_format",
           "read_chunk", "read_interactions", "read_item_meta", "reject_message"]

CHUNK_BYTES = 64 << 20


def read_interactions(path: str, fmt: str, fs, log: RejectLog, *, chunk_bytes: int = CHUNK_BYTES,
                      start: int = 0, end: int | None = None) -> Iterator[pa.Table]:
    """(user, item, timestamp seconds, position) tables in INTERACTION_SCHEMA, one per chunk of
    the file, or of the lines that start in its byte range [start, end) (then numbered from 1
    at `start`: see RejectLog.shift_lines).

    `fmt` is one of FORMATS, or "auto" to detect it. An empty file yields one empty table.
    """
    fmt = checked_format(path, fmt, fs)
    return _read(Lines(path, fs, _positive(chunk_bytes), start, end), log, _spec(fmt, meta=False))


def read_item_meta(path: str, fmt: str, fs, log: RejectLog, *, chunk_bytes: int = CHUNK_BYTES,
                   start: int = 0, end: int | None = None) -> Iterator[pa.Table]:
    """(item, category, store, price) tables in META_SCHEMA, one per chunk of the file.

    For ratings_csv / interactions_tsv the file holds `item<sep>category` rows.
    """
    fmt = checked_format(path, fmt, fs)
    return _read(Lines(path, fs, _positive(chunk_bytes), start, end), log, _spec(fmt, meta=True))


def read_chunk(path: str, fmt: str, chunk: Chunk, log: RejectLog, *, meta: bool, first: bool) -> pa.Table:
    """One chunk of a file inflated elsewhere (`Lines` of a large gzip file, parsed by many
    tasks): interactions, or item metadata when `meta`. Line numbers are the chunk's own."""
    spec = _spec(fmt, meta)
    return pa.concat_tables([spec.schema.empty_table(), *spec.read(path, OneChunk(path, chunk, first), log)])


def _spec(fmt: str, meta: bool) -> Spec:
    if meta:
        return DelimitedMeta(fmt) if fmt in DIALECTS else JsonMeta(META_FIELDS[fmt])
    return DelimitedInteractions(fmt) if fmt in DIALECTS else JsonInteractions(REVIEW_FIELDS[fmt])


def _positive(chunk_bytes: int) -> int:
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return chunk_bytes


def _read(lines: Lines, log: RejectLog, spec: Spec) -> Iterator[pa.Table]:
    yielded = False
    for table in spec.read(lines.path, lines, log):
        if table.num_rows:
            yielded = True
            yield table
    log.read_lines(lines.path, lines.lines_read)
    if not yielded:  # callers always see the schema, even of an empty or all-bad file
        yield spec.schema.empty_table()
