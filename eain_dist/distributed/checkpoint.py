"""Checkpoints of a sharded model: each rank writes its own rows, any world size reads them.

    <checkpoint>/dense.pt              rank 0: dense parameters + replicated tables, dense optimizer
    <checkpoint>/shards-rank=<r>.pt    rank r: its rows of each sharded table (global row ids),
                                       their weights and row-wise optimizer state
    <checkpoint>/state.json            rank 0: epoch, steps (also the row-wise optimizers' clock),
                                       history of metrics

Restoring reads every shard file and keeps the rows the new rank owns (row % W == rank), so a
checkpoint written by 2 workers restores on 1 or on 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from eain_dist.distributed.sharded_embedding import ShardedEmbeddingCollection

DENSE = "dense.pt"
STATE = "state.json"


def shard_file(rank: int) -> str:
    return f"shards-rank={rank}.pt"


def save(directory: str | Path, *, rank: int, model: torch.nn.Module, dense_optimizer: torch.optim.Optimizer,
         collection: ShardedEmbeddingCollection, state: dict) -> None:
    directory = Path(directory)
    torch.save(collection.shard_state(), directory / shard_file(rank))
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": dense_optimizer.state_dict()}, directory / DENSE)
        (directory / STATE).write_text(json.dumps(state))


def load(directory: str | Path, *, model: torch.nn.Module, dense_optimizer: torch.optim.Optimizer | None,
         collection: ShardedEmbeddingCollection) -> dict:
    directory = Path(directory)
    dense = torch.load(directory / DENSE, map_location="cpu", weights_only=True)
    model.load_state_dict(dense["model"])
    if dense_optimizer is not None:
        dense_optimizer.load_state_dict(dense["optimizer"])
    for path in sorted(directory.glob("shards-rank=*.pt")):
        for table, values in torch.load(path, map_location="cpu", weights_only=True).items():
            collection.load_shard_rows(table, values["rows"], values)
    state = json.loads((directory / STATE).read_text())
    collection.steps = state["steps"]  # the row-wise optimizers' clock: rows remember steps by number
    return state
