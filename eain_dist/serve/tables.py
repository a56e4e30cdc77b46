"""A finished run's best checkpoint as one local model: sharded tables gathered into full tables.

    <run>/checkpoints/BEST             the best checkpoint's path (local, or in train.storage_path)
    <checkpoint>/dense.pt              dense parameters and replicated tables (rank 0)
    <checkpoint>/shards-rank=<r>.pt    rank r's rows of each sharded table, with their global ids

Whatever number of workers wrote the checkpoint, every shard file is read once and its rows are
put in place in a full `num_embeddings x D` table; a row no file holds, or one held twice, is an
error (a shard file is missing), as is a table whose size differs from what the run's config and
its prepared dataset's meta.json build (the dataset was re-prepared from other data). The model
itself is built only through `build_model(config.model, meta)`, so whichever features and tables
the run's config selects are the ones gathered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eain_dist.config import Config, load_config
from eain_dist.data.errors import InputError
from eain_dist.data.fs import filesystem_for
from eain_dist.distributed.checkpoint import DENSE
from eain_dist.model.embedding import TableConfig
from eain_dist.model.registry import build_model, model_tables

SHARD_GLOB = "shards-rank=*.pt"


@dataclass
class RunModel:
    """What every command that uses a trained run needs: its config, data contract and weights."""

    run_dir: Path
    config: Config
    meta: dict
    checkpoint: str
    state: dict[str, torch.Tensor]  # the local (unsharded) model's state_dict


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> RunModel:
    from eain_dist.train.trainer import read_meta  # imports Ray Train: only here, not for load_model

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise InputError(f"{run_dir} is not a run directory of `eain train` (no config.yaml)")
    config = load_config(run / "config.yaml", overrides)
    meta = read_meta(config)
    checkpoint = best_checkpoint(run, config)
    return RunModel(run, config, meta, checkpoint, gather_model_state(checkpoint, config, meta))


def best_checkpoint(run: Path, config: Config) -> str:
    pointer = run / "checkpoints" / "BEST"
    if not pointer.is_file():
        raise InputError(f"{run} has no checkpoints/BEST: the run has not finished an epoch (no checkpoint)")
    path = pointer.read_text().strip()
    storage = config.train.storage_path or ""
    if "://" not in path and "://" in storage and not Path(path).exists():
        path = f"{storage.split('://', 1)[0]}://{path}"  # Ray records remote paths without their scheme
    return path


def gather_model_state(checkpoint: str, config: Config, meta: dict) -> dict[str, torch.Tensor]:
    """The state_dict of `build_model(config.model, meta)` from a checkpoint of any world size."""
    fs, root = filesystem_for(checkpoint, config.data.s3)
    if not fs.exists(f"{root}/{DENSE}"):
        raise InputError(f"checkpoint {checkpoint} has no {DENSE} (incomplete or not a checkpoint of eain train)")
    state = dict(_load(fs, f"{root}/{DENSE}")["model"])
    tables = {table.name: table for table in model_tables(config.model, meta)}
    gathered = _gather_shards(fs, sorted(fs.glob(f"{root}/{SHARD_GLOB}")), tables, checkpoint)
    for name, weight in gathered.items():
        state[table_key(name)] = weight
    return state


def table_key(table: str) -> str:
    """The state_dict key of a table's weight in a model with local tables (EmbeddingCollection)."""
    return f"embeddings.tables.{table}.weight"


def local_model(config: Config, meta: dict, state: dict[str, torch.Tensor],
                device: torch.device | str = "cpu") -> nn.Module:
    """The run's model with local tables, its weights in place, in eval mode, without gradients.

    The tensors of `state` become the parameters (no copy on CPU), so tables shared through
    Ray's object store stay shared between the actors of one machine.
    """
    model = build_model(config.model, meta)
    _check_state(model.state_dict(), state)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return model.to(device).eval()


def _check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"the checkpoint does not fit the run's model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): config.yaml changed after training?")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise InputError(f"checkpoint tensor {key} has shape {list(state[key].shape)} but the model built from "
                             f"config.yaml and meta.json needs {list(tensor.shape)}: data.output was re-prepared "
                             "from other data (vocabulary of another dataset)")


def _gather_shards(fs, paths: list[str], tables: dict[str, TableConfig], checkpoint: str) -> dict[str, torch.Tensor]:
    full: dict[str, torch.Tensor] = {}
    copies: dict[str, torch.Tensor] = {}  # how many shard files hold each row
    held: dict[str, int] = {}  # rows of each table over all files: the table's size when it was saved
    for path in paths:
        for name, values in _load(fs, path).items():
            if name not in tables:
                raise InputError(f"{path} holds table {name!r}, which the run's model does not have")
            spec, rows, weight = tables[name], values["rows"].long(), values["weight"]
            if name not in full:
                full[name] = torch.zeros(spec.num_embeddings, weight.shape[1], dtype=weight.dtype)
                copies[name] = torch.zeros(spec.num_embeddings, dtype=torch.int32)
            held[name] = held.get(name, 0) + len(rows)
            inside = rows < spec.num_embeddings
            full[name][rows[inside]] = weight[inside]
            copies[name].index_add_(0, rows[inside], torch.ones(int(inside.sum()), dtype=torch.int32))
    for name, weight in full.items():
        _check_table_size(name, held[name], weight.shape[1], tables[name], checkpoint)
        if not bool((copies[name] == 1).all()):
            raise InputError(f"checkpoint {checkpoint}: {int((copies[name] == 0).sum()):,} rows of table {name!r} are "
                             f"in no shard file and {int((copies[name] > 1).sum()):,} in several (a shard file is "
                             "missing or from another checkpoint)")
    return full


def _check_table_size(name: str, rows: int, width: int, table: TableConfig, checkpoint: str) -> None:
    if (rows, width) == (table.num_embeddings, table.embedding_dim):
        return
    cause = ("a shard file is missing, or data.output was re-prepared from other data"
             if rows < table.num_embeddings and width == table.embedding_dim
             else "data.output was re-prepared from other data (vocabulary of another dataset)")
    raise InputError(f"checkpoint {checkpoint}: its shard files hold {rows:,} rows x {width} of table {name!r}, but "
                     f"the run's config and meta.json build {table.num_embeddings:,} x {table.embedding_dim}: {cause}")


def _load(fs, path: str) -> dict:
    with fs.open(path, "rb") as handle:
        return torch.load(handle, map_location="cpu", weights_only=True)
