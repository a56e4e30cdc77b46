"""Field values: vectorised checks for the fast path, one record at a time for the slow one."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eain_dist.data.readers.rejects import Reject

MIN_SECONDS = 631_152_000  # 1990-01-01 UTC
MAX_SECONDS = 4_102_444_800  # 2100-01-01 UTC
_REPLACEMENT = "\ufffd"  # what undecodable bytes became
_PRICE = re.compile(r"^\s*\$?\s*(?P<v>[0-9][0-9,]*(?:\.[0-9]+)?)\s*$")


def blank(values):
    """True where a string is null or empty."""
    return pc.fill_null(pc.equal(pc.binary_length(values), 0), True)


def null_if_blank(values):
    return pc.if_else(blank(values), pa.scalar(None, pa.string()), values)


def id_value(value: Any, name: str) -> str:
    if isinstance(value, str) and value:
        if _REPLACEMENT in value:
            raise Reject("bad_encoding")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Reject(f"missing_field:{name}" if value is None or value == "" else f"bad_field:{name}")


def seconds(value: Any, name: str, units_per_second: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise Reject(f"missing_field:{name}")
    raw = _integer(value)
    if raw is None or raw < 0 or not MIN_SECONDS <= raw // units_per_second < MAX_SECONDS:
        raise Reject("bad_timestamp")
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


def most_specific(value: Any) -> str | None:
    """The last entry of a category path; of the last path when there are several (DIN)."""
    if isinstance(value, list) and value:
        last = value[-1]
        return most_specific(last) if isinstance(last, list) else text(last)
    return text(value)


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def price(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    match = _PRICE.match(value) if isinstance(value, str) else None
    return float(match.group("v").replace(",", "")) if match else None


def prices(values):
    """Vectorised `price` of a float64 or string column."""
    if pa.types.is_floating(values.type):
        return pc.if_else(pc.greater_equal(values, 0), values, pa.scalar(None, pa.float64()))
    digits = pc.struct_field(pc.extract_regex(values, _PRICE.pattern), "v")
    return pc.cast(pc.replace_substring(digits, ",", ""), pa.float64())


def last_values(lists) -> pa.Array:
    """The last value of every list; null for a null or empty list."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths) - 1  # where every list's last value sits among all values
    return lists.flatten().take(pa.array(ends, mask=lengths == 0))
