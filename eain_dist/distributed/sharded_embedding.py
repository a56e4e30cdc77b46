"""Row-wise sharded embedding tables and their row-wise optimizers.

Global row r of a sharded table lives on rank r % W, at local row r // W. One lookup routes the
unique ids of *every* sharded table in one exchange (U_t: table t's unique ids on this rank):

    owner = ids % W                     per table: group ids by owner (stable), count per owner
    all_to_all_single(counts)           W x T counts: every rank learns how many ids of each
                                        table it must serve to each rank
    all_to_all_single(local rows)       ... and which: all tables' ids in one buffer
    served_t = shard_t[requested_t]     a fresh leaf per table: the only rows this step touches
    AllToAll(served, flattened)         all tables' rows in one buffer; autograd-aware: the
                                        backward routes every table's gradients home in one call
                                        -> U_t x D per table, back in the caller's order (a scatter)

With one rank there is nothing to route: the rows are served locally, with the same leaves.

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
from torch import Tensor, nn

from eain_dist.model.embedding import INIT_STD, EmbeddingCollection, TableConfig


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

    def __init__(self, tables: Sequence[TableConfig], *, sharded: set[str], optimizer, init_std: float = INIT_STD,
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

    def lookup_tables(self, unique_ids: Mapping[str, Tensor]) -> dict[str, Tensor]:
        rows = {t: self.lookup_rows(t, ids) for t, ids in unique_ids.items() if t not in self.shards}
        sharded = {t: ids for t, ids in unique_ids.items() if t in self.shards}
        if sharded:
            rows.update(self._serve_locally(sharded) if self.world_size == 1 else self._exchange(sharded))
        return rows

    def _serve_locally(self, ids_by_table: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {t: self._serve(self.shards[t], ids) for t, ids in ids_by_table.items()}

    def _serve(self, shard: RowShard, local_rows: Tensor) -> Tensor:
        """This rank's rows `local_rows` as a fresh leaf, remembered for `step` when it needs a gradient."""
        served = shard.weight[local_rows].detach().requires_grad_(torch.is_grad_enabled())
        if served.requires_grad:
            shard.pending.append((local_rows, served))
        return served

    def _exchange(self, ids_by_table: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every sharded table's rows for its unique ids, from their owners: one exchange for all."""
        tables, world = list(ids_by_table), self.world_size
        routes = [_Route.of(ids_by_table[t], world) for t in tables]
        send = torch.stack([route.counts for route in routes], dim=1)  # W x T: ids for rank d of table t
        receive = torch.empty_like(send)
        dist.all_to_all_single(receive, send, group=self.group)
        send_counts, receive_counts = torch.stack([send, receive]).tolist()  # one host sync for both

        # Ids out, grouped by (destination rank, table); requests in, grouped by (source rank, table).
        outgoing = [route.owned_ids.split(route_counts) for route, route_counts in zip(routes, zip(*send_counts))]
        requested = torch.empty(sum(map(sum, receive_counts)), dtype=torch.long, device=self.device)
        dist.all_to_all_single(requested, torch.cat([outgoing[t][d] for d in range(world) for t in range(len(tables))]),
                               [sum(c) for c in receive_counts], [sum(c) for c in send_counts], group=self.group)
        per_source = _by_source_and_table(requested, receive_counts, [1] * len(tables))
        served = [self._serve(self.shards[t], torch.cat([per_source[s][i] for s in range(world)]))
                  for i, t in enumerate(tables)]

        # Rows back, all tables flattened into one buffer, grouped by (source rank, table).
        dims = [self.shards[t].weight.shape[1] for t in tables]
        pieces = [rows.split(counts) for rows, counts in zip(served, zip(*receive_counts))]
        outgoing_rows = torch.cat([pieces[i][s].reshape(-1) for s in range(world) for i in range(len(tables))])
        received = AllToAll.apply(outgoing_rows, [sum(c * d for c, d in zip(counts, dims)) for counts in send_counts],
                                  [sum(c * d for c, d in zip(counts, dims)) for counts in receive_counts], self.group)
        per_owner = _by_source_and_table(received, send_counts, dims)
        return {t: route.to_caller_order(torch.cat([per_owner[d][i].view(-1, dims[i]) for d in range(world)]))
                for i, (t, route) in enumerate(zip(tables, routes))}

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


@dataclass
class _Route:
    """Where one table's unique ids go: grouped by owner rank, and the way back to their order."""

    order: Tensor  # U: position in the caller's ids of each id, ids grouped by owner
    counts: Tensor  # W: ids per owner
    owned_ids: Tensor  # U: the owners' local rows, grouped by owner

    @staticmethod
    def of(ids: Tensor, world: int) -> "_Route":
        owner = ids % world
        order = torch.argsort(owner, stable=True)
        return _Route(order, torch.bincount(owner, minlength=world), (ids[order] // world))

    def to_caller_order(self, rows: Tensor) -> Tensor:
        """Rows grouped by owner -> the caller's order: a scatter (its backward is a gather). The
        order is a permutation, so every row is written: no need to zero the output first."""
        return rows.new_empty(rows.shape).index_copy(0, self.order, rows)


def _by_source_and_table(flat: Tensor, counts: list[list[int]], widths: list[int]) -> list[list[Tensor]]:
    """Split an exchanged buffer into [rank][table] pieces of counts[rank][table] x widths[table] values."""
    sizes = [c * w for rank_counts in counts for c, w in zip(rank_counts, widths)]
    pieces = flat.split(sizes)
    tables = len(widths)
    return [list(pieces[r * tables:(r + 1) * tables]) for r in range(len(counts))]


class AllToAll(torch.autograd.Function):
    """`all_to_all_single` whose backward sends the gradients back the way the values came.

    Written here because torch.distributed.nn.functional's version is deprecated as of torch 2.13.
    Dim 0 of `values` is split by `input_splits`; the output has `sum(output_splits)` rows.
    """

    @staticmethod
    def forward(ctx, values: Tensor, output_splits: list[int], input_splits: list[int], group) -> Tensor:
        ctx.splits, ctx.group = (output_splits, input_splits), group
        output = values.new_empty((sum(output_splits), *values.shape[1:]))
        dist.all_to_all_single(output, values.contiguous(), output_splits, input_splits, group=group)
        return output

    @staticmethod
    def backward(ctx, grad: Tensor):
        output_splits, input_splits = ctx.splits
        grad_values = grad.new_empty((sum(input_splits), *grad.shape[1:]))
        dist.all_to_all_single(grad_values, grad.contiguous(), input_splits, output_splits, group=ctx.group)
        return grad_values, None, None, None


def _sum_by_row(shard: RowShard) -> tuple[Tensor, Tensor]:
    """Sum the gradients of every request of each row (rows asked for by several ranks)."""
    requests = [(rows, served.grad) for rows, served in shard.pending if served.grad is not None]
    if not requests:
        return torch.empty(0, dtype=torch.long), torch.empty(0, shard.weight.shape[1])
    if len(requests) == 1 and shard.world_size == 1:
        return requests[0]  # one lookup on one rank: its rows are unique already
    rows = torch.cat([r for r, _ in requests])
    grads = torch.cat([g for _, g in requests])
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(len(unique), grads.shape[1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inverse, grads)
    return unique, summed
