"""Which format a file is in, from its first bytes (decompressed when gzip)."""

from __future__ import annotations

from eain_dist.data.errors import InputError
from eain_dist.data.readers.json_records import line_values, objects_in
from eain_dist.data.readers.lines import head

FORMATS = ("amazon2014", "amazon2018", "amazon2023", "ratings_csv", "interactions_tsv")
_SNIFF_RECORDS = 50


def detect_format(path: str, fs) -> str:
    """The format of a file, from its first bytes (decompressed when gzip)."""
    data, whole = head(path, fs)
    lines = data.split(b"\n")
    if not whole and len(lines) > 1:
        lines.pop()  # cut by the sniff size
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is None:
        raise InputError(f"{path}: empty file, cannot detect its format")
    if first.startswith(b"{"):
        return _detect_json(path, data, lines, pretty=first == b"{")
    return _detect_delimited(path, first.decode("utf-8", errors="replace"))


def checked_format(path: str, fmt: str, fs) -> str:
    if fmt == "auto":
        return detect_format(path, fs)
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format {fmt!r} (valid: auto, {', '.join(FORMATS)})")
    return fmt


def _detect_json(path: str, data: bytes, lines: list[bytes], *, pretty: bool) -> str:
    if pretty:
        text = data.decode("utf-8", errors="replace")
        records = [obj for _, obj in objects_in(text, 1, final=False)[0][:_SNIFF_RECORDS]]
    else:
        texts = [line for line in lines if line.strip()][:_SNIFF_RECORDS]
        records = [value for text in texts for value in line_values(text)]
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
