"""Embedding tables as data, and the local (unsharded) collection that looks them up.

Models see embeddings only through `EmbeddingCollection.forward(features) -> EmbeddingOutput`.
The distributed trainer swaps in a row-wise sharded collection with the same interface, so the
lookup here is written as the same pipeline of steps the sharded one runs:

    dedupe (per table, across the features sharing it)  ->  lookup rows  ->  expand to features

Locally "lookup rows" is one index into an `nn.Embedding` per table; sharded, it becomes route
the ids of every sharded table to their owner ranks -> gather -> route embeddings back, one
exchange for all tables. Only that step (`lookup_tables`) is overridden.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

INIT_STD = 1e-4  # normal init of every embedding row, local or sharded


@dataclass(frozen=True, kw_only=True)
class TableConfig:
    """One embedding table and the features that look it up.

    Example (the item table, shared by the target item and the history):

        TableConfig(name="item", num_embeddings=2001, embedding_dim=16,
                    feature_names=("item", "hist_item"))

    Row 0 is the padding / out-of-vocabulary row; it is an ordinary trainable row, and models
    mask padded positions themselves.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: tuple[str, ...]


def table_configs(meta: Mapping, embedding_dim: int, features: Iterable[str] | None = None) -> list[TableConfig]:
    """TableConfigs for `features` (default: all of meta.json's), in meta.json's table order.

    `meta["features"]` maps feature -> table and `meta["tables"]` table -> rows, so features
    sharing a table get one TableConfig with all their names.
    """
    feature_to_table: Mapping[str, str] = meta["features"]
    wanted = list(feature_to_table) if features is None else list(features)
    unknown = [name for name in wanted if name not in feature_to_table]
    if unknown:
        raise ValueError(f"feature {unknown[0]!r} is not in meta.json (known: {', '.join(feature_to_table)})")
    configs = []
    for table, rows in meta["tables"].items():
        names = tuple(name for name in wanted if feature_to_table[name] == table)
        if names:
            configs.append(TableConfig(name=table, num_embeddings=rows, embedding_dim=embedding_dim,
                                       feature_names=names))
    return configs


@dataclass
class EmbeddingOutput:
    embeddings: dict[str, Tensor]  # feature -> ids.shape + (D,)


@dataclass
class UniqueIds:
    """The ids of one table, deduplicated across every feature that shares it."""

    values: Tensor  # U: sorted unique ids
    inverse: Tensor  # N: position in `values` of each looked-up id, features concatenated
    shapes: list[torch.Size]  # each feature's ids shape, in feature_names order


class EmbeddingCollection(nn.Module):
    """Local tables, one `nn.Embedding` each (normal init, std `init_std`).

    Example:

        tables = [TableConfig(name="item", num_embeddings=2001, embedding_dim=16,
                              feature_names=("item", "hist_item"))]
        out = EmbeddingCollection(tables)({"item": ids_b, "hist_item": ids_b_l})
        out.embeddings["item"]       # B x 16
        out.embeddings["hist_item"]  # B x L x 16

    Small initial values (std 1e-4, as FuxiCTR's): with the tables' L2 (`model.embedding_l2`) a
    row's values come from its gradients, not from its random start (benchmarks/results/peer-parity.md).
    """

    def __init__(self, tables: Sequence[TableConfig], init_std: float = INIT_STD) -> None:
        super().__init__()
        self.table_configs = list(tables)
        self.tables = nn.ModuleDict(
            {config.name: nn.Embedding(config.num_embeddings, config.embedding_dim) for config in tables}
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=init_std)

    def forward(self, features: Mapping[str, Tensor]) -> EmbeddingOutput:
        ids = {config.name: dedupe(config, features) for config in self.table_configs}
        rows = self.lookup_tables({name: unique.values for name, unique in ids.items()})  # table -> U x D
        embeddings: dict[str, Tensor] = {}
        for config in self.table_configs:
            embeddings.update(expand_to_features(config, ids[config.name], rows[config.name]))
        return EmbeddingOutput(embeddings=embeddings)

    def lookup_tables(self, unique_ids: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The rows of every table's unique ids (table -> U x D): the step a sharded collection
        replaces (it routes all its sharded tables' ids in one exchange)."""
        return {table: self.lookup_rows(table, ids) for table, ids in unique_ids.items()}

    def lookup_rows(self, table: str, unique_ids: Tensor) -> Tensor:
        """The rows of `unique_ids` (U) of one local table: U x D."""
        return self.tables[table](unique_ids)


def dedupe(config: TableConfig, features: Mapping[str, Tensor]) -> UniqueIds:
    missing = [name for name in config.feature_names if name not in features]
    if missing:
        raise KeyError(f"table {config.name!r} needs feature {missing[0]!r}, which the batch lacks")
    ids = [features[name] for name in config.feature_names]
    values, inverse = torch.unique(torch.cat([i.reshape(-1) for i in ids]), return_inverse=True)
    return UniqueIds(values=values, inverse=inverse, shapes=[i.shape for i in ids])


def expand_to_features(config: TableConfig, ids: UniqueIds, rows: Tensor) -> dict[str, Tensor]:
    """Undo the dedupe: every feature gets its ids' rows, shaped ids.shape + (D,)."""
    gathered = rows.index_select(0, ids.inverse)  # N x D; backward is index_add, 4-6x faster than rows[...]'s
    sizes = [shape.numel() for shape in ids.shapes]
    pieces = gathered.split(sizes)
    return {
        name: piece.view(*shape, rows.shape[-1])
        for name, piece, shape in zip(config.feature_names, pieces, ids.shapes, strict=True)
    }
