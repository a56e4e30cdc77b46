"""The prepared dataset's folder (DESIGN.md), local or s3://: the one place that writes it.

    meta.json  vocab/category.parquet  vocab/{item,user}.parquet/part-*.parquet
    {train,valid,test}/part-<partition>-<file>.parquet  rejects/samples.jsonl

Tasks write their own files (splits, vocabulary parts); the driver writes meta.json, the
category vocabulary and the reject samples. An instance pickles to the tasks.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from eain_dist.config import Config
from eain_dist.data.errors import InputError
from eain_dist.data.fs import filesystem_for
from eain_dist.data.sequences import SPLIT_NAMES

FOLDERS = (*SPLIT_NAMES, "vocab/item.parquet", "vocab/user.parquet")


class Output:
    PARTS = ("train", "valid", "test", "vocab", "rejects", "meta.json")

    def __init__(self, root: str, config: Config):
        self.root = root.rstrip("/")
        self.fs, self.path = filesystem_for(self.root, config.data.s3)

    def clear(self) -> None:
        """Remove a previous prepared dataset here; refuse to touch any other folder."""
        if not self.fs.exists(self.path):
            return
        entries = {e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.path, detail=False)}
        if entries and "meta.json" not in entries and not entries <= set(self.PARTS):
            raise InputError(f"data.output {self.root} exists and is not a prepared dataset; choose an empty folder")
        for name in entries & set(self.PARTS):
            self.fs.rm(f"{self.path}/{name}", recursive=True)

    def make_folders(self) -> None:
        for name in FOLDERS:
            self.fs.makedirs(f"{self.path}/{name}", exist_ok=True)

    def write_table(self, name: str, table: pa.Table) -> None:
        """One Parquet file: LZ4 with dictionary pages (as small as snappy's, written 7% faster
        here: the split files are most of prepare's writing), no min/max statistics for the
        history lists (nothing filters on them)."""
        lists = {field.name for field in table.schema if pa.types.is_list(field.type)}
        with self.fs.open(f"{self.path}/{name}", "wb") as handle:
            pq.write_table(table, handle, compression="lz4",
                           write_statistics=[c for c in table.column_names if c not in lists])

    def write_json(self, name: str, value: dict) -> None:
        self.fs.makedirs(self.path, exist_ok=True)
        with self.fs.open(f"{self.path}/{name}", "w") as handle:
            json.dump(value, handle, indent=2, default=str)

    def write_rejects(self, rejects: dict) -> None:
        if not rejects.get("samples"):
            return
        self.fs.makedirs(f"{self.path}/rejects", exist_ok=True)
        with self.fs.open(f"{self.path}/rejects/samples.jsonl", "w") as handle:
            for sample in rejects["samples"]:
                handle.write(json.dumps(sample) + "\n")
