"""Input rows to the model's batch: which columns are needed, ids mapped, everything checked.

Two kinds of input (`--ids`, `auto` picks by the type of the `item` column):

    index : a prepared split, or rows shaped like one: `user`, `item`, ... are table indices,
            histories fixed-length lists of `data.max_history` indices with `hist_len`
    raw   : the ids as in the raw reviews (strings; numbers are read as their decimal string):
            `user`, `item`, `category` and the history lists are mapped through the run's
            vocabularies (unknown ids -> 0, counted); histories are lists of any length, most
            recent last, cut to the last `data.max_history` (`hist_len` follows from them);
            `hour`, `weekday`, `gap` are numbers as in the prepared data (context.py)

Needed columns: `user` and `item` (they name each row of the output), and every feature of the
run's model (`model_tables(config.model, meta)`: a model without a user table needs no user
features but still gets its output rows named), plus `hist_len` for index input with histories.
The prepared-data feature columns are not carried to the output; every other column is
(`label`, `request_id`, `timestamp`, a user's own keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eain_dist.config import Config
from eain_dist.data.errors import InputError
from eain_dist.data.loader import INT_COLUMNS, LIST_COLUMNS
from eain_dist.model.registry import model_tables
from eain_dist.serve.ids import VOCAB_TABLES, Vocabulary

ID_COLUMNS = ("user", "item")  # name each output row (raw ids)
SCORE_COLUMNS = ("score", "logit")
IDS_MODES = ("auto", "raw", "index")


@dataclass(frozen=True)
class InputPlan:
    """What an input file gives the model, decided once from its schema."""

    mode: str  # raw or index
    features: dict[str, str]  # feature the model reads -> its table
    table_rows: dict[str, int]
    max_history: int
    carried: tuple[str, ...]  # input columns copied to the output as they are

    @property
    def vocab_tables(self) -> set[str]:
        """Tables whose vocabulary this input needs (raw ids in, raw ids out)."""
        mapped = {t for t in self.features.values() if t in VOCAB_TABLES} if self.mode == "raw" else set()
        return mapped | set(ID_COLUMNS)


def plan_input(schema: pa.Schema, source: str, config: Config, meta: dict, ids: str = "auto") -> InputPlan:
    features = {name: table.name for table in model_tables(config.model, meta) for name in table.feature_names}
    mode = _mode(schema, ids)
    needed = [*ID_COLUMNS, *(f for f in features if f not in ID_COLUMNS)]
    if mode == "index" and any(f in LIST_COLUMNS for f in features):
        needed.append("hist_len")
    missing = [name for name in needed if name not in schema.names]
    if missing:
        raise InputError(f"{source}: column {missing[0]!r} is missing; the run's {config.model.name} model needs "
                         f"{', '.join(needed)} ({mode} ids)")
    for name in needed:
        _check_type(schema.field(name), mode == "raw" and features.get(name, name) in VOCAB_TABLES, source)
    dropped = set(meta["features"]) | {"hist_len", *SCORE_COLUMNS}
    carried = tuple(name for name in schema.names if name not in dropped)
    return InputPlan(mode=mode, features=features, table_rows=dict(meta["tables"]),
                     max_history=meta["max_history"], carried=carried)


def _mode(schema: pa.Schema, ids: str) -> str:
    if ids not in IDS_MODES:
        raise InputError(f"--ids must be one of {', '.join(IDS_MODES)}, got {ids!r}")
    if ids != "auto" or "item" not in schema.names:
        return "raw" if ids == "auto" else ids
    return "raw" if _is_text(schema.field("item").type) else "index"


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _check_type(field: pa.Field, raw_ids: bool, source: str) -> None:
    """Integers (table indices, or the context numbers), or strings where raw ids are mapped."""
    kind = field.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if field.name in LIST_COLUMNS and not is_list:
        raise InputError(f"{source}: column {field.name!r} must be a list (the history, most recent last), got {kind}")
    value = kind.value_type if is_list else kind
    if not (pa.types.is_integer(value) or (raw_ids and _is_text(value))):
        raise InputError(f"{source}: column {field.name!r} has type {kind}; it needs "
                         f"{'raw ids (strings or integers)' if raw_ids else 'integers'}")


def model_input(batch: pa.Table, plan: InputPlan, vocabularies: dict[str, Vocabulary]) -> tuple[pa.Table, dict]:
    """The batch as the columns `loader.to_tensors` reads, and per-column unknown-id counts.

    Columns the model does not read are zeros (`to_tensors` converts every column of the data
    contract). Any index outside its table is an error naming the column and the value.
    """
    rows, length = batch.num_rows, plan.max_history
    columns: dict[str, pa.Array] = {"label": pa.array(np.zeros(rows, np.float32))}  # unused by the model
    columns.update({name: pa.array(np.zeros(rows, np.int64)) for name in INT_COLUMNS})
    columns.update({name: fixed_lists(np.zeros((rows, length), np.int64)) for name in LIST_COLUMNS})
    unknown: dict[str, int] = {}
    lengths: dict[str, np.ndarray] = {}
    for name, table in plan.features.items():
        raw = plan.mode == "raw" and table in VOCAB_TABLES
        if name in LIST_COLUMNS:
            vocabulary = vocabularies.get(table) if raw else None
            matrix, lengths[name], unknown[name] = _history(name, batch[name], plan, vocabulary)
            _check_range(name, table, matrix, plan)
            columns[name] = fixed_lists(matrix)
        else:
            values, unknown[name] = (vocabularies[table].indices(_flat(batch[name])) if raw
                                     else (_integers(batch[name]), 0))
            _check_range(name, table, values, plan)
            columns[name] = pa.array(values, pa.int64())
    if lengths:
        hist_len = _history_lengths(lengths) if plan.mode == "raw" else _hist_len(batch, plan.max_history)
        columns["hist_len"] = pa.array(hist_len)
    return pa.table(columns), {name: n for name, n in unknown.items() if n}


def _history_lengths(lengths: dict[str, np.ndarray]) -> np.ndarray:
    """hist_len of raw input: the lists' lengths, which must agree between the history columns."""
    (first, values), *others = lengths.items()
    for name, other in others:
        if not np.array_equal(values, other):
            row = int(np.flatnonzero(values != other)[0])
            raise InputError(f"columns {first!r} and {name!r} differ in length ({values[row]} and {other[row]}) "
                             "in one row: they are one history (item and its category, position by position)")
    return values


def _history(name: str, column, plan: InputPlan, vocabulary: Vocabulary | None) -> tuple[np.ndarray, np.ndarray, int]:
    """A history column -> (rows x L indices, left-padded; real lengths; unknown ids)."""
    lists = pc.fill_null(_flat(column), pa.scalar([], column.type)) if column.null_count else _flat(column)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists)
    if vocabulary is not None:
        flat, unknown = vocabulary.indices(values)
    else:
        flat, unknown = _integers(values), 0
        if plan.mode == "index" and len(lengths) and not (lengths == plan.max_history).all():
            raise InputError(f"column {name!r}: lists of "
                             f"{int(lengths[lengths != plan.max_history][0])} ids, but the run's histories have "
                             f"data.max_history={plan.max_history}: rows from another prepared dataset?")
    return left_padded(flat, lengths, plan.max_history), np.minimum(lengths, plan.max_history), unknown


def left_padded(flat: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Variable-length lists (concatenated in `flat`) -> rows x width, the last `width` of each, right-aligned."""
    matrix = np.zeros((len(lengths), width), np.int64)
    ends = np.cumsum(lengths)
    kept = np.minimum(lengths, width)
    row = np.repeat(np.arange(len(lengths)), kept)
    offset_in_row = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    source = np.repeat(ends - kept, kept) + offset_in_row
    matrix[row, width - np.repeat(kept, kept) + offset_in_row] = flat[source]
    return matrix


def _hist_len(batch: pa.Table, length: int) -> np.ndarray:
    hist_len = _integers(batch["hist_len"])
    if len(hist_len) and (hist_len.min() < 0 or hist_len.max() > length):
        raise InputError(f"column 'hist_len' holds {int(hist_len.max())}, outside 0..{length} (data.max_history)")
    return hist_len


def _check_range(name: str, table: str, values: np.ndarray, plan: InputPlan) -> None:
    rows = plan.table_rows[table]
    bad = (values < 0) | (values >= rows)
    if bad.any():
        raise InputError(f"column {name!r} holds {int(values[bad].flat[0])}, not a row of the run's {table} table "
                         f"(0..{rows - 1}): indices from another prepared dataset? (raw ids need --ids raw)")


def _flat(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _integers(column) -> np.ndarray:
    values = _flat(column)
    if values.null_count:
        raise InputError(f"an index column holds {values.null_count} null(s); index input needs every value")
    return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def fixed_lists(matrix: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.int64()), matrix.shape[1])


def row_ids(batch: pa.Table, plan: InputPlan, vocabularies: dict[str, Vocabulary]) -> dict[str, pa.Array]:
    """`user` and `item` of the output: raw ids (as the input had them, or looked up for indices)."""
    if plan.mode == "raw":
        return {name: _flat(batch[name]) for name in ID_COLUMNS}
    ids = {}
    for name in ID_COLUMNS:
        index = _integers(batch[name])
        _check_range(name, name, index, plan)
        ids[name] = vocabularies[name].raw_ids(index)
    return ids
