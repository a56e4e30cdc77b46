"""Row-wise sharded embedding tables and their row-wise optimizers.

Global row r of a sharded table lives on rank r % W, at local row r // W. One lookup, for the
unique ids U of a table on this rank:

    owner = ids % W                     sort ids by owner, count per owner
    all_to_all_single(counts)           every rank learns how many ids it must serve
    all_to_all_single(local rows)       ... and which
    served = shard[requested]           R x D, a fresh leaf: the only rows this step touches
    all_to_all_single(served)           autograd-aware: backward routes gradients home
                                        -> U x D, back in the caller's order

After `loss.backward()`, `served.grad` holds exactly the gradients of the requested rows (a row
asked for by several ranks appears once per request, and the optimizer sums them). The
row-wise optimizer then updates those rows in place: no dense gradient and no dense optimizer
update of a whole table ever exists. Sharded tables are plain tensors, not parameters, so DDP
never sees (or all-reduces) them; replicated tables stay `nn.Embedding`s under DDP.

Example (2 ranks, item table sharded):

    tables = [TableConfig(name="item", num_embeddings=10, embedding_dim=4, feature_names=("item",))]
    collection = ShardedEmbeddingCollection(tables, sharded={"item"}, optimizer=RowWiseAdagrad(lr=0.05))
    out = collection({"item": torch.tensor([3, 3, 8])})   # rank 0 serves 8, rank 1 serves 3
    loss(out).backward(); collection.step()                # update the touched rows only

Every rank must call the collection (and `step`) the same number of times, even with an empty
batch: the all-to-alls are collectives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

from eain_dist.model.embedding import EmbeddingCollection, TableConfig


@dataclass
class RowShard:
    """This rank's rows of one table: global row r = rank + world_size * local row."""

    config: TableConfig
    rank: int
    world_size: int
    weight: Tensor  # local_rows x D
    state: dict[str, Tensor]
    pending: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (local rows, served leaf)

    @staticmethod
    def rows_on(rank: int, world_size: int, num_embeddings: int) -> int:
        return (num_embeddings - rank + world_size - 1) // world_size

    def global_rows(self) -> Tensor:
        return self.rank + self.world_size * torch.arange(self.weight.shape[0])


class ShardedEmbeddingCollection(EmbeddingCollection):
    """`EmbeddingCollection` whose tables named in `sharded` are row-wise sharded over ranks."""

    def __init__(self, tables: Sequence[TableConfig], *, sharded: set[str], optimizer, init_std: float = 0.01,
                 process_group=None, seed: int = 0, device: torch.device | None = None) -> None:
        nn.Module.__init__(self)
        self.table_configs = list(tables)
        self.group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.optimizer = optimizer
        self.steps = 0  # optimizer steps taken: the row-wise optimizers' clock (restored with checkpoints)
        self.device = device or torch.device("cpu")
        replicated = [c for c in tables if c.name not in sharded]
        self.tables = nn.ModuleDict({c.name: nn.Embedding(c.num_embeddings, c.embedding_dim) for c in replicated})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=init_std)
        self.shards = {c.name: self._new_shard(c, init_std, seed) for c in tables if c.name in sharded}

    def _new_shard(self, config: TableConfig, init_std: float, seed: int) -> RowShard:
        rows = RowShard.rows_on(self.rank, self.world_size, config.num_embeddings)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + self.rank)
        weight = torch.randn(rows, config.embedding_dim, generator=generator).mul_(init_std).to(self.device)
        state = {k: v.to(self.device) for k, v in self.optimizer.state_for(rows, config.embedding_dim).items()}
        return RowShard(config, self.rank, self.world_size, weight, state)

    def lookup_rows(self, table: str, unique_ids: Tensor) -> Tensor:
        if table not in self.shards:
            return super().lookup_rows(table, unique_ids)
        return self._sharded_lookup(self.shards[table], unique_ids)

    def _sharded_lookup(self, shard: RowShard, ids: Tensor) -> Tensor:
        owner = ids % self.world_size
        order = torch.argsort(owner, stable=True)
        send_counts = torch.bincount(owner, minlength=self.world_size)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()
        requested = torch.empty(sum(recv_splits), dtype=ids.dtype, device=ids.device)
        dist.all_to_all_single(requested, (ids[order] // self.world_size).contiguous(), recv_splits, send_splits,
                               group=self.group)
        served = shard.weight[requested].detach().requires_grad_(torch.is_grad_enabled())
        if served.requires_grad:
            shard.pending.append((requested, served))
        rows = dist_fn.all_to_all_single(
            torch.empty(len(ids), shard.weight.shape[1], device=served.device, dtype=served.dtype),
            served, send_splits, recv_splits, group=self.group)
        return rows[torch.argsort(order)]  # U x D, in the caller's order

    @torch.no_grad()
    def step(self, grad_scale: float = 1.0) -> None:
        """Apply the row-wise optimizer to the rows served since the last step.

        `grad_scale` multiplies the summed gradients (1/W when each rank's loss is a local mean).
        """
        self.steps += 1
        for shard in self.shards.values():
            rows, grads = _sum_by_row(shard)
            if len(rows):
                self.optimizer.update(shard.weight, shard.state, rows, grads * grad_scale, step=self.steps)
            shard.pending.clear()

    def zero_grad_shards(self) -> None:
        for shard in self.shards.values():
            shard.pending.clear()

    def shard_bytes(self) -> dict[str, int]:
        return {name: s.weight.numel() * s.weight.element_size() for name, s in self.shards.items()}

    def shard_state(self) -> dict[str, dict[str, Tensor]]:
        """This rank's rows (global ids), weights and optimizer state, for checkpoints."""
        return {name: {"rows": s.global_rows(), "weight": s.weight.cpu(), **{k: v.cpu() for k, v in s.state.items()}}
                for name, s in self.shards.items()}

    def load_shard_rows(self, name: str, rows: Tensor, values: Mapping[str, Tensor]) -> None:
        """Take the given global rows (any subset) that this rank owns, weights and state."""
        shard = self.shards[name]
        mine = rows % self.world_size == self.rank
        local = rows[mine] // self.world_size
        shard.weight[local] = values["weight"][mine].to(shard.weight)
        for key, tensor in shard.state.items():
            tensor[local] = values[key][mine].to(tensor)


def _sum_by_row(shard: RowShard) -> tuple[Tensor, Tensor]:
    """Sum the gradients of every request of each row (rows asked for by several ranks)."""
    requests = [(rows, served.grad) for rows, served in shard.pending if served.grad is not None]
    if not requests:
        return torch.empty(0, dtype=torch.long), torch.empty(0, shard.weight.shape[1])
    rows = torch.cat([r for r, _ in requests])
    grads = torch.cat([g for _, g in requests])
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(len(unique), grads.shape[1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inverse, grads)
    return unique, summed
