"""Splitting the input into parts, one read task each.

An uncompressed file larger than `split_bytes` is cut into byte ranges (each holds the lines
that start inside it, so a 10 GB file is read by many tasks at once); a gzip file, which can
only be inflated from its start, and a pretty-printed JSON file, whose records span lines, are
one part each.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from eain_dist.data.readers.json_records import opens_pretty_printed
from eain_dist.data.readers.lines import GZIP_MAGIC, UTF8_BOM, head

_ESTIMATE_BYTES = 1 << 20  # raw bytes read to estimate a file's records


@dataclass(frozen=True)
class FilePart:
    path: str
    file_index: int  # in the sorted, expanded source order: the first key of the input position
    fmt: str  # a member of FORMATS
    start: int = 0  # the byte range [start, end) of an uncompressed file; end None = to the end
    end: int | None = None
    number: int = 0  # among the parts of its file


@dataclass(frozen=True)
class FileLayout:
    size: int
    gzip: bool
    pretty_json: bool
    estimated_records: int
    estimated_bytes: int  # uncompressed


def layout(path: str, fs, fmt: str) -> FileLayout:
    """What splitting needs to know of a file, from its first bytes (inflated once: planning
    hundreds of gzip files inflates a megabyte of each)."""
    size = int(fs.size(path) or 0)
    with fs.open(path, "rb") as file:
        raw = file.read(_ESTIMATE_BYTES)
    gzip = raw[:2] == GZIP_MAGIC
    text = _inflated(raw) if gzip else raw
    pretty = fmt.startswith("amazon") and opens_pretty_printed(
        text.removeprefix(UTF8_BOM) if text is not None else head(path, fs)[0])
    return FileLayout(size, gzip, pretty, *_estimates(raw, text, size))


def _inflated(raw: bytes) -> bytes | None:
    """The text of a gzip file's first bytes; None where zlib refuses them (the readers say why)."""
    try:
        return zlib.decompressobj(wbits=31).decompress(raw)
    except zlib.error:
        return None


def _estimates(raw: bytes, text: bytes | None, size: int) -> tuple[int, int]:
    """(records, uncompressed bytes): the file's first megabyte's lines and bytes per raw byte,
    times its size (for sizing partitions and choosing how to read it)."""
    if not raw:
        return 0, 0
    if text is None:
        return 0, size
    return int(size * max(text.count(b"\n"), 1) / len(raw)), int(size * len(text) / len(raw))


def split(path: str, file_index: int, fmt: str, file: FileLayout, split_bytes: int) -> list[FilePart]:
    if file.gzip or file.pretty_json or file.size <= split_bytes:
        return [FilePart(path, file_index, fmt)]
    starts = list(range(0, file.size, split_bytes))
    return [FilePart(path, file_index, fmt, start, start + split_bytes if k < len(starts) - 1 else None, k)
            for k, start in enumerate(starts)]
