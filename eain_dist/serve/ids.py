"""Raw ids <-> table indices through a prepared dataset's vocabularies (DESIGN.md).

    exact  : <data.output>/vocab/<table>.parquet (`raw`, `index` 1..n); index 0 is padding and
             out-of-vocabulary, so an unknown raw id becomes 0 (and is counted by the caller)
    hashed : index = 1 + stable_hash(raw) mod (rows - 1): every raw id has an index, and indices
             cannot be turned back into raw ids (they are reported as numbers)

A vocabulary whose size differs from the table in meta.json belongs to another dataset: error.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eain_dist.config import S3Config
from eain_dist.data import vocab
from eain_dist.data.errors import InputError
from eain_dist.data.fs import pyarrow_filesystem

# The tables `eain prepare` numbers through vocabularies; the others (hour, weekday, gap) are
# numbers already.
VOCAB_TABLES = ("user", "item", "category")


class Vocabulary:
    """One table's raw id <-> index mapping. Pickles small-ish: the lookup is built where it is used."""

    def __init__(self, table: str, rows: int, raw_by_index: pa.Array | None) -> None:
        self.table, self.rows = table, rows
        self.raw_by_index = raw_by_index  # exact: raw id of index i at position i (0: null); hashed: None
        self._lookup: pd.Index | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lookup": None}

    @property
    def exact(self) -> bool:
        return self.raw_by_index is not None

    def indices(self, raw: pa.Array) -> tuple[np.ndarray, int]:
        """(index of each raw id, how many were unknown or null and became 0)."""
        raw = pc.cast(raw, pa.string())
        if not self.exact:
            known = pc.is_valid(raw).to_numpy(zero_copy_only=False)
            hashed = vocab.hashed_index(pc.fill_null(raw, ""), self.rows)
            return np.where(known, hashed, 0), int((~known).sum())
        if self._lookup is None:  # once per process: a hash table of the vocabulary
            self._lookup = pd.Index(self.raw_by_index.slice(1).to_numpy(zero_copy_only=False))
        position = self._lookup.get_indexer(raw.to_numpy(zero_copy_only=False))
        return position + 1, int((position < 0).sum())  # -1 (unknown, or null) -> 0

    def raw_ids(self, index: np.ndarray) -> pa.Array:
        """The raw id of each index (null for 0); the indices themselves for hashed tables."""
        if not self.exact:
            return pa.array(index, pa.int64())
        return self.raw_by_index.take(pa.array(index))


def load_vocabularies(root: str, meta: dict, s3: S3Config, tables: Iterable[str]) -> dict[str, Vocabulary]:
    """The vocabularies of `tables` (those of VOCAB_TABLES that meta.json has) of a prepared dataset."""
    wanted = [t for t in dict.fromkeys(tables) if t in VOCAB_TABLES and t in meta["tables"]]
    if meta.get("vocab", "exact") == "hashed":
        return {t: Vocabulary(t, meta["tables"][t], None) for t in wanted}
    return {t: Vocabulary(t, meta["tables"][t], _raw_by_index(root, t, meta["tables"][t], s3)) for t in wanted}


def read_vocabulary(root: str, table: str, rows: int, s3: S3Config) -> pa.Table:
    """vocab/<table>.parquet of a prepared dataset, by index; it must number exactly the table's rows."""
    fs, path = pyarrow_filesystem(f"{root.rstrip('/')}/vocab/{table}.parquet", s3)
    try:
        ids = pq.read_table(path, filesystem=fs)
    except (OSError, ValueError) as exc:
        raise InputError(f"{root}/vocab/{table}.parquet cannot be read ({type(exc).__name__}): "
                         "is data.output a prepared dataset with exact vocabularies?") from None
    ids = ids.sort_by("index")
    if ids.num_rows + 1 != rows or not np.array_equal(ids["index"].to_numpy(), np.arange(1, rows)):
        raise InputError(f"{root}/vocab/{table}.parquet numbers {ids.num_rows:,} ids but meta.json's {table} table "
                         f"has {rows - 1:,} (plus padding): the vocabulary belongs to another dataset")
    return ids


def _raw_by_index(root: str, table: str, rows: int, s3: S3Config) -> pa.Array:
    ids = read_vocabulary(root, table, rows, s3)
    return pa.concat_arrays([pa.nulls(1, pa.string()), ids["raw"].combine_chunks().cast(pa.string())])
