"""The splits of a run as Ray Data datasets, and how Ray Train deals them out to the workers.

Every rank gets an equal share of every split, and every row is read exactly once per pass:

    read_parquet(split)                    train: a new file order every epoch (train.shuffle)
    + (-rows % W) padding rows             rows with a null label, so that the split divides by W
    streaming_split(W, equal=True)         equal shares; Ray drops nothing when W divides the rows
    worker: without_padding(batch)         the padding rows never reach a step or a metric

Why equal shares: with `equal=False` Ray Data dispatches what it has read at once, holding
nothing back for balance, and on a split of a few files (or one) one rank can get every row
(seen on Grocery's 4 train files: 114,900 rows to rank 0, none to rank 1, every epoch). Why
padding: `equal=True` alone truncates the split to a multiple of W.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq
import ray.data
import ray.train

from eain_dist.config import Config
from eain_dist.data.fs import pyarrow_filesystem

SPLITS = ("train", "valid", "test")
SHUFFLES = ("files", "global", "none")


def datasets(config: Config, meta: dict, splits: tuple[str, ...] = SPLITS,
             training: bool = True) -> dict[str, ray.data.Dataset]:
    """The splits, each padded to a multiple of train.num_workers rows; `training`: the train
    split in a new order every epoch (train.shuffle), else every split in file order."""
    arrow_fs, path = pyarrow_filesystem(config.data.output, config.data.s3)
    out = {}
    for split in splits:
        shuffle = config.train.shuffle if training and split == "train" else "none"
        shuffled = shuffle == "files"
        # Reading Parquet is light work: half a CPU per read task fits beside the training workers.
        dataset = ray.data.read_parquet(
            f"{path}/{split}", filesystem=arrow_fs, num_cpus=0.5,
            # A new seed every execution of the plan, i.e. every epoch: a new file order.
            shuffle=ray.data.FileShuffleConfig(seed=config.train.seed, reseed_after_execution=True) if shuffled else None)
        if shuffle == "global":
            dataset = dataset.random_shuffle(
                seed=ray.data.RandomSeedConfig(seed=config.train.seed, reseed_after_execution=True))
        missing = -meta["splits"][split] % config.train.num_workers
        if missing:
            dataset = dataset.union(ray.data.from_arrow(padding_rows(_schema(arrow_fs, f"{path}/{split}"), missing)))
        out[split] = dataset
    return out


def padding_rows(schema: pa.Schema, count: int) -> pa.Table:
    """`count` rows of `schema`, every value null: the marker `without_padding` removes."""
    return pa.table([pa.nulls(count, field.type) for field in schema], schema=schema)


def without_padding(batch: pa.Table) -> pa.Table:
    """The batch less the padding rows (null label); the common case costs one null count."""
    if batch["label"].null_count == 0:
        return batch
    return batch.filter(pc.is_valid(batch["label"]))


def _schema(arrow_fs, folder: str) -> pa.Schema:
    files = sorted(info.path for info in arrow_fs.get_file_info(pa.fs.FileSelector(folder))
                   if info.path.endswith(".parquet"))
    return pq.read_schema(arrow_fs.open_input_file(files[0])).remove_metadata()


class EqualSharesDataConfig(ray.train.DataConfig):
    """Ray Train's DataConfig, with equal shares that cover every row (see the module docstring).

    The stock one also splits with `equal=True` but truncates the split to a multiple of W;
    `datasets` pads the splits first so that nothing is dropped. Mirrors DataConfig.configure
    of Ray 2.60, the pinned version.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        to_split = set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
        locality_hints = worker_node_ids if self._enable_shard_locality else None
        for name, dataset in datasets.items():
            if dataset.name is None:
                dataset.set_name(name)
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self._resolve_execution_options(name)
            if name in to_split:
                shards = dataset.streaming_split(world_size, equal=True, locality_hints=locality_hints)
            else:
                shards = [dataset.iterator() for _ in range(world_size)]
            for rank, shard in enumerate(shards):
                output[rank][name] = shard
        return output
