"""One worker of a run: the model with its sharded tables and optimizers, its batches, a step.

Kept apart from Ray so that tests can drive them from plain torch.distributed processes; the
Ray Train loop (loop.py) strings them together, and evaluation.py evaluates with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from eain_dist.config import Config
from eain_dist.data.loader import empty_batch, to_device, to_tensors
from eain_dist.distributed.collectives import any_rank
from eain_dist.distributed.row_optimizers import RowWiseAdagrad, RowWiseAdam
from eain_dist.distributed.sharded_embedding import RowShard, ShardedEmbeddingCollection
from eain_dist.model.loss import ctr_loss
from eain_dist.model.registry import build_model_with_embeddings, model_tables


@dataclass
class Worker:
    """The model as one rank holds it: sharded tables, DDP over the dense part, optimizers."""

    model: nn.Module  # unwrapped: its `embeddings` is the sharded collection
    ddp: nn.Module
    collection: ShardedEmbeddingCollection
    dense_optimizer: torch.optim.Optimizer
    config: Config
    max_history: int
    device: torch.device


def build_worker(config: Config, meta: dict, device: torch.device) -> Worker:
    torch.manual_seed(config.train.seed)  # dense init identical on every rank (DDP also broadcasts)
    tables = model_tables(config.model, meta)
    sharded = {t.name for t in tables if t.name in config.train.sharded_tables}
    # The tables' all-to-alls get a process group of their own, so that they never interleave
    # with DDP's gradient all-reduces in the backward pass.
    collection = ShardedEmbeddingCollection(tables, sharded=sharded, optimizer=_row_optimizer(config),
                                            process_group=dist.new_group(), seed=config.train.seed, device=device)
    model = build_model_with_embeddings(config.model, meta, collection).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    dense_optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    return Worker(model, ddp, collection, dense_optimizer, config, meta["max_history"], device)


def set_learning_rates(worker: Worker, scale: float) -> None:
    """Dense and row-wise learning rates at `scale` times the configured ones (train.lr_decay).

    The row-wise optimizers' lazy L2 shrinks a row for its idle steps at the rate in force when
    the row is next updated: a close approximation while the rate changes only between epochs.
    """
    for group in worker.dense_optimizer.param_groups:
        group["lr"] = worker.config.train.lr * scale
    worker.collection.optimizer.lr = worker.config.train.embedding_lr * scale


def _row_optimizer(config: Config):
    optimizer = RowWiseAdam if config.train.embedding_optimizer == "adam" else RowWiseAdagrad
    return optimizer(lr=config.train.embedding_lr, weight_decay=config.model.embedding_l2)


def placement_plan(worker: Worker) -> list[str]:
    """Rows and bytes per rank of every table: what rank 0 prints before training."""
    world = dist.get_world_size()
    lines = []
    for table in worker.collection.table_configs:
        row_bytes = table.embedding_dim * 4
        if table.name in worker.collection.shards:
            rows = [RowShard.rows_on(r, world, table.num_embeddings) for r in range(world)]
            placement = "sharded row-wise (row r on rank r % W)"
        else:
            rows = [table.num_embeddings] * world
            placement = "replicated (DDP)"
        per_rank = ", ".join(f"rank {r}: {n:,} rows / {n * row_bytes / 2**20:,.1f} MiB" for r, n in enumerate(rows))
        lines.append(f"table {table.name} ({table.num_embeddings:,} x {table.embedding_dim}) {placement}: {per_rank}")
    return lines


def synchronized_batches(batches: Iterable[pa.Table], worker: Worker) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batches, then empty ones until every rank has run out (collectives stay matched)."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if not any_rank(batch is not None, worker.device):
            return
        tensors = to_tensors(batch, worker.max_history) if batch is not None else empty_batch(worker.max_history)
        yield to_device(tensors, worker.device)


def train_step(worker: Worker, batch: dict[str, torch.Tensor]) -> float:
    """One step on every rank; returns this rank's mean BCE (nan for an empty batch)."""
    worker.ddp.train()
    out = worker.ddp(batch)
    model = worker.config.model
    loss, bce = ctr_loss(out.logits, batch["label"], worker.model, l2=model.l2, embedding_l2=model.embedding_l2)
    worker.dense_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    worker.dense_optimizer.step()
    # DDP averages dense gradients over ranks; sharded rows get the sum of every rank's
    # gradient, so the same 1/W keeps both on the gradient of the global mean loss.
    worker.collection.step(grad_scale=1.0 / dist.get_world_size())
    return float(bce.detach()) if len(batch["label"]) else float("nan")
