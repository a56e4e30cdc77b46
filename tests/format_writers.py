"""Write interactions and item metadata in each input format, for reader round trips.

Independent of the readers on purpose: plain json / csv modules, the field names of the real
releases, and the unit conversions done by hand.
"""

from __future__ import annotations

import csv
import gzip
import io
import json

import pyarrow as pa


def write_format(table_or_rows: pa.Table | list[dict], fmt: str, path: str, *, header: bool = True) -> None:
    """Interactions (`user`, `item`, `timestamp` in seconds) as a file of `fmt`; gzip when the
    path ends with .gz."""
    rows = table_or_rows.to_pylist() if isinstance(table_or_rows, pa.Table) else table_or_rows
    _write_text(path, _INTERACTION_WRITERS[fmt](rows, header))


def write_meta(rows: list[dict], fmt: str, path: str) -> None:
    """Item metadata (`item`, `category`, `store`, `price`) as a file of `fmt`."""
    _write_text(path, _META_WRITERS[fmt](rows))


def _write_text(path: str, text: str) -> None:
    data = text.encode("utf-8")
    with open(path, "wb") as file:
        file.write(gzip.compress(data, mtime=0) if path.endswith(".gz") else data)


def _json_lines(records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def _amazon2014(rows, _header) -> str:
    return _json_lines({"reviewerID": r["user"], "asin": r["item"], "reviewerName": "N", "helpful": [0, 0],
                        "reviewText": "ok", "overall": 4.0, "summary": "s", "unixReviewTime": r["timestamp"],
                        "reviewTime": "01 1, 2014"} for r in rows)


def _amazon2018(rows, _header) -> str:
    return _json_lines({"overall": 5.0, "verified": True, "reviewTime": "09 4, 2015", "reviewerID": r["user"],
                        "asin": r["item"], "style": {"Size:": " L"}, "reviewerName": "N", "reviewText": "ok",
                        "summary": "s", "unixReviewTime": r["timestamp"], "vote": "2"} for r in rows)


def _amazon2023(rows, _header) -> str:
    # Milliseconds, with a sub-second part the reader must floor away.
    return _json_lines({"rating": 5.0, "title": "t", "text": "x", "images": [], "asin": r["item"],
                        "parent_asin": r["item"], "user_id": r["user"], "timestamp": r["timestamp"] * 1000 + 999,
                        "helpful_vote": 0, "verified_purchase": True} for r in rows)


def _ratings_csv(rows, header) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(["user", "item", "rating", "timestamp"])
    writer.writerows([r["user"], r["item"], 5, r["timestamp"]] for r in rows)
    return out.getvalue()


def _interactions_tsv(rows, header) -> str:
    lines = ["user_id\titem_id\ttime"] if header else []
    lines += [f"{r['user']}\t{r['item']}\t{r['timestamp']}" for r in rows]
    return "\n".join(lines) + "\n"


_INTERACTION_WRITERS = {"amazon2014": _amazon2014, "amazon2018": _amazon2018, "amazon2023": _amazon2023,
                        "ratings_csv": _ratings_csv, "interactions_tsv": _interactions_tsv}


def _meta2014(rows) -> str:
    # The real 2014 metadata is Python literals (single quotes), one dict per line.
    return "".join(repr({"asin": r["item"], "title": "t", "price": r["price"], "brand": r["store"],
                         "categories": [["Root", "Other"], ["Root", r["category"]]]}) + "\n" for r in rows)


def _meta2018(rows) -> str:
    return _json_lines({"asin": r["item"], "category": ["Root", r["category"]], "main_cat": "Root",
                        "brand": r["store"], "price": "" if r["price"] is None else f"${r['price']:,.2f}"}
                       for r in rows)


def _meta2023(rows) -> str:
    return _json_lines({"main_category": "Root", "title": "t", "average_rating": 4.5, "price": r["price"],
                        "store": r["store"], "categories": ["Root", r["category"]], "details": {},
                        "parent_asin": r["item"]} for r in rows)


def _meta_csv(rows) -> str:
    return "item,category\n" + "".join(f"{r['item']},{r['category']}\n" for r in rows)


def _meta_tsv(rows) -> str:
    return "item_id\ti_category\n" + "".join(f"{r['item']}\t{r['category']}\n" for r in rows)


_META_WRITERS = {"amazon2014": _meta2014, "amazon2018": _meta2018, "amazon2023": _meta2023,
                 "ratings_csv": _meta_csv, "interactions_tsv": _meta_tsv}
