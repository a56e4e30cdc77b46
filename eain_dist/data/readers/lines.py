"""Files as chunks of whole lines: gzip detected by its magic bytes and inflated as a stream (a cut
or corrupt stream keeps what came before the damage), or a byte range of an uncompressed file.

Every chunk knows its first line's number and its byte offset in the (decompressed) file: the
offset orders records by their place in the input (see `readers.positions`).
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

from eain_dist.data.errors import InputError
from eain_dist.data.readers.rejects import RejectLog

READ_BYTES = 1 << 20  # raw bytes per read; gzip inflates them 3-10x
SNIFF_BYTES = 256 << 10
SALVAGE_STEP = 512  # compressed bytes per step when recovering data before corrupt gzip
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Chunk:
    first_line: int  # 1-based number of the chunk's first line in the file (or the file's part)
    data: bytes | memoryview
    complete: bool  # ends with a newline; False only for a file's unterminated last line
    newlines: int
    offset: int = 0  # byte offset of `data` in the decompressed file

    def lines(self) -> list[bytes]:
        lines = bytes(self.data).split(b"\n")
        if self.complete:
            lines.pop()  # the empty string after the final newline
        return lines

    def line_offsets(self) -> list[int]:
        """Byte offset in the file of each of `lines()`."""
        offsets, at = [], self.offset
        for line in self.lines():
            offsets.append(at)
            at += len(line) + 1
        return offsets

    def after(self, skipped_lines: int, end: int) -> Chunk:
        """The chunk without its first `skipped_lines` lines, which end at byte `end` of it."""
        newlines = self.newlines - skipped_lines if self.complete else 0  # an unterminated chunk is one line
        return Chunk(self.first_line + skipped_lines, self.data[end:], self.complete, newlines, self.offset + end)


class Lines:
    """A file, or the byte range [start, end) of an uncompressed one, as chunks of whole lines.

    A range holds the lines that *start* inside it, so consecutive ranges read every line once.
    Iterating yields `Chunk`s. When a gzip stream ends early (a cut download) or holds corrupt
    data, reading stops there: `cut` then says why and where, and the partial last line is
    kept in `cut_text` / `cut_line` instead of being yielded. `lines_read` counts the lines
    (newlines) yielded, for numbering the next range's lines.
    """

    def __init__(self, path: str, fs, chunk_bytes: int, start: int = 0, end: int | None = None):
        self.path, self.fs, self.chunk_bytes = path, fs, chunk_bytes
        self.start, self.end = start, end
        self.cut: tuple[str, str] | None = None  # (reason, where the stream ended)
        self.cut_line = 1
        self.cut_text = b""
        self.lines_read = 0

    def __iter__(self) -> Iterator[Chunk]:
        next_line = 1
        blocks, first_offset = self._blocks()
        for chunk in line_chunks(blocks, self.chunk_bytes, first_offset, strip_bom=self.start == 0):
            if not chunk.complete and self.cut:
                self.cut_text = bytes(chunk.data)
                break
            next_line = chunk.first_line + chunk.newlines
            yield chunk
        self.cut_line = next_line
        self.lines_read = next_line - 1

    def report_cut(self, log: RejectLog, line: int, text: str | bytes) -> None:
        """The record the stream was cut in: one reject that says where the stream ended."""
        reason, where = self.cut
        log.seen(self.path, 1)
        log.reject(self.path, line, reason, text, detail=where)

    def _blocks(self) -> tuple[Iterator[bytes], int]:
        try:
            file = self.fs.open(self.path, "rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise InputError(f"{self.path}: cannot open ({type(exc).__name__})") from None
        if self.start or self.end is not None:
            skipped = _skip_to_line_start(file, self.start)
            return _closing(file, _range_reads(file, self.start + skipped, self.end)), self.start + skipped
        return _closing(file, self._whole(file)), 0

    def _whole(self, file) -> Iterator[bytes]:
        head = file.read(READ_BYTES)
        reads = itertools.chain([head], iter(lambda: file.read(READ_BYTES), b""))
        if head[:2] == GZIP_MAGIC:
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


class OneChunk:
    """A chunk inflated elsewhere (a large gzip file's, parsed by many tasks), read like a part of
    its file: only the file's first chunk may hold a header."""

    cut = None

    def __init__(self, path: str, chunk: Chunk, first: bool):
        self.path, self.chunk = path, chunk
        self.start = 0 if first else max(chunk.offset, 1)
        self.lines_read = 0  # its line numbers are the file's already

    def __iter__(self) -> Iterator[Chunk]:
        yield self.chunk


def _closing(file, blocks: Iterator[bytes]) -> Iterator[bytes]:
    with file:
        yield from blocks


def _skip_to_line_start(file, start: int) -> int:
    """Seek to the first line that starts at or after `start`; returns how far past `start` it is.
    The line running through byte start - 1 belongs to the range before."""
    if start == 0:
        return 0
    file.seek(start - 1)
    skipped = -1
    while True:
        block = file.read(READ_BYTES)
        if not block:
            return skipped
        newline = block.find(b"\n")
        if newline >= 0:
            skipped += newline + 1
            file.seek(start + skipped)
            return skipped
        skipped += len(block)


def _range_reads(file, at: int, end: int | None) -> Iterator[bytes]:
    """Raw reads from byte `at` up to `end`, then on to the end of the line running through it."""
    if end is not None and at >= end:
        return  # no line starts inside the range
    while end is None or at < end:
        block = file.read(READ_BYTES if end is None else min(READ_BYTES, end - at))
        if not block:
            return
        at += len(block)
        yield block
        if end is not None and at == end and block.endswith(b"\n"):
            return
    while True:  # the last line started inside the range: read it whole
        block = file.read(READ_BYTES)
        newline = block.find(b"\n")
        if newline >= 0 or not block:
            yield block[: newline + 1] if newline >= 0 else block
            return
        yield block


def _inflate_until_damage(inflater, data: bytes, step: int = SALVAGE_STEP) -> Iterator[bytes]:
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


def line_chunks(blocks: Iterable[bytes], chunk_bytes: int, offset: int = 0, *,
                strip_bom: bool = True) -> Iterator[Chunk]:
    """Whole lines, about `chunk_bytes` at a time; a final unterminated line comes last."""
    pending: list[bytes] = []
    size = 0
    line = 1
    for block in blocks:
        if strip_bom and line == 1 and not pending and block.startswith(UTF8_BOM):
            block = block[len(UTF8_BOM):]
            offset += len(UTF8_BOM)
        pending.append(block)
        size += len(block)
        if size >= chunk_bytes:
            buffer = b"".join(pending)
            start, line, chunks = _split_at_lines(buffer, chunk_bytes, line, offset, final=False)
            yield from chunks
            pending = [buffer[start:]]
            size = len(pending[0])
            offset += start
    buffer = b"".join(pending)
    start, line, chunks = _split_at_lines(buffer, chunk_bytes, line, offset, final=True)
    yield from chunks
    if start < len(buffer):
        yield Chunk(line, buffer[start:], complete=False, newlines=0, offset=offset + start)


def _split_at_lines(buffer: bytes, chunk_bytes: int, line: int, offset: int, *,
                    final: bool) -> tuple[int, int, list[Chunk]]:
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
        chunks.append(Chunk(line, view[start:end], complete=True, newlines=newlines, offset=offset + start))
        line += newlines
        start = end
    return start, line, chunks


def head(path: str, fs) -> tuple[bytes, bool]:
    """The first decompressed bytes of a file, and whether they are the whole file."""
    lines = Lines(path, fs, SNIFF_BYTES)
    data = bytearray()
    for chunk in lines:
        data += chunk.data
        if len(data) >= SNIFF_BYTES:
            return bytes(data), False
    return bytes(data + lines.cut_text), True


def is_gzip(path: str, fs) -> bool:
    with fs.open(path, "rb") as file:
        return file.read(2) == GZIP_MAGIC
