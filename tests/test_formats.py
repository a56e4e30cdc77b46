"""Readers: real Amazon samples, generated files of every format, and every failure path."""

from __future__ import annotations

import csv
import gzip
import json
import pickle
import random
import re
import zlib
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from eain_dist.data.errors import InputError
from eain_dist.data.readers import (FORMATS, INTERACTION_SCHEMA, META_SCHEMA, RejectLog, detect_format,
                                    read_interactions, read_item_meta)
from format_writers import write_format, write_meta

SAMPLES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
FS = fsspec.filesystem("file")
SMALL_CHUNK = 256  # bytes: many chunks even for tiny files, so chunk boundaries are exercised


def sample(relative: str) -> str:
    path = SAMPLES / relative
    if not path.is_file():
        pytest.skip(f"real Amazon sample {relative} not found under {SAMPLES} (shared data absent)")
    return str(path)


def read_all(path: str, fmt: str, *, meta: bool = False,
             chunk_bytes: int = 64 << 20) -> tuple[pa.Table, RejectLog]:
    log = RejectLog()
    reader = read_item_meta if meta else read_interactions
    tables = list(reader(path, fmt, FS, log, chunk_bytes=chunk_bytes))
    table = pa.concat_tables(tables)
    assert table.schema == (META_SCHEMA if meta else INTERACTION_SCHEMA)
    return table, log


def triples(table: pa.Table) -> list[tuple]:
    return list(zip(*(table[name].to_pylist() for name in ("user", "item", "timestamp"))))


def reasons(log: RejectLog) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, reason), n in log.counts.items():
        out[reason] = out.get(reason, 0) + n
    return out


def rejected_lines(log: RejectLog) -> dict[int, str]:
    return {s["line"]: s["reason"] for s in log.samples}


# ---------------------------------------------------------------------------------------------
# Real samples


def test_grocery_interactions_tsv_equals_an_independent_parse():
    path = sample("grocery/interactions.tsv")
    with open(path, newline="") as file:
        rows = list(csv.reader(file, delimiter="\t"))
    expected = [(u, i, int(t)) for u, i, t in rows[1:]]
    table, log = read_all(path, "interactions_tsv")
    assert table.num_rows == 121_892 == len(expected)
    assert triples(table) == expected
    assert triples(table)[:2] == [("2177", "3", 965779200), ("4161", "18", 1068249600)]
    assert log.total_records() == 121_892 and log.total_rejects() == 0


def test_grocery_item_meta_tsv():
    path = sample("grocery/item_meta.tsv")
    with open(path, newline="") as file:
        rows = list(csv.reader(file, delimiter="\t"))[1:]
    table, log = read_all(path, "interactions_tsv", meta=True)
    assert table.num_rows == 8_713 == len(rows)
    assert table["item"].to_pylist() == [r[0] for r in rows]
    assert table["category"].to_pylist() == [r[1] for r in rows]
    assert table["store"].null_count == table.num_rows and table["price"].null_count == table.num_rows
    assert log.total_rejects() == 0


def test_musical_instruments_2014():
    path = sample("raw/musical_instruments_2014.json")
    expected = [(r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in map(json.loads, open(path))]
    table, log = read_all(path, "amazon2014")
    assert table.num_rows == 50
    assert triples(table) == expected
    assert log.total_rejects() == 0


def test_truncated_gzip_keeps_every_complete_record():
    path = sample("raw/electronics_2014_truncated.json.gz")
    raw = Path(path).read_bytes()
    recovered = zlib.decompressobj(wbits=31).decompress(raw)  # everything zlib can inflate
    complete = recovered.split(b"\n")[:-1]  # the last piece is the line the download was cut in
    expected = [(r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in map(json.loads, complete)]

    table, log = read_all(path, "amazon2014", chunk_bytes=SMALL_CHUNK * 64)

    assert table.num_rows == len(complete) == 290
    assert triples(table) == expected
    assert reasons(log) == {"truncated_gzip": 1}
    assert log.total_records() == len(complete) + 1
    (cut,) = log.samples
    assert cut["line"] == len(complete) + 1
    assert str(len(raw)) in cut["detail"]  # the compressed byte where the stream ends
    assert recovered.split(b"\n")[-1][:100].decode() in cut["text"]
    assert re.fullmatch(rf".*_truncated\.json\.gz line 291: truncated_gzip \(.*{len(raw)}.*\)",
                        log.messages()[0])


def test_pretty_printed_2018_is_read_as_concatenated_objects():
    path = sample("raw/fashion_2018_pretty_printed.json")
    text = Path(path).read_text()
    # Independently: every object ends with a line holding a lone closing brace.
    objects = [json.loads(part + "}") for part in re.split(r"(?m)^\}\s*$", text) if part.strip()]
    expected = [(r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in objects]

    for chunk_bytes in (64 << 20, 4096):
        table, log = read_all(path, "amazon2018", chunk_bytes=chunk_bytes)
        assert table.num_rows == 3_176 == len(expected)
        assert triples(table) == expected
        assert log.total_records() == 3_176 and log.total_rejects() == 0
        assert any("pretty-printed" in note for note in log.notes)


def test_ratings_beauty_csv_ignores_the_stray_column():
    path = sample("raw/ratings_beauty.csv")
    with open(path, newline="") as file:
        rows = list(csv.reader(file))[1:]
    expected = [(r[0], r[1], int(r[3])) for r in rows]
    table, log = read_all(path, "ratings_csv")
    assert table.num_rows == 29_999 == len(expected)
    assert triples(table) == expected
    # Rows whose stray column says "Delete" are complete interactions: kept.
    delete_rows = [i for i, r in enumerate(rows) if r[4] == "Delete"]
    assert delete_rows and triples(table.take(delete_rows)) == [expected[i] for i in delete_rows]
    assert log.total_rejects() == 0


def test_mixed_2023_reviews_milliseconds_become_seconds():
    path = sample("raw/mixed_2023_reviews.jsonl")
    records = [json.loads(line) for line in open(path)]
    table, log = read_all(path, "amazon2023", chunk_bytes=SMALL_CHUNK * 100)
    assert table.num_rows == 3_455
    assert triples(table) == [(r["user_id"], r["parent_asin"], r["timestamp"] // 1000) for r in records]
    assert log.total_rejects() == 0


def test_mixed_2023_meta():
    path = sample("raw/mixed_2023_meta.jsonl")
    records = [json.loads(line) for line in open(path)]
    table, log = read_all(path, "amazon2023", meta=True)
    assert table.num_rows == 3_228
    assert table["item"].to_pylist() == [r["parent_asin"] for r in records]
    assert table["category"].to_pylist() == [r["main_category"] or None for r in records]
    assert table["store"].to_pylist() == [r["store"] or None for r in records]
    assert table["price"].to_pylist() == [r["price"] for r in records]
    assert log.total_rejects() == 0


@pytest.mark.parametrize("relative, fmt", [
    ("grocery/interactions.tsv", "interactions_tsv"),
    ("grocery/item_meta.tsv", "interactions_tsv"),
    ("raw/musical_instruments_2014.json", "amazon2014"),
    ("raw/electronics_2014_truncated.json.gz", "amazon2014"),
    ("raw/fashion_2018_pretty_printed.json", "amazon2018"),
    ("raw/ratings_beauty.csv", "ratings_csv"),
    ("raw/mixed_2023_reviews.jsonl", "amazon2023"),
    ("raw/mixed_2023_meta.jsonl", "amazon2023"),
])
def test_detect_format_of_real_samples(relative, fmt):
    assert detect_format(sample(relative), FS) == fmt


# ---------------------------------------------------------------------------------------------
# Generated files of every format


INTERACTIONS = [{"user": f"U{u}", "item": f"I{(u * 7 + k) % 13}", "timestamp": 1_400_000_000 + 86_400 * (u + k)}
                for u in range(40) for k in range(u % 5 + 1)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_generated_interactions_round_trip(tmp_path, fmt, suffix):
    path = str(tmp_path / f"data.{fmt}{suffix}")
    write_format(INTERACTIONS, fmt, path)
    expected = [(r["user"], r["item"], r["timestamp"]) for r in INTERACTIONS]
    assert detect_format(path, FS) == fmt
    for chunk_bytes in (64 << 20, SMALL_CHUNK):
        table, log = read_all(path, fmt, chunk_bytes=chunk_bytes)
        assert triples(table) == expected
        assert log.total_records() == len(expected) and log.total_rejects() == 0


@pytest.mark.parametrize("fmt", ["ratings_csv", "interactions_tsv"])
def test_delimited_without_header(tmp_path, fmt):
    path = str(tmp_path / "data.txt")
    write_format(INTERACTIONS, fmt, path, header=False)
    table, _ = read_all(path, fmt)
    assert triples(table) == [(r["user"], r["item"], r["timestamp"]) for r in INTERACTIONS]


def test_generated_interactions_as_arrow_table(tmp_path):
    path = str(tmp_path / "data.jsonl.gz")
    write_format(pa.Table.from_pylist(INTERACTIONS), "amazon2023", path)
    table, _ = read_all(path, "auto")
    assert table.drop_columns(["position"]).to_pylist() == INTERACTIONS


META = [{"item": f"I{i}", "category": f"Leaf {i % 3}", "store": f"Store {i % 4}",
         "price": None if i % 5 == 0 else 1000.0 + i + 0.25} for i in range(30)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_generated_meta_round_trip(tmp_path, fmt):
    path = str(tmp_path / f"meta.{fmt}")
    write_meta(META, fmt, path)
    assert detect_format(path, FS) == fmt
    delimited = fmt in ("ratings_csv", "interactions_tsv")
    expected = [{**r, "store": None, "price": None} if delimited else r for r in META]
    for chunk_bytes in (64 << 20, SMALL_CHUNK):
        table, log = read_all(path, fmt, meta=True, chunk_bytes=chunk_bytes)
        assert table.to_pylist() == expected
        assert log.total_rejects() == 0


def test_2014_meta_category_is_dins_last_entry_of_last_path(tmp_path):
    path = tmp_path / "meta.json"
    paths = [["Electronics", "Audio"], ["Electronics", "Cables", "HDMI"]]
    path.write_text(repr({"asin": "A1", "categories": paths})
                    + "\n" + repr({"asin": "A2", "categories": [[]], "price": 3}) + "\n")
    table, _ = read_all(str(path), "amazon2014", meta=True)
    assert table.to_pylist() == [{"item": "A1", "category": "HDMI", "store": None, "price": None},
                                 {"item": "A2", "category": None, "store": None, "price": 3.0}]


def test_2018_meta_prices_and_main_category_fallback(tmp_path):
    records = [{"asin": "A", "category": [], "main_cat": "Books", "price": "$1,299.99"},
               {"asin": "B", "category": ["X", "Y"], "main_cat": "Books", "price": "$5.00 - $9.00"},
               {"asin": "C", "category": ["X"], "price": ".a-box-inner{background-color:#fff;}"},
               {"asin": "D", "category": ["X", ""], "main_cat": "", "price": " $7 "}]
    path = tmp_path / "meta.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    for chunk_bytes in (64 << 20, 1):
        table, _ = read_all(str(path), "amazon2018", meta=True, chunk_bytes=chunk_bytes)
        assert table["category"].to_pylist() == ["Books", "Y", "X", None]
        assert table["price"].to_pylist() == [1299.99, None, None, 7.0]


# ---------------------------------------------------------------------------------------------
# Failure paths


def jsonl_2023(records: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def review(user="U1", item="I1", ms=1_600_000_000_000):
    return {"user_id": user, "parent_asin": item, "timestamp": ms, "rating": 5.0}


@pytest.mark.parametrize("chunk_bytes", [64 << 20, SMALL_CHUNK])
def test_malformed_line_in_the_middle(tmp_path, chunk_bytes):
    lines = [review(user=f"U{i}") for i in range(20)]
    lines[11] = '{"user_id": "U11", "parent_asin": "I1", "timestamp": 16'  # cut mid-record
    path = tmp_path / "r.jsonl"
    path.write_text(jsonl_2023(lines))
    table, log = read_all(str(path), "amazon2023", chunk_bytes=chunk_bytes)
    assert table["user"].to_pylist() == [f"U{i}" for i in range(20) if i != 11]
    assert rejected_lines(log) == {12: "malformed_json"}
    assert log.total_records() == 20
    assert log.messages() == [f"{path} line 12: malformed_json"]


@pytest.mark.parametrize("chunk_bytes", [64 << 20, SMALL_CHUNK])
@pytest.mark.parametrize("blank_lines", [False, True])
def test_missing_fields_and_bad_timestamps_name_their_lines(tmp_path, chunk_bytes, blank_lines):
    bad = {3: ({"parent_asin": "I1", "timestamp": 1_600_000_000_000}, "missing_field:user_id"),
           5: (review(user=""), "missing_field:user_id"),
           7: (review(item=None), "missing_field:parent_asin"),
           9: ({"user_id": "U", "parent_asin": "I"}, "missing_field:timestamp"),
           11: (review(ms=-5), "bad_timestamp"),
           13: (review(ms=1_600_000_000), "bad_timestamp"),  # seconds where milliseconds belong
           15: (review(ms=5_000_000_000_000), "bad_timestamp"),  # year 2128
           17: (review(ms="soon"), "bad_timestamp"),
           19: (review(ms=1.6e12 + 0.5), "bad_timestamp"),
           21: (review(user=["U"]), "bad_field:user_id"),
           23: ("[1, 2]", "malformed_json")}
    lines = []
    for line in range(1, 26):
        record = bad.get(line, (review(user=f"U{line}"), None))[0]
        lines.append(record)
    text = jsonl_2023(lines)
    if blank_lines:  # blank lines keep their numbers but are no records
        text = text.replace("\n", "\n\n", 1)
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    table, log = read_all(str(path), "amazon2023", chunk_bytes=chunk_bytes)
    shift = 1 if blank_lines else 0
    expected_rejects = {line + (shift if line > 1 else 0): reason for line, (_, reason) in bad.items()}
    assert rejected_lines(log) == expected_rejects
    assert table["user"].to_pylist() == [f"U{line}" for line in range(1, 26) if line not in bad]
    assert log.total_records() == 25
    assert log.total_rejects() == len(bad)


@pytest.mark.parametrize("item_prefix", ["", "I"])  # all-digit item ids (as ISBN-like ASINs) or not
@pytest.mark.parametrize("separator", [": ", ":"])
def test_ids_that_are_not_json_strings_are_judged_as_by_the_record_path(tmp_path, separator, item_prefix):
    """Lines polars parses without complaint (it writes any JSON value as text) still reject a
    list, object, boolean or float id as bad_field and read an integer id as its digits."""
    bad = {4: (review(user=["U"]), "bad_field:user_id"), 6: (review(user={"id": 1}), "bad_field:user_id"),
           8: (review(item=True), "bad_field:parent_asin"), 10: (review(item=1.5), "bad_field:parent_asin")}
    records = [bad.get(line, (review(user=f"U{line}", item=f"{item_prefix}{line}"), None))[0] for line in range(1, 13)]
    records[1] = review(user=2, item=f"{item_prefix}2")  # an integer id: its digits, as in the record path
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r, separators=(",", separator)) + "\n" for r in records))
    table, log = read_all(str(path), "amazon2023")
    assert rejected_lines(log) == {line: reason for line, (_, reason) in bad.items()}
    assert triples(table) == [(f"U{line}" if line != 2 else "2", f"{item_prefix}{line}", 1_600_000_000)
                              for line in range(1, 13) if line not in bad]
    clean = tmp_path / "clean.jsonl"  # all ids strings: the polars path; the same rows either way
    clean.write_text("".join(json.dumps(review(user=f"U{i}", item=f"I{i % 7}", ms=1_600_000_000_000 + i),
                                        separators=(",", separator)) + "\n" for i in range(500)))
    table, log = read_all(str(clean), "amazon2023")
    assert triples(table) == [(f"U{i}", f"I{i % 7}", 1_600_000_000) for i in range(500)]
    positions = table["position"].to_pylist()
    assert positions == sorted(set(positions))  # the input order


def test_delimited_bad_rows(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating,timestamp\n"
                    "u1,i1,5,1400000000\n"
                    "u2,i2\n"  # too few columns
                    "u3,i3,4,1400000000,extra,columns\n"  # extra columns: ignored
                    "u4,,4,1400000000\n"
                    "u5,i5,4,14e8\n"
                    "u6,i6,4,\n"
                    '"u,7",i7,4,1400000000\n')
    for chunk_bytes in (64 << 20, 16):
        table, log = read_all(str(path), "ratings_csv", chunk_bytes=chunk_bytes)
        assert triples(table) == [("u1", "i1", 1400000000), ("u3", "i3", 1400000000), ("u,7", "i7", 1400000000)]
        assert rejected_lines(log) == {3: "bad_row", 5: "missing_field:item", 6: "bad_timestamp",
                                       7: "missing_field:timestamp"}
        assert log.total_records() == 7


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 5, 1])
def test_blank_lines_and_crlf_before_a_header(tmp_path, chunk_bytes):
    path = tmp_path / "r.tsv"
    path.write_bytes(b"\r\n\r\nuser_id\titem_id\ttime\r\n1\t2\t1400000000\r\n\r\n3\t4\tsoon\r\n5\t6\t1400000001")
    table, log = read_all(str(path), "interactions_tsv", chunk_bytes=chunk_bytes)
    assert triples(table) == [("1", "2", 1400000000), ("5", "6", 1400000001)]
    assert rejected_lines(log) == {6: "bad_timestamp"} and log.total_records() == 3


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 1])
def test_an_unterminated_quote_does_not_swallow_the_lines_after_it(tmp_path, chunk_bytes):
    path = tmp_path / "r.csv"
    path.write_text('u0,i0,5,1400000000\n"u1,i1,5,1400000001\nu2,i2,5,1400000002\n"u3,x",i3,5,1400000003\n')
    table, log = read_all(str(path), "ratings_csv", chunk_bytes=chunk_bytes)
    assert triples(table) == [("u0", "i0", 1400000000), ("u2", "i2", 1400000002), ("u3,x", "i3", 1400000003)]
    assert rejected_lines(log) == {2: "bad_row"} and log.total_records() == 4


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 1])
def test_two_records_on_one_line_are_two_records(tmp_path, chunk_bytes):
    one = json.dumps(review(user="U1"))
    path = tmp_path / "r.jsonl"
    path.write_text(f"{one} {one}\n{json.dumps(review(user='U2'))}\n")
    table, log = read_all(str(path), "amazon2023", chunk_bytes=chunk_bytes)
    assert table["user"].to_pylist() == ["U1", "U1", "U2"] and log.total_records() == 3


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 1])
def test_a_record_spread_over_lines_is_two_malformed_lines(tmp_path, chunk_bytes):
    spread = json.dumps(review(user="U1")).replace(", ", ",\n", 1)
    path = tmp_path / "r.jsonl"
    path.write_text(f"{spread}\n{json.dumps(review(user='U2'))}\n")
    table, log = read_all(str(path), "amazon2023", chunk_bytes=chunk_bytes)
    assert table["user"].to_pylist() == ["U2"]
    assert rejected_lines(log) == {1: "malformed_json", 2: "malformed_json"}


def test_results_do_not_depend_on_chunk_size(tmp_path):
    """Random damage: the fast path (whole chunks) and the slow one (line by line) agree."""
    rng = random.Random(11)
    damage = [lambda s: s[: rng.randrange(len(s))], lambda s: "", lambda s: "  ", lambda s: s + " " + s,
              lambda s: s.replace('"timestamp": 1', '"timestamp": -1'), lambda s: s.replace("parent_asin", "p"),
              lambda s: s.replace('"U', '"'), lambda s: s.replace('"timestamp": ', '"timestamp": "'),
              lambda s: s + " x"]
    for _ in range(5):
        lines = [json.dumps(review(user=f"U{i}", ms=1_600_000_000_000 + i)) for i in range(200)]
        path = tmp_path / "r.jsonl"
        path.write_text("\n".join(rng.choice(damage)(line) if rng.random() < 0.15 else line for line in lines))
        outcomes = []
        for chunk_bytes in (64 << 20, 1, 300, 2000):
            table, log = read_all(str(path), "amazon2023", chunk_bytes=chunk_bytes)
            outcomes.append((triples(table), rejected_lines(log), log.total_records()))
        assert all(outcome == outcomes[1] for outcome in outcomes)


def test_bad_utf8_line_is_rejected_alone(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(jsonl_2023([review(user="U1")]).encode()
                     + b'{"user_id": "U\xff", "parent_asin": "I", "timestamp": 1600000000000}\n'
                     + b'{"user_id": "U3", "parent_asin": "I", "timestamp": 1600000000000, "text": "\xff"}\n')
    table, log = read_all(str(path), "amazon2023")
    assert table["user"].to_pylist() == ["U1", "U3"]  # a bad byte in an unused field is harmless
    assert rejected_lines(log) == {2: "bad_encoding"}


def test_corrupt_gzip_keeps_what_came_before(tmp_path):
    good = jsonl_2023([review(user=f"U{i}") for i in range(2000)]).encode()
    packed = bytearray(gzip.compress(good, mtime=0))
    packed[-6] ^= 0xFF  # the CRC / length trailer no longer matches
    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(bytes(packed))
    table, log = read_all(str(path), "amazon2023")
    assert table.num_rows == 2000  # the data itself inflated fine; only the check failed
    assert reasons(log) == {"corrupt_gzip": 1}


def test_concatenated_gzip_members_are_one_stream(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_2023([review(user="U1")]).encode())
                     + gzip.compress(jsonl_2023([review(user="U2")]).encode()))
    table, log = read_all(str(path), "amazon2023")
    assert table["user"].to_pylist() == ["U1", "U2"] and log.total_rejects() == 0


def test_last_line_without_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(jsonl_2023([review(user="U1"), review(user="U2")]).rstrip("\n"))
    for chunk_bytes in (64 << 20, 8):
        table, _ = read_all(str(path), "amazon2023", chunk_bytes=chunk_bytes)
        assert table["user"].to_pylist() == ["U1", "U2"]


def test_malformed_pretty_printed_object_is_rejected_and_reading_resumes(tmp_path):
    objects = [json.dumps({"reviewerID": f"U{i}", "asin": "A", "unixReviewTime": 1400000000, "vote": "1"},
                          indent=2) for i in range(4)]
    objects[1] = objects[1].replace('"asin": "A",', '"asin": "A"')  # missing comma
    path = tmp_path / "pretty.json"
    path.write_text("\n".join(objects) + "\n")
    table, log = read_all(str(path), "amazon2018")
    assert table["user"].to_pylist() == ["U0", "U2", "U3"]
    assert rejected_lines(log) == {7: "malformed_json"}  # each object spans 6 lines


def test_unknown_format():
    expected = r"x\.json: unknown format 'amazon2099' \(valid: auto, amazon2014.*interactions_tsv\)"
    with pytest.raises(InputError, match=expected):
        read_interactions("x.json", "amazon2099", FS, RejectLog())


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl"):
        list(read_interactions(str(tmp_path / "nope.jsonl"), "amazon2023", FS, RejectLog()))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    for fmt in ("amazon2023", "ratings_csv"):
        tables = list(read_interactions(str(path), fmt, FS, RejectLog()))
        assert [t.num_rows for t in tables] == [0] and tables[0].schema == INTERACTION_SCHEMA
    with pytest.raises(InputError, match=r"empty\.jsonl: empty file"):
        detect_format(str(path), FS)


def test_unknown_layout_is_an_input_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"name": "x", "value": 1}\n')
    with pytest.raises(InputError, match=r"other\.json: JSON of an unknown layout \(fields: name, value\)"):
        detect_format(str(path), FS)
    path.write_text("just some words\n")
    with pytest.raises(InputError, match="other.json: cannot detect the format"):
        detect_format(str(path), FS)


# ---------------------------------------------------------------------------------------------
# The reject log


def test_reject_log_merge_counts_and_caps_samples():
    a, b = RejectLog(max_samples=2), RejectLog(max_samples=2)
    for log, lines in ((a, range(1, 4)), (b, range(10, 13))):
        log.seen("f", 100)
        for line in lines:
            log.reject("f", line, "bad_timestamp", "x" * 1000)
    a.merge(b)
    assert a.total_records() == 200 and a.total_rejects() == 6
    assert [s["line"] for s in a.samples] == [1, 2]
    assert all(len(s["text"]) == 300 for s in a.samples)


def test_reject_log_json_round_trip_and_pickle():
    log = RejectLog(max_samples=3)
    log.seen("a.jsonl", 10)
    log.reject("a.jsonl", 4, "missing_field:user_id", b'{"x": 1}\n')
    log.reject("a.jsonl.gz", 9, "truncated_gzip", "", detail="gzip stream ends early at compressed byte 7")
    log.note("a.jsonl: a note")
    data = json.loads(json.dumps(log.to_json()))
    assert data["rejects"] == {"a.jsonl": {"missing_field:user_id": 1}, "a.jsonl.gz": {"truncated_gzip": 1}}
    assert RejectLog.from_json(data) == log
    assert pickle.loads(pickle.dumps(log)) == log
    assert log.messages() == ["a.jsonl line 4: missing_field:user_id",
                              "a.jsonl.gz line 9: truncated_gzip (gzip stream ends early at compressed byte 7)"]
