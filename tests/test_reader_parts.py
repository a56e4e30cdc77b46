"""Input positions and byte-range parts: a file read as many parts gives exactly what it gives
read whole (records, their order, rejects with the same line numbers)."""

from __future__ import annotations

import gzip
import json
import random

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from eain_dist.data.readers import RejectLog, read_interactions
from eain_dist.data.readers.parts import layout, split

FS = fsspec.filesystem("file")


def damaged_reviews(path, n=400, seed=5) -> None:
    """2023-format reviews with malformed, blank, doubled and bad-timestamp lines here and there."""
    rng = random.Random(seed)
    damage = [lambda s: s[: rng.randrange(len(s))], lambda s: "", lambda s: s + " " + s,
              lambda s: s.replace('"timestamp": 1', '"timestamp": -1'), lambda s: s + " x"]
    lines = [json.dumps({"user_id": f"U{i % 37}", "parent_asin": f"I{i}", "timestamp": 1_600_000_000_000 + i,
                         "text": "x" * rng.randrange(0, 200)}) for i in range(n)]
    path.write_text("\n".join(rng.choice(damage)(line) if rng.random() < 0.1 else line for line in lines) + "\n")


def read(path, log, **kwargs) -> pa.Table:
    return pa.concat_tables(read_interactions(str(path), "amazon2023", FS, log, **kwargs))


def rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(table[c].to_pylist() for c in ("user", "item", "timestamp"))))


def test_positions_grow_with_the_records_place_in_the_file(tmp_path):
    path = tmp_path / "r.jsonl"
    damaged_reviews(path)
    for chunk_bytes in (64 << 20, 1, 700):  # fast path, slow path line by line, a mix of both
        table = read(path, RejectLog(), chunk_bytes=chunk_bytes)
        items = [int(item[1:]) for item in table["item"].to_pylist() if item.startswith("I")]
        assert items == sorted(items)  # the file's order
        assert (np.diff(table["position"].to_numpy()) > 0).all()


@pytest.mark.parametrize("split_bytes", [97, 1_000, 5_000, 1 << 30])
@pytest.mark.parametrize("chunk_bytes", [64 << 20, 300])
def test_byte_range_parts_read_every_line_exactly_once(tmp_path, split_bytes, chunk_bytes):
    path = tmp_path / "r.jsonl"
    damaged_reviews(path)
    whole_log = RejectLog()
    whole = read(path, whole_log, chunk_bytes=chunk_bytes)
    file = layout(str(path), FS, "amazon2023")
    parts = split(str(path), 0, "amazon2023", file, split_bytes)
    assert len(parts) == -(-file.size // split_bytes)
    merged, tables, lines_before = RejectLog(), [], 0
    for part in parts:
        log = RejectLog()
        tables.append(read(path, log, chunk_bytes=chunk_bytes, start=part.start, end=part.end))
        log.shift_lines(str(path), lines_before)  # what the pipeline does, part by part in order
        lines_before += log.lines.get(str(path), 0)
        merged.merge(log)
    table = pa.concat_tables(tables)
    assert rows(table) == rows(whole)
    assert (np.diff(table["position"].to_numpy()) > 0).all()
    assert merged.total_records() == whole_log.total_records()
    assert merged.counts == whole_log.counts
    assert sorted((s["line"], s["reason"]) for s in merged.samples) == \
        sorted((s["line"], s["reason"]) for s in whole_log.samples)


def test_only_the_first_part_of_a_tsv_may_hold_its_header(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("user_id\titem_id\ttime\n" + "".join(f"u{i}\ti{i}\t{1_400_000_000 + i}\n" for i in range(50))
                    + "u50\ti50\tnot-a-time\n" + "".join(f"u{i}\ti{i}\t{1_400_000_000 + i}\n" for i in range(51, 60)))
    start = path.read_bytes().index(b"u50\t")  # a part that begins with a line that looks like a header
    log = RejectLog()
    first = pa.concat_tables(read_interactions(str(path), "interactions_tsv", FS, log, end=start))
    second = pa.concat_tables(read_interactions(str(path), "interactions_tsv", FS, log, start=start))
    assert first.num_rows == 50 and second.num_rows == 9
    assert [(s["line"], s["reason"]) for s in log.samples] == [(1, "bad_timestamp")]  # rejected, not skipped


def test_gzip_and_pretty_printed_files_are_one_part(tmp_path):
    plain, packed, pretty = tmp_path / "r.jsonl", tmp_path / "r.jsonl.gz", tmp_path / "p.json"
    damaged_reviews(plain, n=2000)
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    pretty.write_text(json.dumps({"reviewerID": "U", "asin": "I", "unixReviewTime": 1_400_000_000}, indent=2) * 200)
    for path, fmt, parts in ((plain, "amazon2023", 10), (packed, "amazon2023", 1), (pretty, "amazon2014", 1)):
        file = layout(str(path), FS, fmt)
        assert len(split(str(path), 0, fmt, file, -(-file.size // 10))) == parts
    estimate = layout(str(packed), FS, "amazon2023").estimated_records
    assert 1000 < estimate < 4000  # 2,000 lines
