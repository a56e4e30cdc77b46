"""Checkpoints of a sharded model: each rank writes its own rows, any world size reads them.

    <checkpoint>/dense.pt              rank 0: dense parameters + replicated tables, dense optimizer
    <checkpoint>/shards-rank=<r>.pt    rank r: its rows of each sharded table (global row ids),
                                       their weights and row-wise optimizer state
    <checkpoint>/state.json            rank 0: epoch, steps (also the row-wise optimizers' clock),
                                       history of metrics

Restoring with the world size that wrote the checkpoint, rank r reads only dense.pt and its own
shard file (its rows are exactly those). With another world size every rank reads every shard
file and keeps the rows it now owns (row % W == rank): a checkpoint written by 2 workers
restores on 1 or on 4. Files are read through a pyarrow filesystem, so a checkpoint on S3 is
read in place, one file per rank, with nothing else downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.fs
import torch

from eain_dist.distributed.sharded_embedding import ShardedEmbeddingCollection

DENSE = "dense.pt"
STATE = "state.json"
SHARD_FILE = re.compile(r"shards-rank=(\d+)\.pt")


def shard_file(rank: int) -> str:
    return f"shards-rank={rank}.pt"


def save(directory: str | Path, *, rank: int, model: torch.nn.Module, dense_optimizer: torch.optim.Optimizer,
         collection: ShardedEmbeddingCollection, state: dict) -> None:
    directory = Path(directory)
    torch.save(collection.shard_state(), directory / shard_file(rank))
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": dense_optimizer.state_dict()}, directory / DENSE)
        (directory / STATE).write_text(json.dumps(state))


def load(location: str | Path, *, model: torch.nn.Module, dense_optimizer: torch.optim.Optimizer | None,
         collection: ShardedEmbeddingCollection, filesystem: pyarrow.fs.FileSystem | None = None) -> dict:
    """Restore this rank's part of the checkpoint at `location` (a local directory, or a path on
    `filesystem`, e.g. a Ray Checkpoint's `.filesystem` and `.path`); returns the saved state."""
    filesystem = filesystem or pyarrow.fs.LocalFileSystem()
    location = str(location)
    dense = _torch_load(filesystem, f"{location}/{DENSE}")
    model.load_state_dict(dense["model"])
    if dense_optimizer is not None:
        dense_optimizer.load_state_dict(dense["optimizer"])
    names = [info.base_name for info in filesystem.get_file_info(pyarrow.fs.FileSelector(location))]
    for name in shard_files_to_read(names, collection.rank, collection.world_size):
        for table, values in _torch_load(filesystem, f"{location}/{name}").items():
            collection.load_shard_rows(table, values["rows"], values)
    with filesystem.open_input_stream(f"{location}/{STATE}") as handle:
        state = json.loads(handle.read())
    collection.steps = state["steps"]  # the row-wise optimizers' clock: rows remember steps by number
    return state


def shard_files_to_read(names: list[str], rank: int, world_size: int) -> list[str]:
    """Only this rank's file when the checkpoint was written by `world_size` ranks, else all."""
    written_by = sorted((int(m.group(1)), n) for n in names if (m := SHARD_FILE.fullmatch(n)))
    if [r for r, _ in written_by] == list(range(world_size)):
        return [shard_file(rank)]
    return [n for _, n in written_by]


def _torch_load(filesystem: pyarrow.fs.FileSystem, path: str) -> dict:
    with filesystem.open_input_file(path) as handle:  # seekable, as torch.load needs
        return torch.load(handle, map_location="cpu", weights_only=True)
